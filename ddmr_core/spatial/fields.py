"""Fields shared by every part: warping, sampling, resizing, composing fields, Jacobians
(fields between grids, through world coordinates: :mod:`ddmr_core.spatial.regrid`; the
grids and affines they use: :mod:`ddmr_core.spatial.grids`).

Conventions (``docs/ARCHITECTURE.md``, "Tensor conventions"):

* images ``(B, C, D, H, W)``; displacement fields ``(B, 3, D, H, W)`` float32 in **voxel
  units of the fixed grid**, component ``i`` along array axis ``i``;
* pull (backward) mapping: ``warped(x) = moving(x + u(x))`` for every voxel ``x`` of the
  fixed grid -- the convention of voxelmorph and MONAI's ``Warp`` (``align_corners=True``
  sampling, voxel centres at integer coordinates);
* resizing keeps the physical field of view (voxel centres of the new grid sit at
  ``(j + 0.5) * N_old / N_new - 0.5`` of the old one, ``align_corners=False``), so a
  field's vectors scale by ``N_new / N_old`` per axis, and the affine changes as
  :func:`resize_affine` says;
* affines are ``(4, 4)`` voxel -> RAS millimetre maps (nibabel's), applied to points
  ``(3, ...)`` in array-axis order by :func:`apply_affine`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .grids import _sampling_grid, identity_grid, to_normalised

_MODES = {"linear": "bilinear", "bilinear": "bilinear", "trilinear": "bilinear", "nearest": "nearest"}
_PADDINGS = ("zeros", "border", "reflection")


def _check_field(disp: torch.Tensor, name: str = "disp") -> None:
    if disp.dim() != 5 or disp.shape[1] != 3:
        raise ValueError(f"{name} must have shape (B, 3, D, H, W), got {tuple(disp.shape)}")


def warp(
    image: torch.Tensor, disp: torch.Tensor, mode: str = "linear", padding: str = "zeros"
) -> torch.Tensor:
    """Warp ``image`` with the pull field ``disp``: ``out(x) = image(x + disp(x))``.

    Args:
        image: ``(B, C, D, H, W)``; integer label maps are sampled as float and cast back.
        disp: ``(B, 3, D, H, W)`` voxel displacements on the image's grid (``B`` may be 1
            to share one field across the batch).
        mode: ``"linear"`` (trilinear, differentiable) or ``"nearest"``.
        padding: ``"zeros"``, ``"border"`` or ``"reflection"`` outside the image.

    Returns:
        ``(B, C, D, H, W)`` tensor of the image's dtype.
    """
    _check_field(disp)
    if image.dim() != 5:
        raise ValueError(f"image must have shape (B, C, D, H, W), got {tuple(image.shape)}")
    if tuple(image.shape[2:]) != tuple(disp.shape[2:]):
        raise ValueError(
            f"image grid {tuple(image.shape[2:])} and field grid {tuple(disp.shape[2:])} differ"
        )
    return warp_with_grid(image, sampling_grid(disp), mode, padding)


def sampling_grid(disp: torch.Tensor) -> torch.Tensor:
    """The ``grid_sample`` grid ``(B, D, H, W, 3)`` that :func:`warp` samples with for the
    pull field ``disp (B, 3, D, H, W)``: ``x + disp(x)`` normalised to [-1, 1]
    (``align_corners=True``), xyz last (its x is the last array axis); a view of a
    channels-first tensor.

    With :func:`warp_with_grid`, several images warped by one field share it."""
    _check_field(disp)
    dtype = disp.dtype if disp.is_floating_point() else torch.float32
    base, scale = _sampling_grid(tuple(disp.shape[2:]), disp.device, dtype)
    # One fused pass (plus the channel flip) over the field, channels first; the xyz-last
    # layout grid_sample wants is a permuted view, which it reads as fast as a contiguous
    # grid (on the CPU far cheaper than a (N, 3) @ (3, 3) matmul building it).
    return torch.addcmul(base, disp.to(dtype).flip(1), scale).permute(0, 2, 3, 4, 1)


def warp_with_grid(
    image: torch.Tensor, grid: torch.Tensor, mode: str = "linear", padding: str = "zeros"
) -> torch.Tensor:
    """:func:`warp` with the grid of :func:`sampling_grid` (``grid``'s batch may be 1)."""
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {sorted(_MODES)}, got {mode!r}")
    if padding not in _PADDINGS:
        raise ValueError(f"padding must be one of {_PADDINGS}, got {padding!r}")
    if tuple(image.shape[2:]) != tuple(grid.shape[1:4]):
        raise ValueError(f"image grid {tuple(image.shape[2:])} and sampling grid {tuple(grid.shape[1:4])} differ")
    out_dtype = image.dtype
    src = image if image.is_floating_point() else image.float()
    if grid.shape[0] != src.shape[0]:
        grid = grid.expand(src.shape[0], *grid.shape[1:])
    out = grid_sample(src.to(grid.dtype), grid, mode=_MODES[mode], padding_mode=padding, align_corners=True)
    if not image.is_floating_point():
        out = out.round().to(out_dtype)
    else:
        out = out.to(out_dtype)
    return out


def grid_sample(volume: torch.Tensor, grid: torch.Tensor, mode: str = "bilinear", padding_mode: str = "zeros",
                align_corners: bool = True) -> torch.Tensor:
    """``F.grid_sample`` for volumes (``(B, C, D, H, W)``, grid ``(B, d, h, w, 3)``) that
    uses the CPU's threads for a batch of one.

    PyTorch's CPU kernel for 3-D sampling parallelises over the batch only, so a single
    pair (the paper trains with batch 1; every registration is one pair) ran on one core.
    On the CPU with ``B == 1``, the grid is cut along ``d`` into ``k`` slabs (``k`` the
    largest divisor of ``d`` up to the thread count, at most 8) sampled as a batch of
    ``k`` from the same, expanded (not copied) volume: the result and its gradients are
    identical (``benchmarks/cpu_kernels.py`` times it against ``F.grid_sample``).
    """
    b, d = grid.shape[0], grid.shape[1]
    k = 1
    if volume.device.type == "cpu" and volume.shape[0] == 1 and b == 1:
        k = next(j for j in range(min(torch.get_num_threads(), 8, d), 0, -1) if d % j == 0)
    if k == 1:
        return F.grid_sample(volume, grid, mode=mode, padding_mode=padding_mode, align_corners=align_corners)
    out = F.grid_sample(volume.expand(k, *volume.shape[1:]), grid.reshape(k, d // k, *grid.shape[2:]),
                        mode=mode, padding_mode=padding_mode, align_corners=align_corners)
    return out.transpose(0, 1).reshape(1, volume.shape[1], d, *out.shape[3:])


def sample_at(volume: torch.Tensor, coords: torch.Tensor, mode: str = "linear", padding: str = "zeros") -> torch.Tensor:
    """Sample ``volume (B, C, *S)`` at voxel coordinates ``coords (B or 1, 3, *T)`` (array
    order, voxel centres at integers, as in :func:`warp`) -> ``(B, C, *T)``.

    Computed in ``coords``' (floating) dtype; integer volumes are sampled as float,
    rounded and cast back. ``mode``/``padding`` as in :func:`warp`."""
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {sorted(_MODES)}, got {mode!r}")
    if padding not in _PADDINGS:
        raise ValueError(f"padding must be one of {_PADDINGS}, got {padding!r}")
    shape = volume.shape[2:]
    grid = to_normalised(coords, shape).movedim(1, -1)
    if grid.shape[0] != volume.shape[0]:
        grid = grid.expand(volume.shape[0], *grid.shape[1:])
    src = volume if volume.is_floating_point() else volume.float()
    out = grid_sample(src.to(coords.dtype), grid, mode=_MODES[mode], padding_mode=padding, align_corners=True)
    return out.round().to(volume.dtype) if not volume.is_floating_point() else out.to(volume.dtype)


def sample_linear_border(volume: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Trilinear samples of ``volume (B, C, D, H, W)`` at voxel coordinates ``coords (B or
    1, 3, N)`` (array order, voxel centres at integers, clamped to the grid: border
    padding) -> ``(B, C, N)``; differentiable with respect to ``coords`` (and ``volume``).

    The same values and coordinate gradients as :func:`sample_at` with ``padding="border"``
    (``F.grid_sample``), computed as eight gathers from the flattened volume and seven
    lerps. For the instance optimisation's scattered sub-lattices (a few 10^5 points per
    step, forward and backward) this is 2-3x faster than PyTorch's 3-D CPU sampling
    kernel, which is not vectorised (``benchmarks/cpu_kernels.py``); for whole grids,
    whose points are sampled in order, ``grid_sample`` stays faster."""
    b = volume.shape[0]
    if coords.shape[0] not in (1, b):
        raise ValueError(f"coords' batch {coords.shape[0]} does not match the volume's {b}")
    if coords.shape[0] != b:
        coords = coords.expand(b, *coords.shape[1:])
    shape = volume.shape[2:]
    # the last node each axis may start a cell from (0 for an axis of one voxel)
    hi = torch.tensor([max(int(n) - 1, 0) for n in shape], device=coords.device, dtype=coords.dtype)
    z = torch.minimum(coords.clamp_min(0), hi.view(1, 3, 1))
    i0 = torch.minimum(z.detach().floor(), (hi - 1).clamp_min(0).view(1, 3, 1))
    frac = z - i0  # in [0, 1]; 0 on an axis of one voxel, whose second tap repeats the first
    i0 = i0.long()
    strides = [int(shape[1]) * int(shape[2]), int(shape[2]), 1]
    steps = [s if int(n) > 1 else 0 for s, n in zip(strides, shape)]
    base = i0[:, 0] * strides[0] + i0[:, 1] * strides[1] + i0[:, 2]  # (B, N)
    out = []
    for k in range(b):
        flat = volume[k].reshape(volume.shape[1], -1)
        at = lambda offset: flat.index_select(1, base[k] + offset if offset else base[k])  # noqa: E731
        fd, fh, fw = frac[k, 0], frac[k, 1], frac[k, 2]
        sd, sh, sw = steps
        # along the last axis, then the middle, then the first
        c00 = torch.lerp(at(0), at(sw), fw)
        c01 = torch.lerp(at(sh), at(sh + sw), fw)
        c10 = torch.lerp(at(sd), at(sd + sw), fw)
        c11 = torch.lerp(at(sd + sh), at(sd + sh + sw), fw)
        out.append(torch.lerp(torch.lerp(c00, c01, fh), torch.lerp(c10, c11, fh), fd))
    return torch.stack(out)


def resize_image(image: torch.Tensor, size: Sequence[int], mode: str = "linear") -> torch.Tensor:
    """Resize ``(B, C, D, H, W)`` to ``size`` keeping the field of view.

    ``mode="nearest"`` is for label maps (integer dtypes are kept)."""
    size = tuple(int(s) for s in size)
    if tuple(image.shape[2:]) == size:
        return image
    if mode == "nearest":
        src = image if image.is_floating_point() else image.float()
        out = F.interpolate(src, size=size, mode="nearest-exact")
        return out.to(image.dtype)
    return F.interpolate(image, size=size, mode="trilinear", align_corners=False)


def resize_field(disp: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize a voxel field to ``size``, rescaling component ``i`` by ``size[i] / D_i``."""
    _check_field(disp)
    size = tuple(int(s) for s in size)
    old = disp.shape[2:]
    if tuple(old) == size:
        return disp
    out = F.interpolate(disp, size=size, mode="trilinear", align_corners=False)
    ratio = torch.tensor([n / o for n, o in zip(size, old)], device=disp.device, dtype=disp.dtype)
    return out * ratio.view(1, 3, 1, 1, 1)


def compose(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """The single field equal to warping with ``first`` and then with ``second``.

    ``warp(warp(m, first), second)(x) = m(x + second(x) + first(x + second(x)))``, so
    the result is ``second + warp(first, second)`` (linear interpolation, border padding).
    """
    _check_field(first, "first")
    _check_field(second, "second")
    return second + warp(first, second, mode="linear", padding="border")


def invert(disp: torch.Tensor, iterations: int = 5, guess: torch.Tensor | None = None) -> torch.Tensor:
    """Pull field ``w`` of the inverse of ``x -> x + disp(x)``, by the fixed-point
    iteration ``w <- -disp(x + w)`` (linear sampling, border padding).

    It converges at the rate ``max |grad disp|`` (< 1 for a smooth field that does not
    fold). ``guess``: where to start (an estimate of the inverse, e.g. a network's field
    for the reverse pair); ``None``: ``-disp``. ``iterations = 0`` returns the start.

    Args:
        disp: ``(B, 3, D, H, W)`` voxels. guess: ``(B, 3, D, H, W)`` voxels, or None.

    Returns:
        ``(B, 3, D, H, W)`` voxels, so that ``compose(disp, w)`` and ``compose(w, disp)``
        are about zero.
    """
    _check_field(disp)
    w = -disp if guess is None else guess
    for _ in range(iterations):
        w = -warp(disp, w, mode="linear", padding="border")
    return w


def compose_affine(field: torch.Tensor, matrix: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """Exact composition of an affine pull field with a residual predicted after it.

    ``field`` ``(B, 3, D, H, W)`` is the pull field of an affine map with linear part
    ``matrix`` ``(B, 3, 3)`` (voxels, array-axis order), and ``residual`` the pull field
    found on ``warp(moving, field)``. Warping with ``field`` then ``residual`` samples
    ``moving(x + r + field(x + r))``, and ``field(x + r) = field(x) + (matrix - I) r``, so
    the single field is ``field + matrix @ r``: no interpolation, unlike :func:`compose`.
    """
    _check_field(field, "field")
    _check_field(residual, "residual")
    return field + torch.einsum("bij,bj...->bi...", matrix.to(residual.dtype), residual)


def jacobian_determinant(disp: torch.Tensor) -> torch.Tensor:
    """Determinant of the Jacobian of ``x -> x + u(x)``, ``(B, D, H, W)``.

    Central differences inside, one-sided at the borders (``torch.gradient``), so an
    affine field gives the determinant of its matrix exactly, everywhere."""
    _check_field(disp)
    grads = [torch.gradient(disp[:, i], dim=(1, 2, 3)) for i in range(3)]
    # J[i][j] = d(x_i + u_i)/d x_j
    J = [[grads[i][j] + (1.0 if i == j else 0.0) for j in range(3)] for i in range(3)]
    return (
        J[0][0] * (J[1][1] * J[2][2] - J[1][2] * J[2][1])
        - J[0][1] * (J[1][0] * J[2][2] - J[1][2] * J[2][0])
        + J[0][2] * (J[1][0] * J[2][1] - J[1][1] * J[2][0])
    )


def folding_percentage(jacobian) -> float:
    """Percentage (0-100) of voxels whose Jacobian determinant (:func:`jacobian_determinant`)
    is not positive: where the map folds (the ``folding`` metric, ``ddmr jacobian``)."""
    jac = jacobian.detach().cpu().numpy() if hasattr(jacobian, "detach") else np.asarray(jacobian)
    return float(100.0 * np.mean(jac <= 0)) if jac.size else float("nan")


def field_folding_percentage(disp: torch.Tensor, rows: int = 16) -> float:
    """``folding_percentage(jacobian_determinant(disp))`` of a ``(1, 3, D, H, W)`` field,
    in slabs of ``rows`` planes along axis 0 (each with its neighbour planes, so the
    central differences are the same): the memory of a few planes instead of the nine
    full-size derivative volumes (1 GB at 1 mm)."""
    _check_field(disp)
    n, folded, total = disp.shape[2], 0, 0
    for a in range(0, n, rows):
        b = min(n, a + rows)
        lo, hi = max(0, a - 1), min(n, b + 1)
        jac = jacobian_determinant(disp[:, :, lo:hi])[:, a - lo:b - lo]
        folded += int((jac <= 0).sum())
        total += jac.numel()
    return float(100.0 * folded / total) if total else float("nan")


def one_hot(labels: torch.Tensor, values: Sequence[int]) -> torch.Tensor:
    """Label map ``(B, 1, D, H, W)`` -> one-hot float ``(B, L, D, H, W)`` over ``values``
    (the foreground labels; background is left out)."""
    if labels.dim() != 5 or labels.shape[1] != 1:
        raise ValueError(f"label map must have shape (B, 1, D, H, W), got {tuple(labels.shape)}")
    vals = torch.as_tensor(list(values), device=labels.device).view(1, -1, 1, 1, 1)
    return (labels.long() == vals.long()).float()


def labels_from_one_hot(onehot: torch.Tensor, values: Sequence[int], threshold: float = 0.5) -> torch.Tensor:
    """One-hot ``(B, L, ...)`` -> label map ``(B, 1, ...)`` (uint8), background where all < threshold."""
    vals = torch.as_tensor([0] + list(values), device=onehot.device)
    bg = torch.full_like(onehot[:, :1], threshold)
    idx = torch.cat([bg, onehot], dim=1).argmax(dim=1, keepdim=True)
    return vals[idx].to(torch.uint8)


def intensity_centroid(image: torch.Tensor, background_quantile: float = 0.1) -> torch.Tensor:
    """Intensity-weighted centre of mass of each image, in voxel coordinates.

    Args:
        image: ``(B, 1, D, H, W)``.
        background_quantile: intensities up to this quantile of each image count as
            background and weigh 0; above it a voxel weighs ``I - q``. This keeps an
            additive brightness shift (which lifts the background) from pulling the
            centroid towards the middle of the grid.

    Returns:
        ``(B, 3)`` float: the centroid's index along each array axis. An image with no
        voxel above the quantile (constant) gets the grid centre.
    """
    if image.ndim != 5 or image.shape[1] != 1:
        raise ValueError(f"image must be (B, 1, D, H, W), got {tuple(image.shape)}")
    b = image.shape[0]
    flat = image.detach().reshape(b, -1).float()
    # kthvalue: torch.quantile refuses inputs above 16 M elements (a 256^3 image)
    k = max(1, int(round(background_quantile * flat.shape[1])))
    q = flat.kthvalue(k, dim=1).values
    w = (image.detach().float() - q.view(b, 1, 1, 1, 1)).clamp_min(0)[:, 0]
    total = w.reshape(b, -1).sum(dim=1)
    grid = identity_grid(image.shape[2:], image.device, torch.float32)[0]  # (3, D, H, W)
    centre = torch.tensor([(n - 1) / 2 for n in image.shape[2:]], device=image.device)
    num = torch.einsum("bdhw,cdhw->bc", w, grid)
    safe = total.clamp_min(torch.finfo(torch.float32).tiny)
    return torch.where((total > 0)[:, None], num / safe[:, None], centre.expand(b, 3))
