"""Input checks shared by the loss plugins."""

from __future__ import annotations

import torch

from ddmr_core.errors import DataError


def check_pair(pred: torch.Tensor, target: torch.Tensor, what: str) -> None:
    """Both ``(B, C, D, H, W)`` of one shape, else a :class:`DataError` naming ``what``."""
    if pred.shape != target.shape:
        raise DataError(
            f"loss {what}: inputs must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    if pred.dim() != 5:
        raise DataError(f"loss {what}: inputs must be (B, C, D, H, W), got {tuple(pred.shape)}")


def check_field(disp: torch.Tensor, what: str) -> None:
    if disp.dim() != 5 or disp.shape[1] != 3:
        raise DataError(f"loss {what}: field must be (B, 3, D, H, W), got {tuple(disp.shape)}")
    if min(disp.shape[2:]) < 3:
        raise DataError(f"loss {what}: field grid {tuple(disp.shape[2:])} needs >= 3 voxels per axis")
