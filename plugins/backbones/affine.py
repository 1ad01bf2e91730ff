"""``affine_cascade``: a learnt affine stage in front of any deformable backbone.

The paper's augmentation moves the head by up to 30 mm and 10 degrees, and a U-Net
trained with image losses learns such bulk motion last, if at all: the similarity of
two badly misaligned images says little about where a voxel went, and a light U-Net's
receptive field is narrower than the motion. Classical registration (ANTs, ITK) starts
from an affine fit for that reason, and ``prealign='affine'`` does the same by
optimisation, at a cost paid again for every pair. This module learns the affine step
instead, so one forward pass registers the pair:

1. :class:`AffineRegressor` reads the concatenated pair with strided convolutions, pools
   every feature map into its mean and its first moments along the three axes (where
   the feature sits, which is what a translation or rotation changes), and maps those
   to the 12 parameters of an affine map, started at the identity;
2. the moving image is warped by that map and the deformable backbone predicts the
   residual on the pre-aligned pair;
3. the two compose exactly, with no interpolation (:func:`ddmr_core.spatial.compose_affine`).

Everything is trained end to end by the model's losses. Fields follow
``docs/ARCHITECTURE.md``: ``(B, 3, D, H, W)`` voxel pull displacements.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ddmr_core.errors import ConfigError
from ddmr_core.layers import Conv3d
from ddmr_core.prealign import affine_field, voxel_matrix
from ddmr_core.spatial import compose_affine, identity_grid, warp

from .integration import check_pair

#: Default widths of the affine stage: five stride-2 levels (64^3 -> 2^3).
AFFINE_WIDTHS = (16, 32, 32, 64, 64)


class AffineRegressor(nn.Module):
    """``(fixed, moving) -> theta (B, 3, 4)``, an affine map in ``F.affine_grid``'s
    normalised coordinates (``align_corners=True``, about the grid centre).

    Args:
        widths: filters of the stride-2 convolutions, one per level.
        slope: LeakyReLU negative slope.
        in_channels: channels of fixed + moving together.

    The output layer starts at zero, so the stage starts as the identity map.
    """

    def __init__(self, widths: Sequence[int] = AFFINE_WIDTHS, slope: float = 0.2, in_channels: int = 2):
        super().__init__()
        widths = [int(w) for w in widths]
        if not widths or min(widths) < 1:
            raise ConfigError(f"affine_cascade: widths must be a non-empty list of positive ints, got {widths}")
        layers, cin = [], in_channels
        for w in widths:
            layers += [Conv3d(cin, w, kernel_size=3, stride=2, padding=1), nn.LeakyReLU(slope)]
            cin = w
        self.features = nn.Sequential(*layers)
        self.divisor = 2 ** len(widths)
        # per channel: mean and the three first moments (see module docstring)
        self.head = nn.Linear(4 * cin, 12)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        f = self.features(torch.cat([fixed, moving], dim=1))
        b, c = f.shape[:2]
        # coordinates of the feature grid in [-1, 1], array-axis order
        coords = identity_grid(f.shape[2:], f.device, f.dtype)
        coords = coords * (2.0 / torch.tensor([max(n - 1, 1) for n in f.shape[2:]], device=f.device,
                                              dtype=f.dtype).view(1, 3, 1, 1, 1)) - 1.0
        flat = f.flatten(2)                                     # (B, C, N)
        moments = torch.einsum("bcn,kn->bck", flat, coords.flatten(2)[0]) / flat.shape[-1]
        pooled = torch.cat([flat.mean(-1), moments.flatten(1)], dim=1)
        delta = self.head(pooled).view(b, 3, 4)
        eye = torch.eye(3, 4, device=f.device, dtype=f.dtype)
        return eye + delta


class AffineCascade(nn.Module):
    """A learnt affine stage, then a deformable backbone on the pre-aligned pair.

    Args:
        deformable: a backbone (``forward(fixed, moving) -> disp``), e.g. ``vxm_unet``.
        widths: filters of the affine stage's levels (see :class:`AffineRegressor`).
        slope: LeakyReLU negative slope of the affine stage.

    ``forward(fixed, moving)``: ``(B, 1, D, H, W)`` each -> ``(B, 3, D, H, W)`` voxel pull
    field, the composition of the affine map and the residual. ``last_affine`` holds the
    affine stage's ``theta`` of the last call (for logging and tests).
    """

    def __init__(self, deformable: nn.Module, widths: Sequence[int] = AFFINE_WIDTHS, slope: float = 0.2):
        super().__init__()
        if not isinstance(deformable, nn.Module):
            raise ConfigError("affine_cascade: deformable must be a backbone module, e.g. @ddmr.backbones.vxm_unet()")
        self.affine = AffineRegressor(widths, slope)
        self.deformable = deformable
        self.last_affine = None

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        check_pair(fixed, moving, self.affine.divisor, f"affine_cascade ({len(self.affine.features) // 2} levels)")
        shape = tuple(fixed.shape[2:])
        theta = self.affine(fixed, moving)
        self.last_affine = theta.detach()
        field = affine_field(theta, shape)
        residual = self.deformable(fixed, warp(moving, field, mode="linear", padding="border"))
        return compose_affine(field, voxel_matrix(theta, shape), residual)

    def parameter_groups(self) -> dict:
        """The affine stage counts as encoder (it reads the images); the deformable
        backbone's own groups follow (all of it as decoder if it has none)."""
        inner = getattr(self.deformable, "parameter_groups", None)
        groups = inner() if inner is not None else {"encoder": [], "decoder": list(self.deformable.parameters())}
        return {"encoder": list(self.affine.parameters()) + list(groups["encoder"]),
                "decoder": list(groups["decoder"])}


def affine_cascade(deformable: nn.Module = None, widths: Sequence[int] = AFFINE_WIDTHS,
                   slope: float = 0.2) -> AffineCascade:
    """Factory registered as ``ddmr.backbones.affine_cascade`` (see :class:`AffineCascade`)."""
    return AffineCascade(deformable, widths, slope)
