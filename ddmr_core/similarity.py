"""Similarity and overlap measures, each implemented once: NCC (global and local), Dice
and centroid distances.

The metric plugins (``ddmr_plugins.metrics``), the losses (``ddmr_plugins.losses``), the
core (prealignment, instance optimisation, the trainer's validation, ``ddmr register``'s
before/after figures) all compute these here, so a number means the same wherever it
is reported. Inputs are tensors (NumPy arrays where stated); computations stay on the
inputs' device and in their dtype unless stated.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


# --------------------------------------------------------------------- NCC
def global_ncc(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Global normalised cross-correlation (the Pearson correlation of the voxels) per
    sample of ``(B, ...)`` tensors (every axis after the first is pooled): ``(B,)``.

    ``mean(a' b') / sqrt(max(mean(a'^2) mean(b'^2), eps))`` with ``a' = a - mean(a)``:
    ``eps`` floors the product of the two variances, so a constant image scores 0
    (``eps > 0``, what optimisers and losses want) or NaN (``eps = 0``: undefined, what
    metrics report)."""
    a = a.flatten(1)
    b = b.flatten(1)
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    num = (a * b).mean(1)
    den = torch.sqrt(((a * a).mean(1) * (b * b).mean(1)).clamp_min(eps))
    return num / den


def box_mean(x: torch.Tensor, window: int, clip: bool = False) -> torch.Tensor:
    """Mean over a ``window``-voxel cube (odd) centred on every voxel, channel by channel,
    of ``(B, C, D, H, W)``, computed as three 1-D box means (the box is separable).

    At the borders, ``clip=False`` pads with zeros and divides by the whole window
    (voxelmorph's local NCC); ``clip=True`` averages over the part of the box inside the
    volume."""
    window = int(window)
    if window < 1 or window % 2 == 0:
        raise ValueError(f"the window must be a positive odd number of voxels, got {window}")
    r = window // 2
    for axis in range(3):
        k, pad = [1, 1, 1], [0, 0, 0]
        k[axis], pad[axis] = window, r
        x = F.avg_pool3d(x, tuple(k), stride=1, padding=tuple(pad), count_include_pad=not clip)
    return x


def local_ncc(a: torch.Tensor, b: torch.Tensor, window: int = 9, eps: float = 1e-8) -> torch.Tensor:
    """Local NCC, voxelmorph's: the squared correlation coefficient of ``a`` and ``b``
    (``(B, C, D, H, W)``) in a ``window^3`` box around every voxel (zero padding,
    :func:`box_mean`), ``cross^2 / (var_a var_b + eps)``, averaged over the volume
    per sample: ``(B,)``. Windows where either image is constant count as 0."""
    ma, mb = box_mean(a, window), box_mean(b, window)
    cross = box_mean(a * b, window) - ma * mb
    var_a = (box_mean(a * a, window) - ma * ma).clamp_min(0)
    var_b = (box_mean(b * b, window) - mb * mb).clamp_min(0)
    return (cross * cross / (var_a * var_b + eps)).flatten(1).mean(1)


# ------------------------------------------------------------- label maps
def _mask(x) -> torch.Tensor:
    return (x if torch.is_tensor(x) else torch.from_numpy(np.ascontiguousarray(x))).bool()


def dice(a, b, dims: Sequence[int] | None = None) -> torch.Tensor:
    """Dice overlap ``2 |a & b| / (|a| + |b|)`` of boolean masks (tensors or arrays of one
    shape), summed over ``dims`` (default: every axis), as float64; NaN where both masks
    are empty (nothing to score)."""
    a, b = _mask(a), _mask(b)
    dims = tuple(range(a.dim())) if dims is None else tuple(dims)
    inter = (a & b).sum(dims).double()
    size = a.sum(dims).double() + b.sum(dims).double()
    return 2.0 * inter / size


def centroid(mask) -> np.ndarray:
    """Centroid ``(3,)`` of a boolean mask (array or tensor ``(D, H, W)``) in voxels along
    the array axes; NaN when the mask is empty."""
    idx = np.argwhere(np.asarray(mask.cpu() if torch.is_tensor(mask) else mask))
    return idx.mean(axis=0) if len(idx) else np.full(3, np.nan)


def centroid_distance(a, b, matrix) -> float:
    """Distance between the centroids of two masks on one grid (:func:`centroid`), in the
    units of ``matrix``: its linear part (``(3, 3)``, or ``(4, 4)`` affine) maps voxel
    offsets to, e.g., millimetres (the grid's affine, or ``diag(spacing)``). NaN when a
    mask is empty (the centroid-distance TRE of the paper, section 2.6)."""
    linear = np.asarray(matrix, dtype=np.float64)[:3, :3]
    return float(np.linalg.norm(linear @ (centroid(a) - centroid(b))))
