"""How alike two images or two label maps on one grid are: the before/after metrics of a
registration (``results.json``'s ``metrics``).

"Before" metrics are those of the unregistered images on the output grid: the moving
image and label map resampled there by the identity in world coordinates. Dice is per
label; TRE is the distance in mm between the centroids of each label in the fixed and the
(warped) moving segmentation, as in the paper (section 2.6); NCC is the global normalised
cross-correlation of the fixed and the (warped) moving image on the output grid.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from ..spatial.similarity import centroid_distance, global_ncc
from ..spatial.similarity import dice as overlap


def image_ncc(a: np.ndarray, b: np.ndarray) -> float:
    """Global normalised cross-correlation of two images on one grid (the Pearson
    correlation of their voxels, :func:`ddmr_core.spatial.similarity.global_ncc` in float32, whose
    pairwise sums keep it within ~1e-6 of float64's at 10^7 voxels): the ``ncc`` metric
    with ``win=None``. NaN when an image is constant (undefined)."""
    ta = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).reshape(1, -1)
    tb = torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32)).reshape(1, -1)
    return float(global_ncc(ta, tb, eps=0.0)[0])


def dice_tre(fixed_seg: np.ndarray, warped_seg: np.ndarray, affine: np.ndarray, labels: Sequence[int]) -> dict:
    """Per-label Dice and centroid TRE (mm, via ``affine``) of two label maps on one grid.

    A label missing from both maps is skipped; missing from one gives Dice 0 and no TRE.
    The values are those of the ``dsc`` and ``tre`` metrics (:mod:`ddmr_core.spatial.similarity`),
    the TRE through the grid's whole affine."""
    dice, tre = {}, {}
    for lab in labels:
        a, b = fixed_seg == lab, warped_seg == lab
        d = float(overlap(a, b))
        if math.isnan(d):  # in neither map
            continue
        dice[str(lab)] = d
        t = centroid_distance(a, b, affine)
        if not math.isnan(t):
            tre[str(lab)] = t
    out = {"dice": dice, "tre_mm": tre}
    out["dice_mean"] = float(np.mean(list(dice.values()))) if dice else None
    out["tre_mm_mean"] = float(np.mean(list(tre.values()))) if tre else None
    return out
