"""Grids and affine maps in voxel coordinates, shared by every part: voxel and identity
grids, the voxel <-> normalised coordinates of ``grid_sample`` (:func:`to_normalised`,
:func:`from_normalised`), lattices spanning a grid, resizing matrices, and affine maps as
voxel displacement fields.

Conventions (``docs/ARCHITECTURE.md``, "Tensor conventions"): coordinates are ``(B, 3,
...)`` in array-axis order with voxel centres at integers; ``grid_sample``'s normalised
coordinates are xyz order (reversed), ``align_corners=True``; affines are ``(4, 4)`` voxel
-> RAS millimetre maps (nibabel's), applied to points ``(3, ...)`` by :func:`apply_affine`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np
import torch


def _cached(fn):
    """``lru_cache`` for tensor builders: the tensors are made outside inference mode, so
    a grid first built under ``torch.inference_mode()`` (evaluation) can still take part
    in autograd later (training, or the instance optimisation run during inference)."""

    @lru_cache(maxsize=32)
    def build(*args):
        with torch.inference_mode(False):
            return fn(*args)

    return build


def voxel_grid(shape: Sequence[int], device=None, dtype=torch.float32, start: Sequence[int] = (0, 0, 0)) -> torch.Tensor:
    """Voxel coordinates ``(3, *shape)``: channel ``i`` holds ``start[i]`` plus the index
    along axis ``i`` (``start``: where a slab of a larger grid begins). A new tensor; the
    full grid from the origin is :func:`identity_grid` (cached, shared)."""
    axes = [torch.arange(int(a), int(a) + int(n), device=device, dtype=dtype) for a, n in zip(start, shape)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0)


@_cached
def _base_grid(shape: tuple, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # cached: building the identity grid is a noticeable share of a warp
    return voxel_grid(shape, device, dtype).unsqueeze(0)


def normalised_scale(shape: Sequence[int], device=None, dtype=torch.float32) -> torch.Tensor:
    """``(3,)``, array order: voxel index ``i`` along axis ``k`` is ``scale[k] * i - 1`` in
    ``grid_sample``'s normalised coordinates (``align_corners=True``)."""
    return torch.tensor([2.0 / max(int(n) - 1, 1) for n in shape], device=device, dtype=dtype)


