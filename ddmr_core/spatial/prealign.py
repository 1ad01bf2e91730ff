"""Initial global alignment before a network predicts the deformable residual.

The augmentation of the paper moves the whole head by up to 30 mm and 10 degrees about
each axis (section 2.2); a small network trained for minutes on a CPU learns that bulk
motion last and least precisely. ANTs and ITK start every registration from a global
initialisation (centre of mass, then an affine stage); :class:`RegistrationModel` can
do the same (``prealign=``):

* ``"centroid"``: translate the moving image so that its intensity centroid
  (:func:`~ddmr_core.spatial.fields.intensity_centroid`) lands on the fixed one's. No
  parameters.
* ``"affine"``: from that translation, fit a 12-parameter affine map maximising
  global NCC by Levenberg-Marquardt over a coarse-to-fine pyramid (:func:`fit_affine`).
  Affine, not rigid, because the model sees voxel arrays without their spacing: a rigid motion in
  millimetres is an affine map in voxels of an anisotropic grid.
* ``"affine_mi"``: the same 12 parameters without assuming that the two images share a
  contrast (a T2 or FLAIR scan against a T1 template, an inverted image):
  :func:`fit_affine_mi` first fits the images' foreground masks
  (:func:`foreground_mask`: what differs from the background, whatever its brightness)
  by the NCC fit above, then maximises the images' mutual information
  (:func:`ddmr_core.spatial.similarity.mutual_information`) from there.

Both return a pull field in voxels of the fixed grid (``(B, 3, D, H, W)``, array-axis
order, ``docs/ARCHITECTURE.md``, "Tensor conventions"), and are computed without gradient to the network: the
network sees ``warp(moving, prealignment)`` and predicts the residual.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .optim import Adam
from .similarity import mutual_information
from .fields import grid_sample, intensity_centroid
from .grids import from_normalised, identity_grid, normalised_scale

METHODS = (None, "centroid", "affine", "affine_mi")
#: foreground_mask: voxels further than this fraction of the robust intensity range
#: (the 100 - P to P percentiles) from the background level
FOREGROUND_FRACTION = 0.1
FOREGROUND_PERCENTILE = 99.5


def centroid_shift(fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
    """``(B, 3)`` voxel translation ``t`` with ``moving(x + t)`` centred like ``fixed``."""
    return intensity_centroid(moving) - intensity_centroid(fixed)


def affine_field(theta: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Pull field ``(B, 3, D, H, W)`` in voxels of the normalised-coordinate map ``theta``
    ``(B, 3, 4)`` (``F.affine_grid`` convention, ``align_corners=True``)."""
    grid = F.affine_grid(theta, (theta.shape[0], 1, *shape), align_corners=True)  # xyz, [-1, 1]
    return from_normalised(grid.movedim(-1, 1), shape) - identity_grid(shape, theta.device, theta.dtype)


