"""Similarity and overlap measures, each implemented once: NCC (global and local), SSIM,
mutual information, Dice and centroid distances.

The metric plugins (``ddmr_plugins.metrics``), the losses (``ddmr_plugins.losses``), the
core (prealignment, instance optimisation, the trainer's validation, ``ddmr register``'s
before/after figures) all compute these here, so a number means the same wherever it
is reported. Inputs are tensors (NumPy arrays where stated); computations stay on the
inputs' device and in their dtype unless stated.
"""

from __future__ import annotations

import math
from functools import lru_cache
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


# ------------------------------------------------------- mutual information
# -------------------------------------------------------------------- SSIM
@lru_cache(maxsize=8)
def _ssim_window(win: int, kernel: str, sigma: float) -> torch.Tensor:
    """``(win,)`` float32 1-D window on the CPU, summing to 1: Gaussian (``sigma`` voxels) or
    uniform. Built in Python floats: no tensor maths, so a model probed on the ``meta`` device
    pulls in none of torch's reference kernels."""
    if kernel == "gaussian":
        g = [math.exp(-((i - (win - 1) / 2) ** 2) / (2 * sigma**2)) for i in range(win)]
        return torch.tensor([v / sum(g) for v in g], dtype=torch.float32, device="cpu")
    if kernel == "uniform":
        return torch.tensor([1.0 / win] * win, dtype=torch.float32, device="cpu")
    raise ValueError(f"ssim: kernel must be 'gaussian' or 'uniform', got {kernel!r}")


