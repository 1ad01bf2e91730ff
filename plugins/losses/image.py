"""Image similarity losses, called ``(warped, fixed)`` on ``(B, C, D, H, W)`` images in [0, 1].

All are "lower is better": ``1 - similarity``.

* ``ncc``: global normalised cross-correlation per sample and channel (the paper's NCC);
* ``lncc``: local (windowed) squared NCC, MONAI's ``LocalNormalizedCrossCorrelationLoss``;
* ``ssim``: 3-D SSIM with a Gaussian window, MONAI's ``SSIMLoss`` (matches scikit-image's
  ``structural_similarity(gaussian_weights=True, use_sample_covariance=False)``).
"""

from __future__ import annotations

import torch
from torch import nn

from .common import check_pair


class NCCLoss(nn.Module):
    """``1 - NCC``, NCC computed over the whole volume of each sample and channel, then
    averaged. Range [0, 2]; 0 when the images agree up to a positive affine intensity map.

    Args:
        eps: floor of the variance product, so constant images give NCC 0, not NaN.
    """

    inputs = "image"

    def __init__(self, eps: float = 1e-12):
        super().__init__()
        self.eps = eps

    def forward(self, warped: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        check_pair(warped, fixed, "ncc")
        p = warped.flatten(2)
        t = fixed.flatten(2)
        p = p - p.mean(-1, keepdim=True)
        t = t - t.mean(-1, keepdim=True)
        num = (p * t).mean(-1)
        den = torch.sqrt(((p * p).mean(-1) * (t * t).mean(-1)).clamp_min(self.eps))
        return 1.0 - (num / den).mean()


class LNCCLoss(nn.Module):
    """``1 - LNCC``: MONAI's local squared NCC in a cubic window of ``win`` voxels.

    Args:
        win: window size (odd), voxels.
        kernel: ``"rectangular"``, ``"triangular"`` or ``"gaussian"``.
    """

    inputs = "image"

    def __init__(self, win: int = 9, kernel: str = "rectangular"):
        super().__init__()
        from monai.losses import LocalNormalizedCrossCorrelationLoss

        self.inner = LocalNormalizedCrossCorrelationLoss(spatial_dims=3, kernel_size=win, kernel_type=kernel)

    def forward(self, warped: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        check_pair(warped, fixed, "lncc")
        return 1.0 + self.inner(warped, fixed)  # MONAI returns -LNCC


class SSIMLoss(nn.Module):
    """``1 - SSIM`` in 3-D, Gaussian window (MONAI ``SSIMLoss``).

    Args:
        win: window size (odd), voxels; 11 with sigma 1.5 is scikit-image's Gaussian window.
        sigma: Gaussian sigma, voxels.
        data_range: intensity range of the images (1 for [0, 1] images).
    """

    inputs = "image"

    def __init__(self, win: int = 11, sigma: float = 1.5, data_range: float = 1.0):
        super().__init__()
        from monai.losses import SSIMLoss as _MonaiSSIM

        self.inner = _MonaiSSIM(
            spatial_dims=3, data_range=data_range, kernel_type="gaussian", win_size=win, kernel_sigma=sigma
        )

    def forward(self, warped: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        check_pair(warped, fixed, "ssim")
        return self.inner(warped, fixed)


def ncc(eps: float = 1e-12) -> NCCLoss:
    return NCCLoss(eps)


def lncc(win: int = 9, kernel: str = "rectangular") -> LNCCLoss:
    return LNCCLoss(win, kernel)


def ssim(win: int = 11, sigma: float = 1.5, data_range: float = 1.0) -> SSIMLoss:
    return SSIMLoss(win, sigma, data_range)
