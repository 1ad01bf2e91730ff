"""Input checks shared by the loss plugins, and the base of the MONAI-backed losses."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

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


class MonaiBacked(nn.Module):
    """A loss whose value a MONAI object computes (``self.inner``), made on first use.

    Importing MONAI takes seconds, and a model built for inference (``ddmr register``,
    ``ddmr serve``, the shape probe of a checkpoint) never computes its losses: the import
    is paid by training and evaluation only. MONAI's losses hold no parameters or
    buffers, so a model's state dict is the same before and after the first use.

    Args:
        factory: builds the MONAI object (imports MONAI inside).
    """

    def __init__(self, factory: Callable[[], nn.Module]):
        super().__init__()
        self._factory = factory
        self._inner = None

    @property
    def inner(self) -> nn.Module:
        if self._inner is None:
            self._inner = self._factory()
        return self._inner