def ssim_map(x: torch.Tensor, y: torch.Tensor, win: int = 11, kernel: str = "gaussian", sigma: float = 1.5,
             data_range: float = 1.0, k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Structural similarity of ``(B, C, D, H, W)`` images at every voxel whose ``win^3``
    window fits in the volume: ``(B, C, D - win + 1, H - win + 1, W - win + 1)``; its mean
    is the SSIM.

    The statistics are MONAI's ``compute_ssim_and_cs`` (population covariances, ``C1 = (k1
    L)^2``, ``C2 = (k2 L)^2``, ``L = data_range``), and with the Gaussian window (11, sigma
    1.5) scikit-image's ``structural_similarity(gaussian_weights=True,
    use_sample_covariance=False)``; the window is applied as three 1-D passes (``3 win``
    instead of ``win^3`` multiplications per voxel)."""
    c = x.shape[1]
    k = _ssim_window(int(win), kernel, float(sigma)).to(device=x.device, dtype=x.dtype)
    maps = torch.cat([x, y, x * x, y * y, x * y], 1)
    for axis in range(3):  # valid (unpadded) separable filtering, one filter per map
        view = [1, 1, 1, 1, 1]
        view[2 + axis] = int(win)
        maps = F.conv3d(maps, k.view(view).expand(5 * c, *view[1:]), groups=5 * c)
    mu_x, mu_y, xx, yy, xy = maps.split(c, 1)
    var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))


def mutual_information(a: torch.Tensor, b: torch.Tensor, bins: int = 32, mask: torch.Tensor | None = None,
                       normalised: bool = False) -> torch.Tensor:
    """Mutual information (nats) of the intensities of ``a`` and ``b`` per sample of
    ``(B, ...)`` tensors with values in [0, 1] (clamped), from their joint histogram with
    a linear (first-order B-spline) Parzen window: each voxel spreads its unit weight over
    the two nearest of ``bins`` bin centres ``0, 1/(bins-1), ..., 1`` of each image, so the
    histogram, and the MI, are differentiable in both images (piecewise linear). ``(B,)``.

    MI does not assume the two images share a contrast: it is unchanged by any one-to-one
    remapping of either image's intensities that keeps histogram bins apart (an inversion
    ``1 - a`` exactly), which is why ANTs registers across MR contrasts with it.
    ``mask`` (``(B, ...)``, 0/1 weights) restricts the voxels counted. ``normalised``
    returns ``MI(a, b) / sqrt(MI(a, a) MI(b, b))`` instead: 1 when either image determines
    the other by a one-to-one map (a contrast change), ~0 for unrelated images. (The soft
    histogram of an image with itself is not diagonal, so ``MI(a, a)`` is below the
    entropy of ``a``: dividing by the entropies would not give 1 there.)

    Cost: ``O(N)`` per sample with a ``bins x bins`` histogram (a scatter of four weights per
    voxel), against ``O(N bins)`` for a Gaussian window (MONAI's
    ``GlobalMutualInformationLoss``, which the tests compare it with)."""
    bins = int(bins)
    if bins < 2:
        raise ValueError(f"mutual information needs at least 2 bins, got {bins}")
    n = a.shape[0]
    weight = None if mask is None else mask.reshape(n, -1)
    sa, sb = _soft_bins(a.reshape(n, -1), bins), _soft_bins(b.reshape(n, -1), bins)
    mi = _mi(sa, sb, bins, weight)
    if not normalised:
        return mi
    return mi / torch.sqrt((_mi(sa, sa, bins, weight) * _mi(sb, sb, bins, weight)).clamp_min(1e-24))


def _soft_bins(x: torch.Tensor, bins: int):
    """``(lower bin index, weight of the upper bin)`` of ``(B, N)`` values in [0, 1]."""
    t = x.clamp(0, 1) * (bins - 1)
    i = t.detach().floor().clamp(max=bins - 2)
    return i.long(), t - i


def _mi(sa, sb, bins: int, weight) -> torch.Tensor:
    (ia, wa1), (ib, wb1) = sa, sb
    w = torch.ones_like(wa1) if weight is None else weight.to(wa1.dtype)
    joint = wa1.new_zeros(wa1.shape[0], bins * bins)
    for da, wa in ((0, 1 - wa1), (1, wa1)):
        for db, wb in ((0, 1 - wb1), (1, wb1)):
            joint = joint.scatter_add(1, (ia + da) * bins + (ib + db), wa * wb * w)
    joint = (joint / joint.sum(1, keepdim=True).clamp_min(1e-12)).view(-1, bins, bins)
    pa, pb = joint.sum(2), joint.sum(1)
    eps = 1e-12
    return (joint * (torch.log(joint + eps) - torch.log(pa[:, :, None] * pb[:, None, :] + eps))).sum((1, 2))


# ------------------------------------------------------------- label maps
def _mask(x) -> torch.Tensor:
    return (x if torch.is_tensor(x) else torch.from_numpy(np.ascontiguousarray(x))).bool()


def dice(a, b, dims: Sequence[int] | None = None) -> torch.Tensor:
    """Dice overlap ``2 |a & b| / (|a| + |b|)`` of boolean masks (tensors or arrays of one
    shape), summed over ``dims`` (default: every axis), as float64; NaN where both masks
    are empty (nothing to score)."""
    a, b = _mask(a), _mask(b)
    dims = None if dims is None else tuple(dims)  # a range or generator is fine too
    if dims is None or tuple(sorted(dims)) == tuple(range(a.dim())):
        # one count over everything: count_nonzero is >10x faster than a boolean sum on the
        # CPU (a 1 mm brain label map: 7 ms against 100 ms)
        count = torch.count_nonzero
        return 2.0 * count(a & b).double() / (count(a).double() + count(b).double())
    inter = (a & b).sum(dims).double()
    size = a.sum(dims).double() + b.sum(dims).double()
    return 2.0 * inter / size


def centroid(mask) -> np.ndarray:
    """Centroid ``(3,)`` of a boolean mask (array or tensor ``(D, H, W)``) in voxels along
    the array axes; NaN when the mask is empty."""
    m = np.asarray(mask.cpu() if torch.is_tensor(mask) else mask)
    # from the mask's projection on each axis (exact integer counts): no list of the
    # voxels' coordinates, which np.argwhere makes (tens of MB for a 1 mm brain label)
    out = np.full(3, np.nan)
    for axis in range(3):
        counts = m.sum(axis=tuple(a for a in range(3) if a != axis), dtype=np.int64)
        total = int(counts.sum())
        if not total:
            return np.full(3, np.nan)
        out[axis] = float(counts @ np.arange(len(counts), dtype=np.int64)) / total
    return out


def centroid_distance(a, b, matrix) -> float:
    """Distance between the centroids of two masks on one grid (:func:`centroid`), in the
    units of ``matrix``: its linear part (``(3, 3)``, or ``(4, 4)`` affine) maps voxel
    offsets to, e.g., millimetres (the grid's affine, or ``diag(spacing)``). NaN when a
    mask is empty (the centroid-distance TRE of the paper, section 2.6)."""
    linear = np.asarray(matrix, dtype=np.float64)[:3, :3]
    return float(np.linalg.norm(linear @ (centroid(a) - centroid(b))))
