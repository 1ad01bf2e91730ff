"""On-the-fly training pairs: the augmentation pipeline (paper section 2.2).

A batch of single images becomes a batch of registration pairs on the training device,
with the ground-truth field that registers each moving image back onto its fixed image.
The steps are plugins (``ddmr_plugins.augmenters``: ``tps``, ``rigid``, ``gamma``,
``brightness``, ``resize``, ``normalize``) composed in any order, usually from gin::

    ddmr.build_augmentation.steps = [@ddmr.augmenters.resize(), @ddmr.augmenters.tps()]

How a pair is built
-------------------
The pipeline keeps a *state* dict that every step reads and returns:

``fixed`` ``(B, 1, D, H, W)``
    the fixed image (intensity steps with ``target="fixed"``/``"both"`` change it).
``moving`` ``(B, 1, D, H, W)``
    the *source* of the moving image, on the fixed grid, before any geometric step:
    intensity steps act on it; it is sampled only once, at the end, so chaining
    geometric steps never blurs the image twice.
``fixed_segs`` / ``moving_segs``
    one-hot float ``(B, L, ...)`` or label map integer ``(B, 1, ...)``, or ``None``.
``disp_true`` ``(B, 3, d, h, w)`` or ``None`` (identity)
    the pull field ``U`` with ``moving(x + U(x)) = fixed(x)`` (voxels of the fixed grid).
``warp`` ``(B, 3, d, h, w)`` or ``None`` (identity)
    the pull field ``W`` that renders the moving image: ``moving = warp(source, W)``;
    ``W`` is (approximately) the inverse of ``U``.
``spacing`` ``(B, 3)`` mm, ``affine`` ``(B, 4, 4)``
    of the current grid (``resize`` updates both).
``generators``
    one CPU ``torch.Generator`` per sample (see :func:`sample_generators`).

Fields on a lattice
-------------------
``U`` and ``W`` share one grid ``(d, h, w)``: the image grid ``(D, H, W)`` itself, or a
coarser *lattice* whose ``d`` (``h``, ``w``) nodes span the image from its first to its last
voxel along each axis (``tps`` evaluates its spline there). The field's shape says which;
values are always voxels of the fixed grid, and the full-resolution field is the trilinear
upsampling of the lattice one (:func:`ddmr_core.spatial.grids.upsample_lattice`,
``align_corners=True``). :func:`field_shape` gives the grid, :func:`lattice_nodes` the
voxel coordinates of its nodes, and :func:`to_full_resolution` upsamples the state's
fields in place -- what a step that needs voxel fields (``resize``) calls first. The
render upsamples them once, at the end; :meth:`AugmentationPipeline.render` leaves the
full-resolution fields in the state.

A geometric step draws a map ``phi_s`` (fixed side to moving side, pull field ``u_s``)
and its inverse (pull field ``w_s``), and folds them in with :func:`add_geometric_step`::

    U <- U + u_s(x + U(x))   # x + U(x) = phi_s(phi_old(x)): older maps act first
    W <- w_s + W(x + w_s(x)) # moving_new = warp(warp(source, W), w_s)

Sampled fields (``u_s``, ``w_s`` given as tensors) are composed at full resolution with
:func:`ddmr_core.spatial.fields.compose`, unless the state is empty (the step's fields, lattice
or not, become the state). Closed-form maps (``u_at``/``w_at``: rigid, affine) are
composed on the state's grid, lattice or not, at its nodes: for ``U`` this is exact for
an affine map (evaluated at ``x + U(x)`` in closed form; trilinear upsampling is linear
and reproduces affine functions, so upsampling the composed lattice field gives the
composition of the upsampled field at every voxel); for ``W`` the previous ``W`` is
sampled at the nodes' targets (trilinear, border padding) and the result interpolated
between the nodes, an interpolation-level approximation -- ``W`` is the approximate
direction anyway, ``U`` the ground truth. A first closed-form step, with no field before
it, is evaluated at every voxel.

At the end the moving image and segmentations are sampled once,
``moving = warp(source, W)`` (images: linear, border padding; one-hot: linear, zero
padding; label maps: nearest; one sampling grid for all). Pointwise intensity steps
placed after a geometric step therefore act before the sampling, which differs from
acting after it only by interpolation error.

Randomness
----------
Every random number comes from a per-sample ``torch.Generator`` seeded from
``(seed, index)`` and is drawn on the CPU, then moved to the device, so a pair depends on
the seed and the sample index only: not on the batch it sits in, nor on the device.
A trainer that wants a new pair for the same subject in every epoch passes a running
draw counter (e.g. ``epoch * len(dataset) + i``) as ``index``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, DataError
from ..spatial.fields import compose, sampling_grid, warp, warp_with_grid
from ..spatial.grids import identity_grid, upsample_lattice

__all__ = [
    "AugmentationPipeline",
    "sample_generators",
    "draw",
    "add_geometric_step",
    "field_shape",
    "lattice_nodes",
    "nodes_per_voxel",
    "to_full_resolution",
    "check_non_negative",
    "check_target",
]

State = dict


# ---------------------------------------------------------------- randomness
def sample_generators(seed: int, index: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per sample, seeded from ``(seed, index)``.

    ``numpy.random.SeedSequence`` mixes the two integers, so neighbouring seeds or
    indices give unrelated streams (a plain ``seed + index`` would make seed 0 /
    index 1 equal to seed 1 / index 0)."""
    gens = []
    for i in index:
        state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(i) & 0xFFFFFFFFFFFFFFFF])
        g = torch.Generator(device="cpu")
        g.manual_seed(int(state.generate_state(1, dtype=np.uint64)[0]) & 0x7FFFFFFFFFFFFFFF)
        gens.append(g)
    return gens


