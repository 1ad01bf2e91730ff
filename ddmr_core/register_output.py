"""Writing a :class:`~ddmr_core.register.RegistrationResult` to a folder, atomically.

Files (``OUTPUT_FILES``):

* ``fixed.nii.gz`` -- the fixed image on the output grid (the reference grid that ANTs'
  ``apply_transforms`` needs to reproduce ``warped``);
* ``warped.nii.gz`` -- the moving image warped onto it (original intensities, linear);
* ``warped_seg.nii.gz`` -- the moving label map warped (nearest), when one is given;
* ``field.nii.gz`` -- the field for ITK/ANTs/3D Slicer (LPS mm, :mod:`ddmr_core.field_io`);
* ``field.npz`` -- the voxel field with spacing and affine;
* ``overview.png`` -- fixed, moving, warped, checkerboard, deformation grid (mid slices);
* ``results.json`` -- inputs, output grid, timings and Dice/TRE before and after.

Everything is first written to a hidden temporary folder next to the destination and
moved in only once all of it succeeded, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from .field_io import save_field_itk, save_field_npz
from .figures import checkerboard, draw_deformation_grid

OUTPUT_FILES = (
    "fixed.nii.gz",
    "warped.nii.gz",
    "warped_seg.nii.gz",
    "field.nii.gz",
    "field.npz",
    "overview.png",
    "results.json",
)


@contextlib.contextmanager
def atomic_dir(out_dir: str | Path) -> Iterator[Path]:
    """Yield a temporary folder; on success move its entries into ``out_dir``.

    ``out_dir`` is created if needed; entries of the same name already there are
    replaced. On an exception the temporary folder is deleted and ``out_dir`` is left
    as it was."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        from .errors import DdmrError

        raise DdmrError(f"output {str(out_dir)!r} exists and is not a folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; the result should not be
    try:
        yield tmp
        if not out_dir.exists():
            os.replace(tmp, out_dir)
            return
        for entry in sorted(tmp.iterdir()):
            target = out_dir / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(entry, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_into(result, folder: str | Path) -> list[str]:
    """Write every output of ``result`` into an existing ``folder`` (not atomic);
    returns the file names written."""
    from .io import save_image, save_label_map

    folder = Path(folder)
    written = []
    save_image(folder / "fixed.nii.gz", result.fixed, result.affine)
    save_image(folder / "warped.nii.gz", result.warped, result.affine)
    written += ["fixed.nii.gz", "warped.nii.gz"]
    if result.warped_seg is not None:
        save_label_map(folder / "warped_seg.nii.gz", result.warped_seg, result.affine)
        written.append("warped_seg.nii.gz")
    save_field_itk(folder / "field.nii.gz", result.disp, result.affine)
    save_field_npz(folder / "field.npz", result.disp, result.spacing, result.affine)
    written += ["field.nii.gz", "field.npz"]
    save_overview(folder / "overview.png", result)
    written.append("overview.png")
    summary = result.summary()
    summary["files"] = written + ["results.json"]
    (folder / "results.json").write_text(json.dumps(summary, indent=2, allow_nan=False))
    written.append("results.json")
    # temporary files are created private (0600); give the outputs the usual permissions
    mode = 0o666 & ~_umask()
    for name in written:
        os.chmod(folder / name, mode)
    return written


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def write_outputs(result, out_dir: str | Path) -> Path:
    """Write ``result`` into ``out_dir`` atomically (see :func:`atomic_dir`)."""
    with atomic_dir(out_dir) as tmp:
        write_into(result, tmp)
    return Path(out_dir)


# ----------------------------------------------------------------- figure


def _normalise(img: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(img, (1, 99)) if img.size else (0.0, 1.0)
    if hi <= lo:
        return np.zeros_like(img, dtype=np.float32)
    return np.clip((img - lo) / (hi - lo), 0, 1).astype(np.float32)


def save_overview(path: str | Path, result, step: int | None = None) -> Path:
    """PNG with five panels on the middle slice of array axis 2: fixed, moving (before),
    warped, fixed/warped checkerboard, and the deformed grid of the field.

    Axis 0 runs left-right and axis 1 bottom-top, with the aspect ratio of the spacing."""
    # an Agg canvas of its own: no pyplot, no global backend, works headless
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    k = result.warped.shape[2] // 2
    fixed = _normalise(result.fixed[:, :, k])
    moving = _normalise(result.moving[:, :, k])
    warped = _normalise(result.warped[:, :, k])
    sp = result.spacing
    aspect = float(sp[1] / sp[0])
    fig = Figure(figsize=(17, 3.8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 5)
    panels = [("fixed", fixed), ("moving", moving), ("warped", warped), ("checkerboard", checkerboard(fixed, warped))]
    for ax, (title, img) in zip(axes, panels):
        ax.imshow(img.T, cmap="gray", origin="lower", vmin=0, vmax=1, aspect=aspect)
        ax.set_title(title)
    ax = axes[4]
    ax.set_title("deformation grid")
    draw_deformation_grid(ax, result.disp[:2, :, :, k], step)
    ax.set_aspect(aspect)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"slice {k} of axis 2 (output grid {tuple(result.warped.shape)})", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=80)
    return path
