"""A second network pass on a pair of two contrasts, put into one.

A network trained on random contrasts (brain-mr-any) registers a T2 or PD scan to a T1,
but less accurately than a network of one contrast (brain-mr) registers a T1 pair: it
spends its capacity on not depending on the contrast. Its alignment is good enough to
estimate how one image's intensities map to the other's
(:func:`ddmr_core.spatial.contrast.map_both_ways`), and through that map the pair
becomes a pair of one contrast, which the network of one contrast registers better.

Which way to map matters. Into the fixed image's contrast when the fixed image is the T1,
into the moving one's when the moving image is; mapped the other way, the network of one
contrast sees a pair of a contrast it was not trained on and fails. The pair itself does
not say which image is the T1, so both ways are predicted and the one whose field the
second network *inverts consistently* is kept: the network is run on the mapped pair
both ways round, and the field that, composed with its reverse, comes back closer to the
identity over the fixed image's foreground wins. A network given images like those it was
trained on is inverse-consistent; given others, its two directions disagree (how often
the rule picks the better way: docs/models.md).

The way kept is then refined by the same network, still without optimisation. Each
estimate is *symmetric*: the network's field for the pair is averaged with the inverse of
its field for the pair the other way round (:func:`symmetric`), since a network's errors
in the two directions are partly independent, and the two are at hand anyway. The
estimate is then *cascaded* (:data:`CASCADE`, :data:`CASCADE_LONG_STEP`): the contrast
maps are estimated again from the field, which is closer than the first network's, the
network registers the pair once more with the moving image warped by the field so far, and
the small residual field it finds is composed onto it. A network registers best the
motions it was trained on; a pair that moved more than that (local warps beyond brain-mr's
6 mm) is left partly aligned by one pass and brought within range for the next.

No optimisation runs: the maps are conditional means, the rest are forward passes (four
of the second network at its own grid, one mirrored, and three per cascade step, plus
the maps on the working grid, twice) and field arithmetic, so this is still the "network
alone" of a model (an affine start and networks, no instance optimisation).

Tensors: images ``(1, 1, D, H, W)`` in [0, 1] on one (working) grid; fields
``(1, 3, D, H, W)`` pull fields in voxels of that grid.
"""

from __future__ import annotations

import torch

from ..spatial.contrast import background_mask, map_both_ways
from ..spatial.fields import compose, invert, resize_field, warp

#: the two ways: the moving image mapped into the fixed one's contrast, or the fixed into the moving one's
WAYS = ("moving_to_fixed", "fixed_to_moving")
#: the moving image's map estimated from the pair smoothed by a Gaussian of this width
#: (:func:`~ddmr_core.spatial.contrast.map_both_ways`), in voxels of the first network's
#: grid, whose alignment error it is there for: 0.6 of brain-mr-any's 64^3 voxels over a
#: brain is ~1.6 mm, 0.8 voxel of a 2 mm working grid, 1.6 of a 1 mm one. 8 pairs at 2 mm,
#: network alone: inverted -> T1 0.810 -> 0.847, T2-like -> T1 0.850 -> 0.859, the other
#: pairs unchanged (PD- and FLAIR-like maps are too ambiguous to be smoothed); at 1 mm
#: (2 pairs) 1.6 mm gained twice what 0.8 mm did (docs/models.md)
MAP_SMOOTHING = 0.6
#: cascade steps after the first estimate, always run: the network once more on the pair
#: warped by the field so far, its (symmetric) residual composed onto it. 2 mm pairs, 8 each,
#: network alone, with the symmetric estimates: T1 -> T1 0.901 -> 0.919, inverted -> T1
#: 0.847 -> 0.855, T2-like -> T1 0.859 -> 0.869 (0.875 with the maps estimated again first);
#: two steps on those pairs: 0.914, 0.845, 0.864 (docs/models.md)
CASCADE = 1
#: a further step runs while the last one moved the pair by more than this, on average over
#: the foreground, in voxels of the second network's grid (up to :data:`CASCADE_MAX` steps).
#: On pairs within the network's range the first step is 0.2-0.3 of its voxels, and a second
#: one lowers Dice (above); on a 1 mm T2-like pair warped beyond the training's 6 mm (4.7 mm
#: mean, 11 mm at the 99th percentile) the steps were 0.55, 0.26, 0.13 voxels and Dice 0.72
#: (no step), 0.79, 0.81, 0.82 (before the maps were estimated again for the cascade)
CASCADE_LONG_STEP = 0.4
CASCADE_MAX = 3


def inverse_consistency(forward: torch.Tensor, backward: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean length (voxels) over ``mask`` ``(B, 1, D, H, W)`` of ``forward(x) +
    backward(x + forward(x))``: zero when the pull field ``backward`` (moving grid to
    fixed) undoes ``forward`` (fixed to moving) exactly."""
    return _mean_length(forward + warp(backward, forward, mode="linear", padding="border"), mask)


def symmetric(predict, fixed: torch.Tensor, moving: torch.Tensor, forward: torch.Tensor | None = None,
              backward: torch.Tensor | None = None, grid=None) -> torch.Tensor:
    """The average of ``predict``'s pull field for the pair and the inverse of its field for
    the pair the other way round (:func:`~ddmr_core.spatial.fields.invert`, started from the
    forward field): ``(B, 3, D, H, W)`` voxels. ``forward`` / ``backward``: the two fields
    if already predicted. ``grid`` (3 sizes): where to invert, the network's own grid (the
    fields are its output resized, so no finer detail is lost, and a 1 mm grid has ~20x its
    voxels); ``None``: the images' grid."""
    forward = predict(fixed, moving) if forward is None else forward
    backward = predict(moving, fixed) if backward is None else backward
    shape = tuple(forward.shape[2:])
    if grid is None or tuple(grid) == shape:
        return 0.5 * (forward + invert(backward, guess=forward))
    inverse = invert(resize_field(backward, grid), guess=resize_field(forward, grid))
    return 0.5 * (forward + resize_field(inverse, shape))


