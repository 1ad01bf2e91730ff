"""Instance optimisation: a few gradient steps on the predicted field at inference.

A network trained for minutes on a CPU (the demo) predicts a field that is right in
bulk but not to the voxel. :func:`refine_field` polishes it for the one pair at hand,
the way ANTs optimises every pair, but starting from the prediction and for a fixed,
small number of Adam steps, so it keeps most of a network's speed advantage. It
optimises a correction ``c`` on a grid ``factor`` times coarser (smooth, and cheap),
added to the field::

    disp' = disp + resize_field(c)
    maximise  NCC(warp(N(moving), disp'), N(fixed)) - smoothness * mean |grad c|^2

with global NCC per sample of locally normalised images ``N(I) = (I - mean_w(I)) /
(std_w(I) + 0.05)`` (box window ``w``, computed once per pair): almost what local NCC
measures, at the cost of global NCC, since only the warp runs in the loop. Used by
:class:`~ddmr_core.model.RegistrationModel` when ``refine_iterations > 0`` and the
model is in evaluation mode; training never refines (the network must learn).
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

from .prealign import global_ncc
from .spatial import identity_grid, linear_weights, resize_field, sample_at, warp


def local_normalise(image: torch.Tensor, window: int, eps: float = 0.05) -> torch.Tensor:
    """``(I - mean) / (std + eps)`` over a ``window``-voxel box around each voxel
    (``(B, C, D, H, W)``; the box is clipped at the borders). ``eps`` (intensity units of
    [0, 1] images) keeps flat background from being amplified into noise."""
    def box(t):  # separable: three 1-D means, equal to the clipped 3-D box mean, ~8x cheaper
        for axis in range(3):
            k = [1, 1, 1]
            k[axis] = window
            pad = [0, 0, 0]
            pad[axis] = window // 2
            t = F.avg_pool3d(t, tuple(k), stride=1, padding=tuple(pad), count_include_pad=False)
        return t

    mean = box(image)
    var = (box(image * image) - mean * mean).clamp_min(0)
    return (image - mean) / (var.sqrt() + eps)


def refine_field(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    disp: torch.Tensor,
    iterations: int = 20,
    lr: float = 0.2,
    smoothness: float = 0.1,
    factor: int = 2,
    window: int = 5,
    max_voxels: int = 64**3,
) -> torch.Tensor:
    """Refine the pull field ``disp`` of ``(fixed, moving)`` by instance optimisation.

    Args:
        fixed, moving: ``(B, 1, D, H, W)`` images on one grid.
        disp: ``(B, 3, D, H, W)`` initial pull field, voxels of the fixed grid.
        iterations: Adam steps (0 returns ``disp`` unchanged).
        lr: Adam step, voxels of the coarse grid.
        smoothness: weight of the diffusion penalty on the correction (coarse voxels^2).
        factor: the correction lives on a grid ``factor`` times coarser per axis.
        window: box size (odd) of the local normalisation; 0 compares the raw images.
        max_voxels: on a larger grid each step scores one sub-lattice of every
            ``stride``-th voxel per axis (the smallest stride that fits), cycling through
            the ``stride^3`` offsets, so a step costs about the same at any size while the
            loss still sees full-resolution intensities (as ANTs and elastix sample).

    Returns:
        The refined field, ``(B, 3, D, H, W)``, detached from any graph.

    Measured on the demo's 64^3 brain test pairs (2-core CPU), from the affine
    initialisation alone (mean Dice 0.65): 0.836 with the defaults (20 steps, ~0.65 s per
    pair), 0.845 with 30; raw images (``window=0``) 0.807, ``window`` 3 0.836, 9 0.822;
    ``smoothness`` 0.05 0.825 (the correction starts to fit noise), ``factor=4`` with raw
    images 0.807 against 0.805. A real local NCC (five box filters per step) reached 0.84
    at about ten times the cost.
    """
    if iterations <= 0:
        return disp
    shape = tuple(fixed.shape[2:])
    coarse = tuple(max(1, n // int(factor)) for n in shape)
    with torch.inference_mode(False), torch.enable_grad():
        f, m, d = fixed.detach().clone(), moving.detach().clone(), disp.detach().clone()
        if window:
            f, m = local_normalise(f, int(window)), local_normalise(m, int(window))
        c = torch.zeros(d.shape[0], 3, *coarse, device=d.device, dtype=d.dtype, requires_grad=True)
        opt = torch.optim.Adam([c], lr=lr)
        stride = next(k for k in itertools.count(1) if math.prod(-(-n // k) for n in shape) <= max_voxels)
        offsets = list(itertools.product(range(stride), repeat=3))
        if stride > 1:  # the interpolation weights of each sub-lattice, built once
            weights = {o: [_axis_weights(n, k, oi, stride, d.device, d.dtype) for n, k, oi in zip(shape, coarse, o)]
                       for o in offsets[: int(iterations)]}
            ratio = torch.tensor([n / k for n, k in zip(shape, coarse)], device=d.device, dtype=d.dtype)
        for it in range(int(iterations)):
            if stride == 1:
                warped = warp(m, d + resize_field(c, shape), mode="linear", padding="border")
                target = f
            else:
                offset = offsets[it % len(offsets)]
                sub = (Ellipsis,) + tuple(slice(o, None, stride) for o in offset)
                pos = identity_grid(shape, d.device, d.dtype)[sub]  # (1, 3, ...) voxels
                warped = sample_at(m, pos + d[sub] + _coarse_at(c, weights[offset], ratio), padding="border")
                target = f[sub]
            smooth = sum(c.diff(dim=k).square().flatten(1).mean(1) for k in (2, 3, 4))
            loss = (smoothness * smooth - global_ncc(warped, target)).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return (d + resize_field(c.detach(), shape)).detach()


def _axis_weights(n_full: int, n_coarse: int, start: int, stride: int, device, dtype) -> torch.Tensor:
    """``(n_sub, n_coarse)`` trilinear weights (``align_corners=False``, clamped) of the
    full-grid voxels ``start, start + stride, ...`` on a coarse axis of ``n_coarse`` nodes."""
    p = torch.arange(start, n_full, stride, dtype=torch.float64)
    return linear_weights((p + 0.5) * n_coarse / n_full - 0.5, n_coarse).to(device=device, dtype=dtype)


def _coarse_at(c: torch.Tensor, weights, ratio: torch.Tensor) -> torch.Tensor:
    """``resize_field(c, shape)[..., o0::s, o1::s, o2::s]`` without the full-size field,
    from the three per-axis ``weights`` of :func:`_axis_weights` and ``ratio`` ``(3,)``
    ``N / n`` (the vector rescaling of :func:`resize_field`): one small matrix product
    per axis (cheap forward and backward, unlike scattering ``grid_sample`` gradients
    into ``c``)."""
    out = c
    for axis, w in enumerate(weights):
        out = torch.movedim(torch.tensordot(out, w, dims=([2 + axis], [1])), -1, 2 + axis)
    return out * ratio.view(1, 3, 1, 1, 1)
