"""``affine_cascade``: a learnt affine stage in front of any deformable backbone.

The paper's augmentation moves the head by up to 30 mm and 10 degrees, and a U-Net
trained with image losses learns such bulk motion last, if at all: the similarity of
two badly misaligned images says little about where a voxel went, and a light U-Net's
receptive field is narrower than the motion. Classical registration (ANTs, ITK) starts
from an affine fit for that reason, and ``prealign='affine'`` does the same by
optimisation, at a cost paid again for every pair. This module learns the affine step
instead, so one forward pass registers the pair:

1. :class:`KeypointAffine` finds keypoints in each image (centres of mass of learnt
   feature maps) and fits the affine map that carries the fixed image's keypoints onto
   the moving image's, by least squares in closed form;
2. the moving image is warped by that map and the deformable backbone predicts the
   residual on the pre-aligned pair;
3. the two compose exactly, with no interpolation (:func:`ddmr_core.spatial.fields.compose_affine`).

Everything is trained end to end by the model's losses. Fields follow
``docs/ARCHITECTURE.md``: ``(B, 3, D, H, W)`` voxel pull displacements.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ddmr_core.errors import ConfigError
from ddmr_core.spatial.layers import Conv3d
from ddmr_core.spatial.prealign import affine_field, voxel_matrix
from ddmr_core.spatial.fields import compose_affine, warp
from ddmr_core.spatial.grids import identity_grid, to_normalised

from .integration import check_pair

#: Default widths of the affine stage: three stride-2 levels (64^3 -> 8^3 keypoint maps).
AFFINE_WIDTHS = (16, 32, 32)


class _ZeroMeanConv3d(nn.Conv3d):
    """Convolution whose every kernel is shifted to sum to zero, with replicated borders:
    blind to constant offsets, also at the edge of the grid."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight - self.weight.mean(dim=(1, 2, 3, 4), keepdim=True)
        # replicated borders: zero padding would make an edge of any non-zero background
        pad = [p for p in reversed(self.padding) for _ in range(2)]
        x = torch.nn.functional.pad(x, pad, mode="replicate")
        return torch.nn.functional.conv3d(x, w, self.bias, self.stride)


