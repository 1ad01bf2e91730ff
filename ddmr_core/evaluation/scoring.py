"""Scoring one registered test pair: the field carried to the original grid when asked,
the warped image and label map, every metric plugin on the pair dict, and the slices the
report's figures show.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..data.io import spacing_from_affine
from ..data.testset import Pair
from ..spatial.regrid import apply_field, carry_field
from .methods import warp_array


def to_original_grid(disp: np.ndarray, affine: np.ndarray, fixed0_shape, fixed0_affine) -> np.ndarray:
    """Carry a test-grid field to the fixed image's original grid.

    Fixed original voxel ``y`` is the world point ``A0 y``, i.e. test voxel
    ``x = A^-1 A0 y``; it corresponds to moving test voxel ``x + u(x)`` (field interpolated
    linearly, border padding), the world point ``q = A (x + u(x))`` (fixed and moving test
    images share the affine ``A``). Returns the pull field on the original fixed grid in
    its voxel units, ``v(y) = A0^-1 q - y`` (``(3, *S0)`` float64), which
    :func:`ddmr_core.spatial.regrid.apply_field` applies to the original moving image: the
    geometry of ``ddmr register --original-resolution``
    (:func:`ddmr_core.spatial.regrid.carry_field`)."""
    return carry_field(disp, affine, affine, fixed0_affine, fixed0_shape, dtype=torch.float64)


# ===================================================================== scoring
def score_pair(pair: Pair, disp: np.ndarray, warped: np.ndarray | None, runtime: float, metrics: dict,
               labels=None, original_resolution: bool = False) -> tuple[dict, dict, list]:
    """Apply ``disp`` to the pair and run every metric on the same pair dict.

    Returns ``(values {column: float}, arrays for figures, metric errors)``."""
    fixed, moving, fixed_seg, moving_seg = pair.fixed, pair.moving, pair.fixed_seg, pair.moving_seg
    spacing, disp_true = pair.spacing, pair.disp_true
    if original_resolution and pair.original is not None:
        f0, f0_aff = pair.original["fixed"]
        m0, m0_aff = pair.original["moving"]
        disp0 = to_original_grid(disp, pair.affine, f0.shape, f0_aff)
        warped = apply_field(disp0, f0_aff, m0, m0_aff, padding="border", dtype=torch.float64)
        moving_seg = pair.original.get("moving_seg", (None,))[0]
        fixed_seg = pair.original.get("fixed_seg", (None,))[0]
        warped_seg = None
        if moving_seg is not None:
            warped_seg = apply_field(disp0, f0_aff, moving_seg, m0_aff, labels=True, dtype=torch.float64)
        if disp_true is not None:
            disp_true = to_original_grid(disp_true, pair.affine, f0.shape, f0_aff)
        fixed, moving, disp, spacing = f0, m0, disp0.astype(np.float32), spacing_from_affine(f0_aff)
    else:
        if warped is None:
            warped = warp_array(moving, disp)
        warped_seg = None
        if moving_seg is not None:
            warped_seg = warp_array(moving_seg, disp, labels=True)
    if fixed_seg is None:
        warped_seg = None
    record = {
        "fixed": fixed, "moving": moving, "warped": warped,
        "fixed_seg": fixed_seg, "moving_seg": moving_seg, "warped_seg": warped_seg,
        "disp": disp, "disp_true": disp_true, "spacing": np.asarray(spacing, np.float64),
        "labels": labels, "runtime": runtime,
    }
    values, errors = {}, []
    for name, metric in metrics.items():
        try:
            out = metric(record)
        except Exception as exc:  # one broken metric must not lose the others
            errors.append(f"metric {name}: {type(exc).__name__}: {exc}")
            out = float("nan")
        items = out.items() if isinstance(out, dict) else [("", out)]
        for suffix, v in items:
            column = name if suffix == "" else f"{name}_{suffix}"
            values[column] = float(v)
            if math.isinf(values[column]):  # NaN means "not available"; inf is a failure
                errors.append(f"metric {column} is infinite")
                values[column] = float("nan")
    return values, record, errors


def figure_slices(record: dict) -> dict:
    """The 2-D slices the median-pair figure needs (middle of the last array axis)."""
    from ..spatial.fields import jacobian_determinant

    k = record["fixed"].shape[2] // 2
    disp = np.asarray(record["disp"], np.float32)
    jac = jacobian_determinant(torch.from_numpy(disp)[None])[0].numpy()
    return {
        "fixed": record["fixed"][:, :, k], "moving": record["moving"][:, :, k], "warped": record["warped"][:, :, k],
        "disp": disp[:2, :, :, k], "jacobian": jac[:, :, k],
    }


# ===================================================================== CSV