def draw(
    state: State, fn: Callable[[torch.Generator], torch.Tensor], dtype=torch.float32
) -> torch.Tensor:
    """``fn(generator)`` for every sample, stacked to ``(B, ...)`` and moved to the device.

    ``fn`` must draw on the CPU (e.g. ``torch.rand(3, generator=g)``), which keeps the
    numbers identical on every device."""
    vals = torch.stack([fn(g) for g in state["generators"]])
    return vals.to(device=state["fixed"].device, dtype=dtype)


# ------------------------------------------------------------------ geometry
def lattice_nodes(shape, lattice, device=None, dtype=torch.float32) -> torch.Tensor:
    """``(1, 3, *lattice)`` voxel coordinates (of the grid ``shape``) of the nodes of a
    lattice spanning that grid from its first to its last voxel along every axis; the
    identity grid when ``lattice == shape``."""
    shape, lattice = tuple(int(n) for n in shape), tuple(int(m) for m in lattice)
    nodes = identity_grid(lattice, device, dtype)
    if lattice == shape:
        return nodes
    return nodes * _voxels_per_node(shape, lattice, nodes.device, dtype)


def nodes_per_voxel(shape, lattice, device=None, dtype=torch.float32) -> torch.Tensor:
    """``(1, 3, 1, 1, 1)``: lattice-node spacings per voxel of the grid ``shape`` along each
    axis, ``(m - 1) / (n - 1)`` -- multiply a voxel field by it to get lattice-node units,
    in which the lattice is a regular grid that :func:`ddmr_core.spatial.fields.warp` samples."""
    return torch.tensor(
        [(m - 1) / (n - 1) if n > 1 else 0.0 for n, m in zip(shape, lattice)], device=device, dtype=dtype
    ).view(1, 3, 1, 1, 1)


def _voxels_per_node(shape, lattice, device, dtype) -> torch.Tensor:
    return torch.tensor(
        [(n - 1) / (m - 1) if m > 1 else 0.0 for n, m in zip(shape, lattice)], device=device, dtype=dtype
    ).view(1, 3, 1, 1, 1)