class KeypointAffine(nn.Module):
    """``(fixed, moving) -> theta (B, 3, 4)``, the affine map (``F.affine_grid``'s
    normalised coordinates, ``align_corners=True``) that best carries the fixed image's
    keypoints onto the moving image's, in closed form.

    One small convolutional network, shared by both images, turns each image into
    ``keypoints`` maps; the centre of mass of each squared map is a keypoint (the idea of
    KeyMorph, Yu et al. 2022). The map ``theta`` minimises ``sum_k |theta [p_k; 1] - q_k|^2
    + ridge |theta - [I | 0]|^2`` over fixed keypoints ``p_k`` and moving keypoints ``q_k``
    (normal equations, a 4 x 4 solve). Convolutions commute with translations, so even
    untrained keypoints move with the image: the stage starts near the right translation
    and training makes the keypoints distinctive (rotations, scaling, shear).

    Args:
        widths: filters of the stride-2 convolutions (each halves the grid).
        keypoints: number of keypoints (>= 4, not all coplanar, for a full affine map).
        slope: LeakyReLU negative slope.
        ridge: weight of the pull towards the identity (keeps the solve well posed).
    """

    def __init__(self, widths: Sequence[int] = AFFINE_WIDTHS, keypoints: int = 32, slope: float = 0.2,
                 ridge: float = 1e-3):
        super().__init__()
        widths = [int(w) for w in widths]
        if not widths or min(widths) < 1:
            raise ConfigError(f"affine_cascade: widths must be a non-empty list of positive ints, got {widths}")
        if int(keypoints) < 4:
            raise ConfigError(f"affine_cascade: keypoints must be >= 4 for an affine map, got {keypoints}")
        # No biases, and a first layer whose kernels sum to zero: a constant image (the
        # background, at any brightness) gives all-zero maps, so the keypoints sit on the
        # image's structures from the first step on, and move with them.
        layers, cin = [], 1
        for i, w in enumerate(widths):
            conv = (_ZeroMeanConv3d if i == 0 else Conv3d)(cin, w, kernel_size=3, stride=2, padding=1, bias=False)
            layers += [conv, nn.LeakyReLU(slope)]
            cin = w
        layers.append(Conv3d(cin, int(keypoints), kernel_size=1, bias=False))
        self.features = nn.Sequential(*layers)
        self.stride = 2 ** len(widths)
        self.ridge = float(ridge)

    def keypoints(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, 1, D, H, W) -> (B, K, 3)`` keypoints in normalised ``xyz`` coordinates."""
        maps = self.features(image).pow(2)                         # (B, K, d, h, w), >= 0
        weights = maps.flatten(2) + 1e-12                          # a blank map: the grid centre
        weights = weights / weights.sum(-1, keepdim=True)
        # feature voxel j sits over image voxel stride * j (kernel 3, padding 1, stride 2)
        grid = identity_grid(maps.shape[2:], maps.device, maps.dtype) * self.stride
        coords = to_normalised(grid, image.shape[2:]).flatten(2)[0]  # (3, N), xyz
        return torch.einsum("bkn,cn->bkc", weights, coords)

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        both = self.keypoints(torch.cat([fixed, moving], dim=0))
        p, q = both.split(fixed.shape[0], dim=0)                  # (B, K, 3) each
        x = torch.cat([p, torch.ones_like(p[..., :1])], dim=-1)   # (B, K, 4)
        eye = torch.eye(3, 4, device=p.device, dtype=p.dtype).expand(p.shape[0], 3, 4)
        lhs = x.transpose(1, 2) @ x + self.ridge * torch.eye(4, device=p.device, dtype=p.dtype)
        rhs = q.transpose(1, 2) @ x + self.ridge * eye            # (B, 3, 4)
        # theta lhs = rhs, lhs symmetric: theta^T = solve(lhs, rhs^T)
        return torch.linalg.solve(lhs, rhs.transpose(1, 2)).transpose(1, 2)


def compose_thetas(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """``(B, 3, 4)`` map of pulling with ``first`` then with ``second`` (``F.affine_grid``
    convention): ``warp(warp(m, first), second)(x) = m(first(second(x)))``."""
    return first[:, :, :3] @ second + torch.cat([torch.zeros_like(first[:, :, :3]), first[:, :, 3:]], dim=2)


class AffineCascade(nn.Module):
    """A learnt affine stage, then a deformable backbone on the pre-aligned pair.

    Args:
        deformable: a backbone (``forward(fixed, moving) -> disp``), e.g. ``vxm_unet``.
        widths: filters of the affine stage's levels (see :class:`KeypointAffine`).
        keypoints: keypoints of the affine stage.
        slope: LeakyReLU negative slope of the affine stage.
        affine_passes: passes of the affine stage; each pass after the first runs on the
            pair as the previous passes aligned it (where keypoints agree better) and its
            map composes exactly with theirs.

    ``forward(fixed, moving)``: ``(B, 1, D, H, W)`` each -> ``(B, 3, D, H, W)`` voxel pull
    field, the composition of the affine map and the residual. ``last_affine`` holds the
    affine stage's ``theta`` of the last call (for logging and tests).
    """

    def __init__(self, deformable: nn.Module, widths: Sequence[int] = AFFINE_WIDTHS, keypoints: int = 32,
                 slope: float = 0.2, affine_passes: int = 1):
        super().__init__()
        if not isinstance(deformable, nn.Module):
            raise ConfigError("affine_cascade: deformable must be a backbone module, e.g. @ddmr.backbones.vxm_unet()")
        if int(affine_passes) < 1:
            raise ConfigError(f"affine_cascade: affine_passes must be >= 1, got {affine_passes}")
        self.affine_passes = int(affine_passes)
        self.affine = KeypointAffine(widths, keypoints, slope)
        self.deformable = deformable
        self.last_affine = None

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        check_pair(fixed, moving, 1, "affine_cascade")
        shape = tuple(fixed.shape[2:])
        theta = self.affine(fixed, moving)
        for _ in range(self.affine_passes - 1):
            moved = warp(moving, affine_field(theta, shape), mode="linear", padding="border")
            theta = compose_thetas(theta, self.affine(fixed, moved))
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


def affine_cascade(deformable: nn.Module = None, widths: Sequence[int] = AFFINE_WIDTHS, keypoints: int = 32,
                   slope: float = 0.2, affine_passes: int = 1) -> AffineCascade:
    """Factory registered as ``ddmr.backbones.affine_cascade`` (see :class:`AffineCascade`)."""
    return AffineCascade(deformable, widths, keypoints, slope, affine_passes)
