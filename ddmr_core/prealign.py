"""Initial global alignment before a network predicts the deformable residual.

The augmentation of the paper moves the whole head by up to 30 mm and 10 degrees about
each axis (section 2.2); a small network trained for minutes on a CPU learns that bulk
motion last and least precisely. ANTs and ITK start every registration from a global
initialisation (centre of mass, then an affine stage); :class:`RegistrationModel` can
do the same (``prealign=``):

* ``"centroid"``: translate the moving image so that its intensity centroid
  (:func:`~ddmr_core.spatial.intensity_centroid`) lands on the fixed one's. No
  parameters.
* ``"affine"``: from that translation, fit a 12-parameter affine map by gradient
  descent on global NCC over a coarse-to-fine pyramid (:func:`fit_affine`). Affine, not
  rigid, because the model sees voxel arrays without their spacing: a rigid motion in
  millimetres is an affine map in voxels of an anisotropic grid.

Both return a pull field in voxels of the fixed grid (``(B, 3, D, H, W)``, array-axis
order, ``docs/ARCHITECTURE.md``), and are computed without gradient to the network: the
network sees ``warp(moving, prealignment)`` and predicts the residual.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .similarity import global_ncc
from .spatial import grid_sample, identity_grid, intensity_centroid, normalised_scale

METHODS = (None, "centroid", "affine")


def centroid_shift(fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
    """``(B, 3)`` voxel translation ``t`` with ``moving(x + t)`` centred like ``fixed``."""
    return intensity_centroid(moving) - intensity_centroid(fixed)


def affine_field(theta: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Pull field ``(B, 3, D, H, W)`` in voxels of the normalised-coordinate map ``theta``
    ``(B, 3, 4)`` (``F.affine_grid`` convention, ``align_corners=True``)."""
    grid = F.affine_grid(theta, (theta.shape[0], 1, *shape), align_corners=True)  # xyz, [-1, 1]
    scale = normalised_scale(shape, theta.device)
    vox = (grid.flip(-1) + 1.0) / scale  # array-axis order, voxels
    return vox.permute(0, 4, 1, 2, 3) - identity_grid(shape, theta.device, theta.dtype)


def fit_affine(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    levels: Sequence[int] = (4, 2),
    iterations: Sequence[int] = (30, 10),
    lr: float = 0.04,
    scale_bounds: tuple[float, float] | None = (2 / 3, 1.5),
) -> torch.Tensor:
    """Affine pre-alignment by maximising global NCC, coarse to fine.

    Args:
        fixed, moving: ``(B, 1, D, H, W)`` images on one grid.
        levels: downsampling factor of each pyramid level (average pooling).
        iterations: Adam steps at each level.
        lr: Adam step in normalised coordinates (the grid spans [-1, 1]).
        scale_bounds: ``(lo, hi)``: after every step the linear part's singular values
            (its scalings) are clamped into ``[lo, hi]`` (:func:`clamp_scales`), or
            ``None`` for no bound. Global NCC can rise by squashing an axis flat (a
            constant image along it): on a whole-body CT pair the unbounded fit reached
            singular values (0.96, 0.96, 0.01). The bound leaves fits inside it unchanged.

    The defaults fit at 1/4 and 1/2 of the grid only: more steps or a full-resolution
    level add cost (training pays it per sample) for little gain. The objective is
    :func:`ddmr_core.similarity.global_ncc`.

    Returns:
        ``(B, 3, 4)`` ``theta`` (see :func:`affine_field`), started from the centroid
        translation. Each sample is fitted independently (the loss is a sum over samples).
    """
    if len(levels) != len(iterations):
        raise ValueError("levels and iterations must have the same length")
    shape = fixed.shape[2:]
    with torch.inference_mode(False), torch.enable_grad():
        f0, m0 = fixed.detach().clone().float(), moving.detach().clone().float()
        b = f0.shape[0]
        shift = centroid_shift(f0, m0) * normalised_scale(shape, f0.device)  # normalised, array order
        theta = torch.zeros(b, 3, 4, device=f0.device)
        theta[:, :, :3] = torch.eye(3, device=f0.device)
        theta[:, :, 3] = shift.flip(-1)  # xyz
        theta.requires_grad_(True)
        opt = torch.optim.Adam([theta], lr=lr)
        eye = torch.eye(3, device=f0.device)
        inside = None if scale_bounds is None else min(1 - scale_bounds[0], scale_bounds[1] - 1)
        for factor, steps in zip(levels, iterations):
            f = F.avg_pool3d(f0, factor) if factor > 1 else f0
            m = F.avg_pool3d(m0, factor) if factor > 1 else m0
            for _ in range(int(steps)):
                grid = F.affine_grid(theta, f.shape, align_corners=True)
                warped = grid_sample(m, grid, mode="bilinear", padding_mode="border", align_corners=True)
                loss = -global_ncc(warped, f).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                # every singular value lies within |A - I|_F of 1 (Weyl): the SVD is
                # needed only beyond that
                if inside is not None and float(torch.linalg.matrix_norm(theta.detach()[:, :, :3] - eye).max()) > inside:
                    with torch.no_grad():
                        theta[:, :, :3] = clamp_scales(theta[:, :, :3], *scale_bounds)
        return theta.detach()


def clamp_scales(linear: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """``(B, 3, 3)`` linear maps with their singular values clamped into ``[lo, hi]``
    (same singular vectors); a batch already inside the bounds is returned as it is."""
    u, sv, vh = torch.linalg.svd(linear)
    if bool(((sv >= lo) & (sv <= hi)).all()):
        return linear
    return u @ torch.diag_embed(sv.clamp(lo, hi)) @ vh


def voxel_matrix(theta: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """``(B, 3, 3)`` linear part, in voxels and array-axis order, of the map ``theta``."""
    s = normalised_scale(shape, theta.device).to(theta.dtype)
    a = theta[:, :, :3].flip(1).flip(2)  # xyz -> array-axis order
    return a * s.view(1, 1, 3) / s.view(1, 3, 1)


def prealign_field(method: str | None, fixed: torch.Tensor, moving: torch.Tensor, iterations=None):
    """``(field, matrix)`` of the pre-alignment ``method``, or ``None`` for no method.

    ``field`` ``(B, 3, D, H, W)`` is the pull field of the global map ``x -> x + field(x)``
    (voxels), ``matrix`` ``(B, 3, 3)`` its linear part. A residual field ``r`` predicted on
    ``warp(moving, field)`` composes with it exactly, with no interpolation: the total
    pull field is ``field + matrix @ r`` (the map is affine)."""
    if method is None:
        return None
    shape = tuple(fixed.shape[2:])
    b = fixed.shape[0]
    with torch.no_grad():
        if method == "centroid":
            t = centroid_shift(fixed, moving).to(fixed.dtype)
            eye = torch.eye(3, device=fixed.device, dtype=fixed.dtype).expand(b, 3, 3)
            return t[:, :, None, None, None].expand(-1, -1, *shape), eye
        if method == "affine":
            theta = fit_affine(fixed, moving) if iterations is None else fit_affine(fixed, moving, iterations=iterations)
            return affine_field(theta, shape).to(fixed.dtype), voxel_matrix(theta, shape).to(fixed.dtype)
    raise ValueError(f"prealign must be one of {METHODS}, got {method!r}")