def _compose_on_lattice(first: torch.Tensor, second: torch.Tensor, shape) -> torch.Tensor:
    """:func:`ddmr_core.spatial.fields.compose` of two voxel fields held on the same lattice of the
    grid ``shape``: ``second + first(x + second(x))`` at the nodes, ``first`` sampled
    trilinearly between its nodes (border padding)."""
    lattice = tuple(second.shape[2:])
    if lattice == tuple(shape):
        return compose(first, second)
    scale = nodes_per_voxel(shape, lattice, second.device, second.dtype)
    return second + warp(first, second * scale, mode="linear", padding="border")


def field_shape(state: State) -> tuple | None:
    """The grid the state's fields are held on (the image grid or a coarser lattice, see
    the module docstring), or ``None`` while there is no field."""
    for key in ("disp_true", "warp"):
        if state.get(key) is not None:
            return tuple(state[key].shape[2:])
    return None


def to_full_resolution(state: State) -> State:
    """Upsample the state's fields from their lattice to every voxel of the image grid
    (in place; no-op for fields already there). Returns ``state``."""
    shape = tuple(state["fixed"].shape[2:])
    for key in ("disp_true", "warp"):
        f = state.get(key)
        if f is not None and tuple(f.shape[2:]) != shape:
            state[key] = upsample_lattice(f, shape)
    return state


def add_geometric_step(
    state: State,
    u: torch.Tensor | None,
    w: torch.Tensor | None,
    u_at: Callable | None = None,
    w_at: Callable | None = None,
) -> State:
    """Fold one geometric step into the state.

    Args:
        u: ``(B, 3, d, h, w)`` pull field of the step's map ``phi_s`` (from the grid of the
            moving image so far to the new moving image), voxels of the image grid, held
            at every voxel (``(d, h, w) = (D, H, W)``) or on a lattice (module docstring).
            May be ``None`` when ``u_at`` is given.
        w: the same for its inverse, which renders the new moving image from the previous
            one (same grid as ``u``). May be ``None`` when ``w_at`` is given.
        u_at: optional ``points (B or 1, 3, ...) -> u(points)`` (any spatial shape, voxel
            coordinates), the step's displacement in closed form (rigid and other affine
            maps). Composing with it needs no interpolation of ``u``: cheaper, and exact
            at the borders.
        w_at: the same for the inverse. With ``u_at`` and ``w_at`` both given the step is
            composed on the grid the state's fields are held on, lattice or not (for
            ``U`` exactly when the map is affine; see the module docstring).

    Sampled fields are composed at full resolution (the state's fields are upsampled
    first), so any order of steps works; the first geometric step's fields become the
    state as given.
    """
    if (u is None and u_at is None) or (w is None and w_at is None):
        raise ValueError("add_geometric_step needs u or u_at, and w or w_at")
    fixed = state["fixed"]
    shape = tuple(fixed.shape[2:])
    U, W = state.get("disp_true"), state.get("warp")
    if U is None and W is None:
        # first geometric step: its fields as given, lattice or not; closed forms at every voxel
        grid = next((tuple(f.shape[2:]) for f in (u, w) if f is not None), shape)
        nodes = None if u is not None and w is not None else lattice_nodes(shape, grid, fixed.device, fixed.dtype)
        state["disp_true"] = u if u is not None else u_at(nodes)
        state["warp"] = w if w is not None else w_at(nodes)
        return state
    grid = field_shape(state)
    on_grid = (U is None or tuple(U.shape[2:]) == grid) and (W is None or tuple(W.shape[2:]) == grid)
    if u_at is None or not on_grid or (w_at is None and tuple(w.shape[2:]) != grid):
        # a sampled map (composing it on a lattice would not be exact), or fields on
        # different grids: compose at every voxel
        to_full_resolution(state)
        U, W, grid = state.get("disp_true"), state.get("warp"), shape
        u = None if u is None else upsample_lattice(u, shape)
        w = None if w is None else upsample_lattice(w, shape)
    nodes = None
    if U is None or u_at is not None or w is None:
        nodes = lattice_nodes(shape, grid, fixed.device, fixed.dtype)
    # U_new(x) = U(x) + u(x + U(x)): the previous maps act first, then this one.
    if U is None:
        state["disp_true"] = u if u is not None else u_at(nodes)
    elif u_at is not None:
        state["disp_true"] = U + u_at(nodes + U)
    else:
        state["disp_true"] = compose(u, U)
    # warp(warp(source, W), w) = warp(source, compose(W, w)).
    if w is None:
        w = w_at(nodes)
    state["warp"] = w if W is None else _compose_on_lattice(W, w, shape)
    return state