def fit_affine(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    levels: Sequence[int] = (4, 2),
    iterations: Sequence[int] = (8, 3),
    damping: float = 1e-2,
    scale_bounds: tuple[float, float] | None = (2 / 3, 1.5),
) -> torch.Tensor:
    """Affine pre-alignment maximising global NCC by Levenberg-Marquardt, coarse to fine.

    The 12 parameters are those of ``theta`` (normalised coordinates, :func:`affine_field`).
    Global NCC is ``1 - |r|^2 / 2`` for the residual ``r = w' / |w'| - f' / |f'|`` between
    the centred warped moving image ``w'`` and the centred fixed ``f'``, so it is maximised
    as a least-squares problem: each iteration samples the moving image and the exact
    derivative of trilinear sampling with respect to the grid (one forward and backward
    pass of ``grid_sample``), forms the 12 x 12 Gauss-Newton system of ``r`` and takes the
    damped step ``(H + lambda diag H)^-1 J^T f' / |f'|``. A step that raises the NCC is
    kept and ``lambda`` divided by 10; one that does not is undone and ``lambda`` multiplied
    by 10 (per sample). The centroid start is taken on the finest pyramid level.

    Args:
        fixed, moving: ``(B, 1, D, H, W)`` images on one grid.
        levels: downsampling factor of each pyramid level (average pooling).
        iterations: Levenberg-Marquardt iterations at each level (each one sampling pass).
        damping: the initial ``lambda`` of every level.
        scale_bounds: ``(lo, hi)``: a step whose linear part has singular values (its
            scalings) outside ``[lo, hi]`` is clamped into them (:func:`clamp_scales`)
            before it is tried, or ``None`` for no bound. Global NCC can rise by squashing
            an axis flat (a constant image along it): on a whole-body CT pair an unbounded
            fit reached singular values (0.96, 0.96, 0.01). Fits inside the bound are
            unchanged by it.

    Returns:
        ``(B, 3, 4)`` ``theta`` (see :func:`affine_field`), started from the centroid
        translation. Each sample is fitted independently.
    """
    if len(levels) != len(iterations):
        raise ValueError("levels and iterations must have the same length")
    shape = fixed.shape[2:]
    with torch.inference_mode(False), torch.no_grad():
        # no copy of the full-resolution images: each level pools them into new tensors
        # (which autograd may save, inference-mode inputs may not), cloned only at factor 1
        f0, m0 = fixed.detach().float(), moving.detach().float()
        b = f0.shape[0]
        pyramid = {k: (F.avg_pool3d(f0, k), F.avg_pool3d(m0, k)) if k > 1 else (f0.clone(), m0.clone())
                   for k in sorted({int(k) for k in levels})}
        # the centroids on the finest level's grid (a start for the fit; pooling by k keeps
        # mass, and a shift of one pooled voxel is k voxels)
        k = min(pyramid)
        shift = k * centroid_shift(*pyramid[k]) * normalised_scale(shape, f0.device)  # normalised, array order
        theta = torch.zeros(b, 3, 4, device=f0.device)
        theta[:, :, :3] = torch.eye(3, device=f0.device)
        theta[:, :, 3] = shift.flip(-1)  # xyz
        eye = torch.eye(3, device=f0.device)
        inside = None if scale_bounds is None else min(1 - scale_bounds[0], scale_bounds[1] - 1)
        for factor, steps in zip(levels, iterations):
            if int(steps) <= 0:
                continue
            f, m = pyramid[int(factor)]
            f, coords = _level_inputs(f, m)
            ncc, grad, hess = _ncc_system(f, m, theta, coords)
            lam = torch.full((b,), float(damping), device=f0.device, dtype=torch.float64)
            for _ in range(int(steps)):
                trial = theta + _damped_step(hess, grad, lam).to(theta.dtype).view(b, 3, 4)
                # every singular value lies within |A - I|_F of 1 (Weyl): the SVD of
                # clamp_scales is needed only beyond that
                if inside is not None and float(torch.linalg.matrix_norm(trial[:, :, :3] - eye).max()) > inside:
                    trial[:, :, :3] = clamp_scales(trial[:, :, :3], *scale_bounds)
                t_ncc, t_grad, t_hess = _ncc_system(f, m, trial, coords)
                better = t_ncc > ncc
                theta = torch.where(better.view(b, 1, 1), trial, theta)
                ncc = torch.where(better, t_ncc, ncc)
                grad = torch.where(better.view(b, 1), t_grad, grad)
                hess = torch.where(better.view(b, 1, 1), t_hess, hess)
                lam = torch.where(better, lam / 10, lam * 10)
        return theta


def _level_inputs(f: torch.Tensor, m: torch.Tensor):
    """One pyramid level's constants for :func:`fit_affine`: the fixed image ``f``
    (``(B, 1, D, H, W)``) centred and scaled to unit norm, ``(B, N)``, and the homogeneous
    normalised xyz coordinates of the level's voxels, ``(N, 4)``."""
    f = f.flatten(1) - f.flatten(1).mean(1, keepdim=True)
    f = f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)
    ident = torch.eye(3, 4, device=f.device)[None]
    coords = F.affine_grid(ident, (1, 1, *m.shape[2:]), align_corners=True).reshape(-1, 3)
    return f, torch.cat([coords, torch.ones_like(coords[:, :1])], 1)


