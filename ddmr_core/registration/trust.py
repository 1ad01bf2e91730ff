"""Whether a registration can be trusted (:func:`assess`; of its outputs:
:func:`assess_outputs`), from signs that do not depend on the images' contrast: the
normalised mutual information before and after, the folding of the field, and whether
each input has any spatial structure at all (:func:`structure`).
``ddmr register`` checks every result (``results.json``'s ``trust``) and warns
(:class:`~ddmr_core.errors.RegistrationQualityWarning`) when one is untrustworthy."""

from __future__ import annotations

import numpy as np
import torch

from ..spatial.refine import sub_lattice_stride

#: folding above this share of voxels (%) marks a result untrustworthy
MAX_FOLDING_PCT = 1.0
#: a pair already this similar (normalised MI) may rightly be left as it is
ALIGNED_NMI = 0.98
#: ... but not moved apart: below this after registration, it was. A network's field on a
#: pair of two identical brains (2 mm MNI T1) leaves 0.92 (brain-mr), 0.94 (brain-mr-any),
#: 0.97-0.98 refined: interpolation and a small residual motion, not a failure
ALIGNED_FLOOR = 0.85
#: an input whose neighbouring foreground voxels correlate less than this (:func:`structure`)
#: holds no structure to register: noise (a wrong file, a noise-only series). A field can
#: still raise its mutual information with the fixed image (uniform noise against a 3 mm
#: brain: 0.003 -> 0.12), so the mutual information alone does not flag it. Scans score far
#: above: 0.6-0.96 for brain MR of every contrast at 1-3 mm, 0.15 with Rician noise at an
#: SNR of 2
MIN_STRUCTURE = 0.05
#: :func:`structure` correlates about this many pairs of neighbours per axis (a correlation's
#: standard error ~0.004, far below MIN_STRUCTURE)
STRUCTURE_PAIRS = 2 ** 16
#: about this many voxels count towards the mutual information of the outputs
#: (:func:`~ddmr_core.spatial.refine.sub_lattice_stride`: every 3rd per axis at 1 mm)
MI_VOXELS = 2 ** 18


def assess(fixed: torch.Tensor, moving: torch.Tensor, disp: torch.Tensor, warped: torch.Tensor | None = None,
           stride: int = 2) -> dict:
    """Whether a registration can be trusted, from signs that do not depend on the contrast.

    ``fixed``, ``moving`` ``(1, 1, D, H, W)`` in [0, 1] on one grid, ``disp`` the
    ``(1, 3, d, h, w)`` voxel field of the registration (its folding is counted), and
    ``warped`` the moving image registered onto that grid (``None``: ``moving`` warped by
    ``disp``, which then lies on the images' grid). Returns ``{"nmi_before", "nmi_after",
    "folding_pct", "flags", "trusted"}``: the images' normalised mutual information
    (:func:`ddmr_core.spatial.similarity.mutual_information`, which a T2 scan against a T1 shares
    with a T1 against a T1) before and after warping, the share of folded voxels, and one
    flag per sign of failure: the registration did not raise the mutual information of a
    pair not already aligned (the images are of different things, or the field moved them
    apart), it moved an aligned pair apart (below :data:`ALIGNED_FLOOR`), or more than
    :data:`MAX_FOLDING_PCT` % of the voxels fold. The mutual information counts every
    ``stride``-th voxel per axis (1: the images are such a subsample already)."""
    from ..spatial.similarity import mutual_information
    from ..spatial.fields import field_folding_percentage, warp

    sub = (slice(None), slice(None)) + (slice(None, None, int(stride)),) * 3
    if warped is None:
        warped = warp(moving, disp, mode="linear", padding="border")
    before = float(mutual_information(moving[sub], fixed[sub], normalised=True)[0])
    after = float(mutual_information(warped[sub], fixed[sub], normalised=True)[0])
    folding = field_folding_percentage(disp.float())
    flags = []
    if not after > before and before < ALIGNED_NMI:
        flags.append(f"the registration did not raise the images' mutual information ({before:.3f} -> "
                     f"{after:.3f}): different anatomy, or a failed alignment")
    elif before >= ALIGNED_NMI and after < ALIGNED_FLOOR:
        flags.append(f"the registration moved an aligned pair apart (mutual information {before:.3f} -> "
                     f"{after:.3f})")
    if folding > MAX_FOLDING_PCT:
        flags.append(f"{folding:.2f} % of the voxels fold (more than {MAX_FOLDING_PCT:g} %)")
    return {"nmi_before": before, "nmi_after": after, "folding_pct": folding, "flags": flags,
            "trusted": not flags}