# --------------------------------------------------------------- validation
def check_non_negative(step: str, name: str, value) -> None:
    if not np.all(np.asarray(value, dtype=float) >= 0):
        raise ConfigError(
            f"augmenter {step!r}: parameter {name!r} must not be negative, got {value!r}"
        )


TARGETS = ("moving", "fixed", "both")


def check_target(step: str, target: str) -> None:
    if target not in TARGETS:
        raise ConfigError(
            f"augmenter {step!r}: parameter 'target' must be one of {TARGETS}, got {target!r}"
        )


def _is_label_map(segs: torch.Tensor) -> bool:
    return not segs.is_floating_point()


# ----------------------------------------------------------------- pipeline
class AugmentationPipeline(nn.Module):
    """Turns a batch of images into training pairs with ground-truth fields.

    Args:
        steps: augmenter modules, applied in order; each maps a state dict to a state
            dict (see the module docstring).
        seed: global seed; with the sample index it fixes every random draw.

    Call::

        out = pipeline(image, segs=None, spacing=None, affine=None, index=None)

    with ``image (B, 1, D, H, W)`` float, ``segs`` one-hot float ``(B, L, D, H, W)`` (or an
    integer label map ``(B, 1, D, H, W)``) or ``None``, ``spacing (B, 3)`` mm (default
    1 mm), ``affine (B, 4, 4)`` (default ``diag(spacing, 1)``), ``index (B,)`` sample
    indices (default ``0..B-1``). Returns a dict with ``fixed``, ``moving``
    ``(B, 1, ...)``, ``fixed_segs``, ``moving_segs`` (same form as ``segs``, or ``None``),
    ``disp_true (B, 3, ...)`` (voxel pull field on the fixed grid:
    ``warp(moving, disp_true) ~= fixed``), ``spacing (B, 3)`` and ``affine (B, 4, 4)`` of
    the output grid. Everything stays on ``image``'s device; nothing is differentiated.
    """

    def __init__(self, steps: Sequence[nn.Module] = (), seed: int = 0):
        super().__init__()
        steps = list(steps)
        for i, s in enumerate(steps):
            if not callable(s):
                raise ConfigError(
                    f"augmentation step {i} must be an augmenter module, got {type(s).__name__}"
                )
        self.steps = nn.ModuleList(steps)
        self.seed = int(seed)

    def extra_repr(self) -> str:
        return f"seed={self.seed}"

    def generators(self, index: Sequence[int]) -> list[torch.Generator]:
        """The per-sample generators the pipeline uses for ``index``."""
        return sample_generators(self.seed, index)

    def initial_state(self, image, segs=None, spacing=None, affine=None, index=None) -> State:
        """Validate the inputs and build the state dict the steps work on."""
        if not torch.is_tensor(image) or image.dim() != 5 or image.shape[1] != 1:
            shape = tuple(image.shape) if torch.is_tensor(image) else type(image).__name__
            raise DataError(f"augmentation: 'image' must be a (B, 1, D, H, W) tensor, got {shape}")
        if not image.is_floating_point():
            image = image.float()
        B, shape, dev = image.shape[0], tuple(image.shape[2:]), image.device
        if segs is not None:
            if not torch.is_tensor(segs) or segs.dim() != 5:
                raise DataError("augmentation: 'segs' must be a (B, L, D, H, W) tensor")
            if segs.shape[0] != B or tuple(segs.shape[2:]) != shape:
                raise DataError(
                    f"augmentation: 'segs' of shape {tuple(segs.shape)} does not match 'image' of "
                    f"shape {tuple(image.shape)} (batch and grid must agree)"
                )
            if _is_label_map(segs) and segs.shape[1] != 1:
                raise DataError(
                    f"augmentation: integer 'segs' must be a label map (B, 1, D, H, W), got "
                    f"{tuple(segs.shape)}; pass one-hot maps as float"
                )
            segs = segs.to(dev)
        if spacing is None:
            spacing = torch.ones(B, 3)
        spacing = torch.as_tensor(spacing, dtype=torch.float32).to(dev)
        if spacing.dim() == 1:
            spacing = spacing.expand(B, 3)
        if tuple(spacing.shape) != (B, 3):
            raise DataError(f"augmentation: 'spacing' must be (B, 3) = ({B}, 3), got {tuple(spacing.shape)}")
        if not bool((spacing > 0).all()):
            raise DataError("augmentation: 'spacing' must be positive (mm)")
        if affine is None:
            affine = torch.diag_embed(
                torch.cat([spacing, torch.ones(B, 1, dtype=spacing.dtype, device=dev)], 1)
            ).double()
        affine = torch.as_tensor(affine, dtype=torch.float64).to(dev)
        if affine.dim() == 2:
            affine = affine.expand(B, 4, 4)
        if tuple(affine.shape) != (B, 4, 4):
            raise DataError(f"augmentation: 'affine' must be (B, 4, 4), got {tuple(affine.shape)}")
        if index is None:
            index = torch.arange(B)
        index = torch.as_tensor(index).reshape(-1)
        if index.numel() != B:
            raise DataError(f"augmentation: 'index' must hold {B} sample indices, got {index.numel()}")
        return {
            "fixed": image,
            "moving": image,
            "fixed_segs": segs,
            "moving_segs": segs,
            "disp_true": None,
            "warp": None,
            "spacing": spacing,
            "affine": affine,
            "generators": self.generators(index.tolist()),
        }

    @staticmethod
    def render(state: State) -> dict:
        """Sample the moving image and segmentations once with ``W``; identity fields
        become zeros. Returns the pipeline's output dict.

        Fields held on a lattice are upsampled first, in the state: afterwards
        ``state["disp_true"]`` and ``state["warp"]`` are the full-resolution ``U`` and ``W``."""
        to_full_resolution(state)
        fixed, W, U = state["fixed"], state["warp"], state["disp_true"]
        moving, msegs = state["moving"], state["moving_segs"]
        if W is not None:
            grid = sampling_grid(W.to(moving.dtype))  # one sampling grid for the image and segs
            # border: a rotated corner repeats the edge (background), not a black wedge
            moving = warp_with_grid(moving, grid, mode="linear", padding="border")
            if msegs is not None:
                mode = "nearest" if _is_label_map(msegs) else "linear"
                msegs = warp_with_grid(msegs, grid, mode=mode, padding="zeros")
        if U is None:
            U = fixed.new_zeros(fixed.shape[0], 3, *fixed.shape[2:])
        return {
            "fixed": fixed,
            "moving": moving,
            "fixed_segs": state["fixed_segs"],
            "moving_segs": msegs,
            "disp_true": U,
            "spacing": state["spacing"],
            "affine": state["affine"],
        }

    @torch.no_grad()
    def forward(self, image, segs=None, spacing=None, affine=None, index=None) -> dict:
        state = self.initial_state(image, segs, spacing, affine, index)
        for step in self.steps:
            state = step(state)
        return self.render(state)