def mirrored(predict, fixed: torch.Tensor, moving: torch.Tensor, axis: int) -> torch.Tensor:
    """``predict``'s field for the pair mirrored along voxel ``axis`` (0-2), mirrored back:
    the same pull field ``(B, 3, D, H, W)`` as ``predict(fixed, moving)`` would be for a
    network without a side (its component along ``axis`` negated, its values flipped)."""
    dim = 2 + axis
    disp = predict(fixed.flip(dim), moving.flip(dim)).flip(dim).clone()
    disp[:, axis] = -disp[:, axis]
    return disp


def _mapped(fixed: torch.Tensor, moving: torch.Tensor, disp: torch.Tensor, smooth: float,
            backgrounds: tuple[torch.Tensor, torch.Tensor]) -> dict:
    """The pair put into one contrast both ways through maps estimated from the alignment
    ``disp`` gives (:func:`~ddmr_core.spatial.contrast.map_both_ways`, with the images'
    ``backgrounds`` found once): ``{way: (fixed, moving)}``, the images clamped to [0, 1] as
    the network's inputs are."""
    fixed_mapped, moving_mapped, _ = map_both_ways(fixed, moving, disp, smooth=smooth, backgrounds=backgrounds)
    return dict(zip(WAYS, ((fixed, moving_mapped.clamp(0, 1)), (fixed_mapped.clamp(0, 1), moving))))


def _mean_length(field: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean length (voxels) of ``field`` ``(B, 3, D, H, W)`` over ``mask`` ``(B, 1, D, H, W)``."""
    w = mask.to(field.dtype)
    return float((field.norm(dim=1, keepdim=True) * w).sum() / w.sum().clamp_min(1.0))


def _long(step: float, fixed: torch.Tensor, grid) -> bool:
    """Whether a cascade step of mean length ``step`` (voxels of ``fixed``'s grid) is longer
    than :data:`CASCADE_LONG_STEP` voxels of the network's ``grid`` (None: never)."""
    return grid is not None and step * sum(grid) / sum(fixed.shape[2:]) > CASCADE_LONG_STEP


def second_pass(predict, fixed: torch.Tensor, moving: torch.Tensor, first: torch.Tensor,
                mirror_axis: int | None = None, first_grid=None, cascade: int | None = None,
                second_grid=None) -> tuple[torch.Tensor, dict]:
    """The second network's field for the pair put into one contrast, the way it inverts
    most consistently, and what was measured: ``(disp, info)``.

    ``predict(fixed, moving)``: the second network's pull field for two images of one grid
    (a model's ``predict_on_grid`` without refinement); ``first``: the first network's
    field, the alignment the contrast maps are estimated from. ``mirror_axis``: the voxel
    axis across which the anatomy is (nearly) symmetric (a brain's left-right); the way
    kept is then predicted once more with the pair mirrored, and the two fields averaged
    (:func:`mirrored`: a network's errors on a brain and on its mirror image are partly
    independent, docs/models.md). ``cascade``: steps of the network on the pair warped by
    the field so far (0: none); ``None``: :data:`CASCADE`, and more while a step is longer
    than :data:`CASCADE_LONG_STEP` voxels of ``second_grid``, the second network's grid (3
    sizes; ``None``: no more), up to :data:`CASCADE_MAX`. ``first_grid``: the first
    network's grid (3 sizes), which scales the maps' smoothing (:data:`MAP_SMOOTHING`;
    ``None``: no smoothing). ``info``: ``way`` (one of :data:`WAYS`),
    ``inverse_consistency`` (voxels, per way), ``mirror_axis`` and ``cascade_steps`` (each
    step's mean length over the foreground, voxels: a long one says the pair had moved
    more than one pass registers)."""
    with torch.no_grad():
        smooth = 0.0 if first_grid is None else MAP_SMOOTHING * sum(fixed.shape[2:]) / sum(first_grid)
        backgrounds = background_mask(fixed), background_mask(moving)
        pairs = _mapped(fixed, moving, first, smooth, backgrounds)
        mask = ~backgrounds[0]
        fields, errors = {}, {}
        for way, (f, m) in pairs.items():
            fields[way] = predict(f, m), predict(m, f)
            errors[way] = inverse_consistency(*fields[way], mask)
        way = min(errors, key=errors.get)
        f, m = pairs[way]
        disp = symmetric(predict, f, m, *fields[way], grid=second_grid)
        if mirror_axis is not None:
            disp = 0.5 * (disp + mirrored(predict, f, m, mirror_axis))
        steps = []
        for _ in range(CASCADE_MAX if cascade is None else cascade):
            if cascade is None and len(steps) >= CASCADE and not (steps and _long(steps[-1], fixed, second_grid)):
                break
            if not steps:  # the maps again, from this field: closer than the first network's
                f, m = _mapped(fixed, moving, disp, smooth, backgrounds)[way]
            warped = warp(m, disp, padding="border")
            step = symmetric(predict, f, warped, grid=second_grid)
            if mirror_axis is not None:
                step = 0.5 * (step + mirrored(predict, f, warped, mirror_axis))
            steps.append(_mean_length(step, mask))
            disp = compose(disp, step)
    return disp, {"way": way, "inverse_consistency": {k: round(v, 4) for k, v in errors.items()},
                  "mirror_axis": mirror_axis, "cascade_steps": [round(v, 4) for v in steps]}