def structure(image: np.ndarray) -> float:
    """How much an image ``(D, H, W)`` looks like an image rather than noise: the correlation
    of neighbouring voxels' intensities over its foreground
    (:func:`~ddmr_core.spatial.prealign.foreground_mask`), along the array axis where it is
    highest (the in-plane axes of a scan of thick slices). Near 1 for a scan (a tissue spans
    many voxels), near 0 for noise; 1 for a foreground without texture (a mask: its outline
    is its structure) or too small to tell (under 100 pairs of voxels). Counted on about
    :data:`STRUCTURE_PAIRS` pairs per axis (lines along the axis, a regular subset of them,
    whose foreground is found on those lines alone, not on the whole volume)."""
    from ..spatial.prealign import foreground_mask

    a = np.asarray(image, dtype=np.float32)
    k = max(1, int(np.sqrt(a.size / STRUCTURE_PAIRS)))  # every k-th line in each other axis
    best = None
    for axis in range(3):
        x = np.ascontiguousarray(np.moveaxis(a, axis, -1)[::k, ::k])
        m = foreground_mask(torch.from_numpy(x)[None, None])[0, 0].numpy().astype(bool)
        both = m[..., :-1] & m[..., 1:]
        if both.sum() < 100:
            continue
        u, v = x[..., :-1][both].astype(np.float64), x[..., 1:][both].astype(np.float64)
        if u.std() == 0 or v.std() == 0:
            return 1.0
        r = float(np.corrcoef(u, v)[0, 1])
        best = r if best is None else max(best, r)
    return 1.0 if best is None else best


def _unit(a: np.ndarray, lo: float | None = None, hi: float | None = None) -> torch.Tensor:
    """``(1, 1, D, H, W)`` float32 tensor of ``a`` mapped from ``[lo, hi]`` (default: its own
    range) to [0, 1]."""
    lo = float(np.min(a)) if lo is None else lo
    hi = float(np.max(a)) if hi is None else hi
    return torch.from_numpy(((np.asarray(a, np.float32) - lo) / max(hi - lo, 1e-12)).astype(np.float32))[None, None]


def assess_outputs(fixed: np.ndarray, before: np.ndarray, warped: np.ndarray, disp: torch.Tensor,
                   inputs: dict | None = None) -> dict:
    """:func:`assess` of a registration's outputs, ``(D, H, W)`` arrays on its output grid:
    the fixed image, the moving one before (``before``) and after (``warped``)
    registration, and the model's field ``disp`` ``(3, d, h, w)`` (its folding); with
    ``inputs`` (``{"fixed image": array, "moving image": array}``, each on its own grid:
    resampled, noise would gain a structure it lacks) also their :func:`structure`, in
    ``structure``, and a flag for each below :data:`MIN_STRUCTURE`.

    On the output images already made: the moving ones share the unregistered image's
    intensity scale, so the measure sees what the user gets (on every 2nd voxel per axis,
    or every n-th so that about :data:`MI_VOXELS` are counted: 32 bins of a histogram
    need no more, and a 1 mm brain holds 8.7M)."""
    lo, hi = float(np.min(before)), float(np.max(before))
    step = max(2, sub_lattice_stride(before.shape, MI_VOXELS))
    sub = (slice(None, None, step),) * 3
    out = assess(_unit(fixed[sub]), _unit(before[sub], lo, hi), disp[None], warped=_unit(warped[sub], lo, hi),
                 stride=1)
    if inputs:
        out["structure"] = {name: round(structure(a), 4) for name, a in inputs.items()}
        out["flags"] += [f"the {name} shows no structure (neighbouring voxels correlate at {r:.2f}): noise, or "
                         "not an image" for name, r in out["structure"].items() if r < MIN_STRUCTURE]
        out["trusted"] = not out["flags"]
    return out
