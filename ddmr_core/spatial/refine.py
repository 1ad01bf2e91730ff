"""Instance optimisation: a few gradient steps on the predicted field at inference.

A network trained for minutes on a CPU (the demo) predicts a field that is right in
bulk but not to the voxel. :func:`refine_field` polishes it for the one pair at hand,
the way ANTs optimises every pair, but starting from the prediction and for a fixed,
small number of Adam steps, so it keeps most of a network's speed advantage. It
optimises a correction ``c`` on a coarse grid (smooth, and cheap), added to the field::

    disp' = disp + resize_field(c)
    maximise  NCC(warp(N(moving), disp'), N(fixed)) - smoothness * mean |grad c|^2

with global NCC per sample of locally normalised images ``N(I) = (I - mean_w(I)) /
(std_w(I) + 0.05)`` (box window ``w``, computed once per pair): almost what local NCC
measures, at the cost of global NCC, since only the warp runs in the loop. Used by
:class:`~ddmr_core.model.registration_model.RegistrationModel` when ``refine_iterations > 0`` and the
model is in evaluation mode; training never refines (the network must learn).
"""

from __future__ import annotations

import itertools
import math

import torch

from .optim import Adam
from .similarity import box_mean, global_ncc
from .fields import resize_field, sample_linear_border
from .grids import linear_weights


def local_normalise(image: torch.Tensor, window: int, eps: float = 0.05) -> torch.Tensor:
    """``(I - mean) / (std + eps)`` over a ``window``-voxel box around each voxel, channel by
    channel (``(B, C, D, H, W)``; the box is clipped at the borders). ``eps`` (intensity
    units of [0, 1] images) keeps flat background from being amplified into noise."""
    c = image.shape[1]
    # both moments in one filtering pass, the box clipped at the borders
    stats = box_mean(torch.cat([image, image * image], 1), window, clip=True)
    mean, mean_sq = stats[:, :c], stats[:, c:]
    return (image - mean) / ((mean_sq - mean * mean).clamp_min(0).sqrt() + eps)


def sub_lattice_stride(shape, step_voxels: int) -> int:
    """The stride ``k`` (every ``k``-th voxel per axis) whose sub-lattice of a ``shape`` grid
    holds about ``step_voxels`` voxels: ``(voxels / step_voxels)^(1/3)`` rounded to the
    nearest integer, at least 1. Rounded rather than raised: too sparse a sub-lattice
    gives the correction too few samples per node, so a grid a little over
    ``3^3 * step_voxels`` (the paper's 182 x 218 x 182) keeps stride 3 at a little more
    than ``step_voxels`` per step."""
    ratio = math.prod(int(n) for n in shape) / float(step_voxels)
    return max(1, math.floor(ratio ** (1.0 / 3.0) + 0.5))