def _damped_step(hess: torch.Tensor, grad: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """The Levenberg-Marquardt step ``(H + lambda diag H)^-1 g`` per sample (``(B, 12, 12)``,
    ``(B, 12)``, ``(B,)``): ``(B, 12)``, zero where the system cannot be solved."""
    diag = torch.diagonal(hess, dim1=1, dim2=2)
    # the ridge keeps a degenerate system (a constant image: all zeros) solvable; its
    # gradient is zero too, so the step is zero
    ridge = 1e-12 * diag.mean(1, keepdim=True) + 1e-30
    step, failed = torch.linalg.solve_ex(hess + torch.diag_embed(lam[:, None] * diag + ridge), grad[..., None])
    return torch.where((failed != 0).view(-1, 1), 0.0, step[..., 0].nan_to_num(0.0, 0.0, 0.0))


def background_level(image: torch.Tensor) -> torch.Tensor:
    """``(B,)`` median intensity of the outermost voxel layer of ``(B, C, D, H, W)``: the
    background's level, dark (a T1 or T2 scan) or bright (an inverted image) alike."""
    faces = [image[:, :, i].flatten(1) for i in (0, -1)] + [image[:, :, :, i].flatten(1) for i in (0, -1)] \
        + [image[..., i].flatten(1) for i in (0, -1)]
    return torch.cat(faces, 1).median(1).values


def foreground_mask(image: torch.Tensor, fraction: float = FOREGROUND_FRACTION) -> torch.Tensor:
    """``(B, 1, D, H, W)`` 0/1 mask of the voxels of ``(B, 1, D, H, W)`` images that differ
    from the background (:func:`background_level`) by more than ``fraction`` of the robust
    intensity range (the ``100 - P`` to ``P`` percentiles, ``P`` =
    :data:`FOREGROUND_PERCENTILE`, per sample; a few hot voxels do not move it; the whole
    range when those percentiles meet, a small object on a flat background). Unlike a
    threshold above the minimum it does not depend on the contrast: an image and its
    inversion have the same mask. (:meth:`ddmr_core.data.preprocess.Preprocess.foreground`, the
    crop of images without label maps, is this mask.)"""
    x = image.detach().float()
    flat = x.flatten(1)
    if flat.shape[1] > 2 ** 20:  # a regular subsample of ~1M voxels gives the same percentiles,
        flat = flat[:, :: -(-flat.shape[1] // 2 ** 20)]  # and torch.quantile sorts (1 mm brain: 9M)
    p = FOREGROUND_PERCENTILE / 100.0
    q = torch.quantile(flat, torch.tensor([1.0 - p, p], device=flat.device), dim=1)
    rng = q[1] - q[0]
    if not bool((rng > 0).all()):  # the whole range only where it is needed: two passes over the subsample
        rng = torch.where(rng > 0, rng, flat.amax(1) - flat.amin(1))
    rng = rng.view(-1, 1, 1, 1, 1)
    bg = background_level(x).view(-1, 1, 1, 1, 1)
    return ((x - bg).abs() > fraction * rng).float()


def fit_affine_mi(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    levels: Sequence[int] = (4, 2),
    iterations: Sequence[int] = (20, 10),
    rates: Sequence[float] = (1e-2, 4e-3),
    bins: int = 32,
) -> torch.Tensor:
    """Affine pre-alignment that does not assume equal contrast: ``(B, 3, 4)`` ``theta``.

    1. The foreground masks (:func:`foreground_mask`, blurred over 3 voxels so the fit
       sees a smooth edge) are aligned by :func:`fit_affine` (global NCC of the masks,
       Levenberg-Marquardt from their centroids): the outline of the head or brain, which
       no contrast changes.
    2. From there, Adam steps on ``theta`` maximise the mutual information of the images
       (:func:`~ddmr_core.spatial.similarity.mutual_information`, ``bins`` bins) at each pyramid
       level (``levels``: average-pooling factors, ``iterations`` steps at learning rate
       ``rates`` each): the inside of the outline.

    On the 64^3 brain template moved by up to 10 degrees and 16 voxels, with the moving
    image's contrast inverted, step 1 leaves ~0.5 voxel of mean error over the brain and
    step 2 ~0.25, as close as :func:`fit_affine` gets on a same-contrast pair (tested in
    ``tests/core/test_prealign.py``).

    Args:
        fixed, moving: ``(B, 1, D, H, W)`` images on one grid, intensities in [0, 1].
    """
    if not len(levels) == len(iterations) == len(rates):
        raise ValueError("levels, iterations and rates must have the same length")
    with torch.inference_mode(False), torch.no_grad():
        f0, m0 = fixed.detach().float().clone(), moving.detach().float().clone()
        masks = [F.avg_pool3d(foreground_mask(x), 3, stride=1, padding=1) for x in (f0, m0)]
        theta = fit_affine(*masks).float()
    for factor, steps, rate in zip(levels, iterations, rates):
        if int(steps) <= 0:
            continue
        with torch.inference_mode(False), torch.enable_grad():
            f = F.avg_pool3d(f0, int(factor)) if factor > 1 else f0
            m = F.avg_pool3d(m0, int(factor)) if factor > 1 else m0
            theta = theta.detach().clone().requires_grad_(True)
            opt = Adam([theta], lr=float(rate))
            for _ in range(int(steps)):
                grid = F.affine_grid(theta, (theta.shape[0], 1, *m.shape[2:]), align_corners=True)
                warped = grid_sample(m, grid, mode="bilinear", padding_mode="border", align_corners=True)
                loss = -mutual_information(warped, f, bins).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        theta = theta.detach()
    return theta


def _ncc_system(f: torch.Tensor, m: torch.Tensor, theta: torch.Tensor, coords: torch.Tensor):
    """Global NCC of ``warp(m, theta)`` with ``f`` (``(B, N)``, centred, unit norm) and its
    Gauss-Newton gradient ``(B, 12)`` and matrix ``(B, 12, 12)`` (float64) in ``theta``.

    With ``J`` the ``(N, 12)`` derivative of the warped image, ``w_hat`` the centred warped
    image over its norm ``n`` and ``a = J^T w_hat``, the residual's Jacobian is
    ``(C J - w_hat a^T) / n`` (``C`` centres over the voxels), whose normal matrix is
    ``(J^T J - N mu mu^T - a a^T) / n^2`` (``mu`` the mean row of ``J``) and whose product
    with ``f`` is ``(J^T f - a (w_hat . f)) / n``: ``J`` is formed once and never centred
    or projected voxel by voxel."""
    b = theta.shape[0]
    with torch.enable_grad():
        grid = F.affine_grid(theta, (b, 1, *m.shape[2:]), align_corners=True).requires_grad_(True)
        warped = grid_sample(m, grid, mode="bilinear", padding_mode="border", align_corners=True)
        # each voxel's sample depends on its own grid point only: the gradient of the sum
        # is every voxel's derivative with respect to its sampling position
        (dgrid,) = torch.autograd.grad(warped.sum(), grid)
    w = warped.detach().flatten(1)
    w = w - w.mean(1, keepdim=True)
    norm = w.norm(dim=1).clamp_min(1e-12)
    w_hat = w / norm[:, None]
    # d warped / d theta[i, j] = dgrid_i * coords_j
    jac = (dgrid.reshape(b, -1, 3, 1) * coords[None, :, None, :]).reshape(b, -1, 12)
    n = jac.shape[1]
    proj = torch.bmm(torch.stack([f, w_hat, torch.full_like(f, 1.0 / n)], 2).transpose(1, 2), jac).double()
    jf, a, mu = proj[:, 0], proj[:, 1], proj[:, 2]  # J^T f, J^T w_hat, mean row of J
    ncc = (w_hat * f).sum(1).double()
    nd = norm.double()
    grad = (jf - a * ncc[:, None]) / nd[:, None]
    jtj = torch.bmm(jac.transpose(1, 2), jac).double()
    hess = (jtj - n * mu[:, :, None] * mu[:, None, :] - a[:, :, None] * a[:, None, :]) / (nd * nd)[:, None, None]
    return ncc, grad, hess


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
        if method in ("affine", "affine_mi"):
            fit = fit_affine if method == "affine" else fit_affine_mi
            theta = fit(fixed, moving) if iterations is None else fit(fixed, moving, iterations=iterations)
            return affine_field(theta, shape).to(fixed.dtype), voxel_matrix(theta, shape).to(fixed.dtype)
    raise ValueError(f"prealign must be one of {METHODS}, got {method!r}")