def to_normalised(coords: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Voxel coordinates ``(B, 3, ...)`` (array order, voxel centres at integers) of a grid
    ``shape`` -> ``grid_sample``'s normalised coordinates ``(B, 3, ...)``, **xyz order**
    (its x is the last array axis), ``align_corners=True``: ``2 i / (n - 1) - 1`` per axis.
    The one place this formula lives; computed in ``coords``' dtype."""
    view = (1, 3) + (1,) * (coords.dim() - 2)
    scale = normalised_scale(shape, coords.device, coords.dtype)
    return (coords * scale.view(view) - 1.0).flip(1)


def from_normalised(grid: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """The inverse of :func:`to_normalised`: normalised coordinates ``(B, 3, ...)`` in xyz
    order -> voxel coordinates ``(B, 3, ...)`` in array order of the grid ``shape``."""
    view = (1, 3) + (1,) * (grid.dim() - 2)
    return (grid.flip(1) + 1.0) / normalised_scale(shape, grid.device, grid.dtype).view(view)


@_cached
def _sampling_grid(shape: tuple, device: torch.device, dtype: torch.dtype) -> tuple:
    """``(base, scale)``, both ``(1, 3, ...)`` with the channels in xyz order (reversed:
    grid_sample's x is the last array axis): ``base + disp.flip(1) * scale`` is the
    sampling grid of ``grid_sample``, channels first -- voxel coordinates normalised to
    [-1, 1] (``align_corners=True``)."""
    scale = normalised_scale(shape, device, dtype).view(1, 3, 1, 1, 1)
    return to_normalised(_base_grid(shape, device, dtype), shape).contiguous(), scale.flip(1).contiguous()


def identity_grid(shape: Sequence[int], device=None, dtype=torch.float32) -> torch.Tensor:
    """Voxel coordinates ``(1, 3, D, H, W)``: channel ``i`` holds the index along axis ``i``.

    Cached and shared between callers: never modify it in place (:func:`voxel_grid`
    builds a new one)."""
    return _base_grid(tuple(int(s) for s in shape), torch.device(device or "cpu"), dtype)


def linear_weights(x: torch.Tensor, m: int) -> torch.Tensor:
    """``(n, m)`` float64 two-tap linear interpolation weights of the positions ``x (n,)``
    (node units, clamped to ``[0, m - 1]``) on an axis of ``m`` nodes: row ``i`` times the
    node values is the linear interpolant at ``x[i]``."""
    x = x.double().clamp(0, max(m - 1, 0))
    i0 = x.floor().long().clamp(max=max(m - 2, 0))
    frac = x - i0
    rows = torch.arange(len(x))
    w = torch.zeros(len(x), m, dtype=torch.float64)
    w[rows, i0] += 1 - frac
    if m > 1:
        w[rows, i0 + 1] += frac
    return w


@_cached
def _lerp_matrix(n: int, m: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``(n, m)``: linear interpolation from ``m`` nodes spanning ``[0, n - 1]`` (first to
    last voxel) to the ``n`` voxels, as ``F.interpolate(..., align_corners=True)`` does."""
    pos = torch.arange(n, dtype=torch.float64) * ((m - 1) / max(n - 1, 1))
    return linear_weights(pos, m).to(device=device, dtype=dtype)


def upsample_lattice(field: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Trilinear upsampling ``(B, C, l0, l1, l2) -> (B, C, *shape)`` from a lattice whose
    nodes span the grid from its first to its last voxel along every axis
    (``F.interpolate(field, shape, mode="trilinear", align_corners=True)``, to float
    rounding). Values are not rescaled: a displacement field on such a lattice holds
    voxels of the full grid.

    Done as three matmuls with the (two-tap) interpolation matrix of each axis, faster
    than ``F.interpolate`` on the CPU. Trilinear interpolation reproduces affine functions
    exactly, and it is linear."""
    shape = tuple(int(s) for s in shape)
    lat = tuple(field.shape[2:])
    if lat == shape:
        return field
    if len(lat) != 3 or any(m > n for m, n in zip(lat, shape)):
        raise ValueError(f"cannot upsample a lattice of shape {lat} to the grid {shape}")
    B, C = field.shape[:2]
    M0, M1, M2 = (_lerp_matrix(n, m, field.device, field.dtype) for n, m in zip(shape, lat))
    x = torch.matmul(field, M2.T)  # (B, C, l0, l1, W)
    x = torch.matmul(M1, x)  # (B, C, l0, H, W)
    return torch.matmul(M0, x.reshape(B, C, lat[0], -1)).view(B, C, *shape)


def resize_matrix(old_shape: Sequence[int], new_shape: Sequence[int]) -> np.ndarray:
    """``(4, 4)`` map from voxels of a grid resized from ``old_shape`` to ``new_shape``
    (field of view kept) to voxels of the old grid: new voxel ``j`` sits at old voxel
    ``(j + 0.5) * r - 0.5``, ``r = old / new``."""
    r = np.asarray(old_shape, dtype=float) / np.asarray(new_shape, dtype=float)
    m = np.eye(4)
    m[:3, :3] = np.diag(r)
    m[:3, 3] = (r - 1.0) / 2.0
    return m


def resize_affine(affine: np.ndarray, old_shape: Sequence[int], new_shape: Sequence[int]) -> np.ndarray:
    """Voxel-to-world affine of a grid resized from ``old_shape`` to ``new_shape``
    (``affine @`` :func:`resize_matrix`)."""
    return np.asarray(affine, dtype=float) @ resize_matrix(old_shape, new_shape)


def apply_affine(matrix, points: torch.Tensor) -> torch.Tensor:
    """Points ``(3, ...)`` (array-axis order) mapped by the homogeneous ``(4, 4)`` matrix
    ``matrix`` (NumPy or tensor; e.g. voxel -> RAS mm, or voxels of one grid -> voxels of
    another), computed in the points' dtype and device. Returns ``(3, ...)``."""
    m = torch.as_tensor(np.asarray(matrix, dtype=np.float64) if not torch.is_tensor(matrix) else matrix,
                        dtype=points.dtype, device=points.device)
    flat = points.reshape(3, -1)
    return (m[:3, :3] @ flat + m[:3, 3:]).reshape(points.shape)


def voxel_affine(matrix: torch.Tensor, offset: torch.Tensor, spacing: torch.Tensor):
    """``(A (B, 3, 3), b (B, 3))`` float64 with ``u(x) = A x + b`` the pull field in voxels
    of the map ``p -> matrix @ p + offset`` (mm; voxel ``x`` sits at ``p = S x``,
    ``S = diag(spacing)``): ``A = S^-1 matrix S - I``, ``b = S^-1 offset``."""
    sp = spacing.double()
    m = matrix.double()
    A = m * sp[:, None, :] / sp[:, :, None] - torch.eye(3, dtype=torch.float64, device=m.device)
    return A, offset.double() / sp


def affine_displacement(A: torch.Tensor, b: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """``A x + b`` at voxel coordinates ``points (B or 1, 3, ...)`` -> ``(B, 3, ...)`` in
    ``points``' dtype: one batched matmul."""
    B, shape = A.shape[0], points.shape[2:]
    p = points.reshape(points.shape[0], 3, -1).expand(B, -1, -1)
    A, b = A.to(points.dtype), b.to(points.dtype)
    return torch.baddbmm(b.unsqueeze(-1), A, p).view(B, 3, *shape)