def refine_field(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    disp: torch.Tensor,
    iterations: int = 20,
    lr: float = 0.2,
    smoothness: float = 0.1,
    factor: int = 2,
    window: int = 5,
    step_voxels: int = 64**3,
    nodes: int | None = None,
    anneal: bool = False,
) -> torch.Tensor:
    """Refine the pull field ``disp`` of ``(fixed, moving)`` by instance optimisation.

    Args:
        fixed, moving: ``(B, C, D, H, W)`` images on one grid; with ``C > 1`` the NCC
            pools the channels (channel ``c`` of ``moving`` warped against channel ``c`` of
            ``fixed``: :func:`~ddmr_core.spatial.contrast.refine_across_contrasts`).
        disp: ``(B, 3, D, H, W)`` initial pull field, voxels of the fixed grid.
        iterations: Adam steps (0 returns ``disp`` unchanged).
        lr: Adam step, voxels of the coarse grid.
        smoothness: weight of the diffusion penalty on the correction (coarse voxels^2).
        factor: the correction has one node per ``factor * stride`` voxels per axis...
        nodes: ...or, when given, one node per ``nodes`` voxels whatever the stride.
        window: box size (odd) of the local normalisation; 0 compares the raw images.
        step_voxels: on a larger grid each step scores one sub-lattice of every
            ``stride``-th voxel per axis, with about this many voxels
            (:func:`sub_lattice_stride`), cycling through the ``stride^3`` offsets, so a
            step costs about the same at any size while the loss still sees
            full-resolution intensities (as ANTs and elastix sample).
        anneal: the step falls linearly from ``lr`` to 0 over the iterations instead of
            staying at ``lr``. Adam moves each node by about ``lr`` coarse voxels a step
            whatever the gradient's size, so at a constant step the correction ends
            where it jitters (0.2 coarse voxels is 0.8 mm on 4 mm nodes); annealed, the
            last steps settle it.

    Returns:
        The refined field, ``(B, 3, D, H, W)``, detached from any graph.

    The loss is :func:`ddmr_core.spatial.similarity.global_ncc` of the locally normalised images
    (:func:`local_normalise`): close to what local NCC measures at the cost of a global
    one. A lower ``smoothness`` lets the correction fit noise.
    """
    if iterations <= 0:
        return disp
    disp = disp.detach()  # the prediction is a constant here (a model's parameter may be one)
    shape = tuple(int(n) for n in fixed.shape[2:])
    stride = sub_lattice_stride(shape, step_voxels)
    every = int(nodes) if nodes else int(factor) * stride
    coarse = tuple(max(1, n // every) for n in shape)
    dev, dt = disp.device, disp.dtype
    with torch.inference_mode(False), torch.enable_grad():
        # new tensors, outside inference mode: autograd may save them
        if window:
            f, m = local_normalise(torch.cat([fixed, moving], 1), int(window)).split(1, 1)
        else:
            f, m = fixed.clone(), moving.clone()
        # coarse-voxel vectors -> full-grid voxels (resize_field's rescaling)
        c_scale = torch.tensor([n / k for n, k in zip(shape, coarse)], device=dev, dtype=dt).view(1, 3, 1, 1, 1)
        lattices = _lattices(f, disp, coarse, stride, int(iterations))
        c = torch.zeros(disp.shape[0], 3, *coarse, device=dev, dtype=dt, requires_grad=True)
        opt = Adam([c], lr=lr)
        for it in range(int(iterations)):
            if anneal:
                opt.lr = lr * (1.0 - it / int(iterations))
            base, target, weights = lattices[it % len(lattices)]
            warped = sample_linear_border(m, base + _coarse_at(c, weights, c_scale).flatten(2))
            smooth = sum(c.diff(dim=k).square().flatten(1).mean(1) for k in (2, 3, 4))
            loss = (smoothness * smooth - global_ncc(warped, target)).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return (disp + resize_field(c.detach(), shape)).detach()


def _lattices(f: torch.Tensor, disp: torch.Tensor, coarse: tuple, stride: int, count: int) -> list:
    """Per sub-lattice (the first ``count`` of the ``stride^3`` offsets), everything a step
    needs but the correction, built once so that a step is one interpolation of the small
    correction, one trilinear sampling of the points and its gradient: the points
    ``(B, 3, N)`` (voxels of the fixed grid, ``disp`` applied), the fixed image's values
    there ``(B, C, N)`` and the per-axis weights of the ``coarse`` correction's nodes."""
    shape, dev, dt = tuple(f.shape[2:]), disp.device, disp.dtype
    out = []
    for offset in list(itertools.product(range(stride), repeat=3))[:count]:
        sub = (Ellipsis,) + tuple(slice(o, None, stride) for o in offset)
        out.append((
            (_sub_grid(shape, offset, stride, dev, dt) + disp[sub]).flatten(2),
            f[sub].flatten(2),
            [_axis_weights(n, k, o, stride, dev, dt) for n, k, o in zip(shape, coarse, offset)],
        ))
    return out


def _sub_grid(shape, offset, stride: int, device, dtype) -> torch.Tensor:
    """Voxel coordinates ``(1, 3, ...)`` of the sub-lattice ``offset[i], offset[i] +
    stride, ...`` of a ``shape`` grid (the identity grid's ``[..., o0::s, o1::s, o2::s]``,
    built without the full grid)."""
    axes = [torch.arange(int(o), int(n), stride, device=device, dtype=dtype) for o, n in zip(offset, shape)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), 0)[None]


def _axis_weights(n_full: int, n_coarse: int, start: int, stride: int, device, dtype) -> torch.Tensor:
    """``(n_sub, n_coarse)`` trilinear weights (``align_corners=False``, clamped) of the
    full-grid voxels ``start, start + stride, ...`` on a coarse axis of ``n_coarse`` nodes."""
    p = torch.arange(start, n_full, stride, dtype=torch.float64)
    return linear_weights((p + 0.5) * n_coarse / n_full - 0.5, n_coarse).to(device=device, dtype=dtype)


def _coarse_at(c: torch.Tensor, weights, scale: torch.Tensor) -> torch.Tensor:
    """``resize_field(c, shape)[..., o0::s, o1::s, o2::s]`` without the full-size field,
    from the three per-axis ``weights`` of :func:`_axis_weights`, times ``scale`` (3
    values, per component: ``N / n``, the vector rescaling of :func:`resize_field`, or
    that times further unit factors): one small matrix product per axis (cheap forward
    and backward, unlike scattering ``grid_sample`` gradients into ``c``)."""
    out = c
    for axis, w in enumerate(weights):
        out = torch.movedim(torch.tensordot(out, w, dims=([2 + axis], [1])), -1, 2 + axis)
    return out * scale.view(1, 3, 1, 1, 1)
