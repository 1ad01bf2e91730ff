"""Segmentation losses, called ``(warped_segs, fixed_segs)`` on one-hot ``(B, L, D, H, W)``
maps over the foreground labels (no background channel; see ``docs/ARCHITECTURE.md``).

* ``dice``: soft multi-label Dice, ``1 - mean_l DSC_l`` (MONAI ``DiceLoss``);
* ``hausdorff``: differentiable distance-transform Hausdorff loss of Karimi and
  Salcudean (MONAI ``HausdorffDTLoss``): ``mean((p - t)^2 * (d_p^a + d_t^a))`` with
  ``d_p``, ``d_t`` the (non-differentiated) distance-to-boundary maps, in voxels.
"""

from __future__ import annotations

import torch
from torch import nn

from .common import check_pair


class DiceLoss(nn.Module):
    """``1 - DSC`` averaged over labels and samples. Soft: ``DSC = 2 sum(p t) / (sum p + sum t)``.

    Args:
        smooth: added to numerator and denominator; a label absent from both maps scores 1.
    """

    inputs = "segmentation"

    def __init__(self, smooth: float = 1e-5):
        super().__init__()
        from monai.losses import DiceLoss as _MonaiDice

        # include_background=True: every channel here is a foreground label.
        self.inner = _MonaiDice(include_background=True, smooth_nr=smooth, smooth_dr=smooth)

    def forward(self, warped_segs: torch.Tensor, fixed_segs: torch.Tensor) -> torch.Tensor:
        check_pair(warped_segs, fixed_segs, "dice")
        return self.inner(warped_segs, fixed_segs)


class HausdorffLoss(nn.Module):
    """Distance-transform Hausdorff loss (one-hot in, lower is better, 0 for identical maps).

    Args:
        alpha: exponent of the distances (2 as Karimi and Salcudean).
        normalise: divide distances by the largest grid side, so the loss does not grow
            with the resolution (keeps it on a scale comparable to the other terms).
    """

    inputs = "segmentation"

    def __init__(self, alpha: float = 2.0, normalise: bool = False):
        super().__init__()
        from monai.losses import HausdorffDTLoss

        self.alpha, self.normalise = alpha, normalise
        self.inner = HausdorffDTLoss(alpha=alpha, include_background=True)

    def forward(self, warped_segs: torch.Tensor, fixed_segs: torch.Tensor) -> torch.Tensor:
        check_pair(warped_segs, fixed_segs, "hausdorff")
        loss = self.inner(warped_segs, fixed_segs)
        if self.normalise:
            loss = loss / float(max(warped_segs.shape[2:])) ** self.alpha
        return loss


def dice(smooth: float = 1e-5) -> DiceLoss:
    return DiceLoss(smooth)


def hausdorff(alpha: float = 2.0, normalise: bool = False) -> HausdorffLoss:
    return HausdorffLoss(alpha, normalise)
