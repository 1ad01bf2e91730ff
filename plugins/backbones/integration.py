"""Shared pieces of the backbones: size checks, the small-initialised output layer and
diffeomorphic integration by scaling and squaring.

Fields follow ``docs/ARCHITECTURE.md``: ``(B, 3, D, H, W)`` voxel pull displacements.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ddmr_core.errors import ConfigError, DataError
from ddmr_core.spatial.layers import Conv3d
from ddmr_core.spatial.fields import compose, resize_field


def check_size(size: Sequence[int] | None, divisor: int, what: str) -> tuple | None:
    """Validate the configured input size (the gin macro ``SIZE``) at build time.

    Raises:
        ConfigError: ``size`` is not three positive ints, or one of them is not a
            multiple of ``divisor`` (``2 ** levels``), naming both.
    """
    if size is None:
        return None
    try:
        size = tuple(int(s) for s in size)
    except (TypeError, ValueError):
        raise ConfigError(f"{what}: size must be three integers (D, H, W), got {size!r}") from None
    if len(size) != 3 or min(size) < 1:
        raise ConfigError(f"{what}: size must be three positive integers (D, H, W), got {size!r}")
    bad = [s for s in size if s % divisor]
    if bad:
        raise ConfigError(
            f"{what}: input size {size} (SIZE) is not divisible by {divisor} = 2^levels "
            f"along every axis ({bad} is not); choose a size that is a multiple of {divisor} "
            "or use fewer levels"
        )
    return size


def check_pair(fixed: torch.Tensor, moving: torch.Tensor, divisor: int, what: str) -> None:
    """Input checks at forward time: same shape, 5-D, divisible by ``2 ** levels``."""
    if fixed.shape != moving.shape:
        raise DataError(
            f"{what}: fixed and moving must have the same shape, got {tuple(fixed.shape)} "
            f"and {tuple(moving.shape)}; resample them onto one grid first"
        )
    if fixed.dim() != 5:
        raise DataError(f"{what}: images must be (B, C, D, H, W), got {tuple(fixed.shape)}")
    bad = [s for s in fixed.shape[2:] if s % divisor]
    if bad:
        raise DataError(
            f"{what}: image grid {tuple(fixed.shape[2:])} is not divisible by {divisor} = 2^levels"
        )


def flow_conv(in_channels: int, std: float = 1e-5) -> Conv3d:
    """The 3-filter output convolution, initialised small (``N(0, std)``, zero bias) so
    training starts from a near-identity transform, as voxelmorph does."""
    conv = Conv3d(in_channels, 3, kernel_size=3, padding=1)
    if conv.weight.is_meta:
        # a shape probe (ddmr_core.checkpoint builds models on the meta device before
        # loading weights): no values to draw, and torch routes random fills of meta
        # tensors through its reference kernels, whose import (torch._dynamo) takes a second
        return conv
    nn.init.normal_(conv.weight, mean=0.0, std=std)
    nn.init.zeros_(conv.bias)
    return conv


def scaling_and_squaring(velocity: torch.Tensor, steps: int) -> torch.Tensor:
    """Integrate a stationary velocity field into a diffeomorphic displacement.

    ``u = exp(v)`` computed as ``u_0 = v / 2^steps`` then ``steps`` times
    ``u <- u o u`` (:func:`ddmr_core.spatial.fields.compose`). Both in voxels, ``(B, 3, D, H, W)``.
    """
    if steps <= 0:
        return velocity
    disp = velocity / (2.0 ** steps)
    for _ in range(steps):
        disp = compose(disp, disp)
    return disp


class FieldOutput(nn.Module):
    """Turns the head's output into the final field: optional integration, then
    resizing from the head's grid to the input grid (vectors rescaled)."""

    def __init__(self, integration_steps: int = 0):
        super().__init__()
        if integration_steps < 0:
            raise ConfigError(f"integration_steps must be >= 0, got {integration_steps}")
        self.integration_steps = int(integration_steps)

    def forward(self, field: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        field = scaling_and_squaring(field, self.integration_steps)
        return resize_field(field, size)
