"""Image similarity losses, called ``(warped, fixed)`` on ``(B, C, D, H, W)`` images in [0, 1].

All are "lower is better": ``1 - similarity``.

* ``ncc``: global normalised cross-correlation per sample and channel (the paper's NCC);
* ``lncc``: local (windowed) squared NCC, MONAI's ``LocalNormalizedCrossCorrelationLoss``;
* ``ssim``: 3-D SSIM with a Gaussian window, computed separably (the statistics of MONAI's
  ``SSIMLoss`` and scikit-image's ``structural_similarity(gaussian_weights=True,
  use_sample_covariance=False)``);
* ``mi``: mutual information (:func:`ddmr_core.spatial.similarity.mutual_information`), which,
  unlike the three above, does not assume that the two images share a contrast.
"""

from __future__ import annotations

import torch
from torch import nn

from ddmr_core.spatial.similarity import global_ncc, mutual_information, ssim_map

from .common import MonaiBacked, check_pair


class NCCLoss(nn.Module):
    """``1 - NCC``, NCC (:func:`ddmr_core.spatial.similarity.global_ncc`) computed over the whole
    volume of each sample and channel, then averaged. Range [0, 2]; 0 when the images
    agree up to a positive affine intensity map.

    Args:
        eps: floor of the variance product, so constant images give NCC 0, not NaN.
    """

    inputs = "image"

    def __init__(self, eps: float = 1e-12):
        super().__init__()
        self.eps = eps

    def forward(self, warped: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        check_pair(warped, fixed, "ncc")
        # one (B * C) row per sample and channel
        return 1.0 - global_ncc(warped.flatten(0, 1), fixed.flatten(0, 1), self.eps).mean()


class LNCCLoss(MonaiBacked):
    """``1 - LNCC``: MONAI's local squared NCC in a cubic window of ``win`` voxels.

    Args:
        win: window size (odd), voxels.
        kernel: ``"rectangular"``, ``"triangular"`` or ``"gaussian"``.
    """

    inputs = "image"

    def __init__(self, win: int = 9, kernel: str = "rectangular"):
        def make():
            from monai.losses import LocalNormalizedCrossCorrelationLoss

            return LocalNormalizedCrossCorrelationLoss(spatial_dims=3, kernel_size=win, kernel_type=kernel)

        super().__init__(make)

    def forward(self, warped: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        check_pair(warped, fixed, "lncc")
        return 1.0 + self.inner(warped, fixed)  # MONAI returns -LNCC


class SSIMLoss(nn.Module):
    """``1 - SSIM`` in 3-D with a Gaussian window, averaged over the valid region
    (:func:`ddmr_core.spatial.similarity.ssim_map`: MONAI's statistics, a separable window).

    Args:
        win: window size (odd), voxels; 11 with sigma 1.5 is scikit-image's Gaussian window.
        sigma: Gaussian sigma, voxels.
        data_range: intensity range of the images (1 for [0, 1] images).
        k1, k2: the usual SSIM stabilisers, ``C1 = (k1 L)^2``, ``C2 = (k2 L)^2``.
    """

    inputs = "image"

    def __init__(self, win: int = 11, sigma: float = 1.5, data_range: float = 1.0,
                 k1: float = 0.01, k2: float = 0.03):
        super().__init__()
        if win < 1 or win % 2 == 0:
            raise ValueError(f"ssim: win must be a positive odd number of voxels, got {win}")
        if sigma <= 0 or data_range <= 0:
            raise ValueError(f"ssim: sigma and data_range must be positive, got {sigma}, {data_range}")
        self.win, self.sigma, self.data_range, self.k1, self.k2 = int(win), float(sigma), float(data_range), k1, k2

    def forward(self, warped: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        check_pair(warped, fixed, "ssim")
        if min(warped.shape[2:]) < self.win:
            raise ValueError(f"ssim: images {tuple(warped.shape[2:])} are smaller than the {self.win}-voxel window")
        return 1.0 - ssim_map(warped, fixed, self.win, "gaussian", self.sigma, self.data_range, self.k1, self.k2).mean()


class MILoss(nn.Module):
    """``1 - NMI``: normalised mutual information
    (:func:`ddmr_core.spatial.similarity.mutual_information` with ``normalised=True``), per sample
    and channel, averaged. About [0, 1]; 0 when either image's intensities determine the
    other's by a one-to-one map (an inversion, a T1 against a T2-like remap): a similarity
    for pairs of different contrasts.

    Args:
        bins: histogram bins over [0, 1] per image.
    """

    inputs = "image"

    def __init__(self, bins: int = 32):
        super().__init__()
        if int(bins) != bins or bins < 2:
            raise ValueError(f"mi: bins must be an integer >= 2, got {bins!r}")
        self.bins = int(bins)

    def forward(self, warped: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        check_pair(warped, fixed, "mi")
        nmi = mutual_information(warped.flatten(0, 1), fixed.flatten(0, 1), self.bins, normalised=True)
        return 1.0 - nmi.mean()


def ncc(eps: float = 1e-12) -> NCCLoss:
    return NCCLoss(eps)


def lncc(win: int = 9, kernel: str = "rectangular") -> LNCCLoss:
    return LNCCLoss(win, kernel)


def ssim(win: int = 11, sigma: float = 1.5, data_range: float = 1.0) -> SSIMLoss:
    return SSIMLoss(win, sigma, data_range)


def mi(bins: int = 32) -> MILoss:
    return MILoss(bins)
