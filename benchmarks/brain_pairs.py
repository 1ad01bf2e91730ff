"""Brain test pairs for the benchmarks that no ddmr code made (issues 31, 32).

Fixed: the MNI ICBM152 2009a T1 template that ships inside nilearn, on an ``S`` mm grid
(the template's whole field of view: 98x116x94 at 2 mm, 197x233x189 at 1 mm), with labels
CSF/other, grey and white matter from its tissue maps. Moving: the same brain pulled
through a random rigid motion (up to 10 degrees about each axis, up to 15 mm) composed
with a smooth SimpleITK B-spline warp (4^3 mesh over the grid, control points N(0, 3 mm)),
neither made by ddmr's augmentation.
"""

from __future__ import annotations

import numpy as np


def template(spacing: float):
    """``(t1, (p_csf, p_gm, p_wm), labels, affine)`` on a ``spacing`` mm grid."""
    from ddmr_core.data.io import load_image
    from ddmr_core.data.preprocess import Preprocess
    from ddmr_plugins.datasets.mni_brain import load_template, template_files

    t1, labels, affine = load_template()
    files = template_files()
    gm, _ = load_image(files["gm"])
    wm, _ = load_image(files["wm"])
    scale = 255.0 if max(gm.max(), wm.max()) > 1.5 else 1.0
    gm, wm = gm / scale, wm / scale
    brain = (labels > 0).astype(np.float32)
    csf = np.clip(brain - gm - wm, 0, 1) * brain
    pre = Preprocess(spacing=spacing, size=None, crop_labels=None, percentiles=(0.0, 100.0))
    out = []
    for vol in (t1, csf, gm * brain, wm * brain):
        v, _, aff = pre.apply(vol, affine)
        out.append(v * float(vol.max()))  # keep the maps' own scale
    _, lab, aff = pre.apply(t1, affine, labels)
    return out[0], tuple(out[1:]), lab, aff


def warp_pair(fixed_shape, affine, volumes, rng, labels, warp_sd: float = 3.0):
    """The volumes pulled through a random rigid + B-spline transform (SimpleITK): the
    B-spline's control points (a 4^3 mesh) drawn from N(0, ``warp_sd`` mm)."""
    import SimpleITK as sitk

    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    ref = sitk.Image([int(n) for n in fixed_shape[::-1]], sitk.sitkFloat32)
    ref.SetSpacing([float(s) for s in spacing[::-1]])
    centre = ref.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in fixed_shape[::-1]])
    rigid = sitk.Euler3DTransform()
    rigid.SetCenter(centre)
    rigid.SetRotation(*[float(np.deg2rad(a)) for a in rng.uniform(-10, 10, 3)])
    t = rng.normal(size=3)
    rigid.SetTranslation([float(v) for v in t / np.linalg.norm(t) * rng.uniform(0, 15)])
    bspline = sitk.BSplineTransformInitializer(ref, [4, 4, 4])
    params = np.asarray(bspline.GetParameters())
    bspline.SetParameters([float(v) for v in rng.normal(0, warp_sd, params.size)])
    transform = sitk.CompositeTransform([rigid, bspline])
    out = []
    for vol, is_label in zip(volumes, labels):
        img = sitk.GetImageFromArray(np.ascontiguousarray(vol.astype(np.float32)))
        img.CopyInformation(ref)
        interp = sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear
        out.append(sitk.GetArrayFromImage(sitk.Resample(img, ref, transform, interp, 0.0)))
    return out


def write_pair(folder, spacing: float, rng, template_data=None) -> dict:
    """One T1 pair on the ``spacing`` mm grid as NIfTI files in ``folder`` (``fixed``,
    ``moving``, ``fixed_seg``, ``moving_seg`` ``.nii.gz``); returns their paths."""
    from pathlib import Path

    from ddmr_core.data.io import save_image, save_label_map

    t1, _, labels, affine = template_data if template_data is not None else template(spacing)
    moving, moving_labels = warp_pair(t1.shape, affine, [t1, labels], rng, [False, True])
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {k: folder / f"{k}.nii.gz" for k in ("fixed", "moving", "fixed_seg", "moving_seg")}
    save_image(paths["fixed"], t1, affine)
    save_image(paths["moving"], moving, affine)
    save_label_map(paths["fixed_seg"], labels.astype(np.uint8), affine)
    save_label_map(paths["moving_seg"], moving_labels.astype(np.uint8), affine)
    return {k: str(v) for k, v in paths.items()}
