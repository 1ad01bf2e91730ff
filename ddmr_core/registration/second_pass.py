"""A second network pass on a pair of two contrasts, put into one.

A network trained on random contrasts (brain-mr-any) registers a T2 or PD scan to a T1,
but less accurately than a network of one contrast (brain-mr) registers a T1 pair: it
spends its capacity on not depending on the contrast. Its alignment is good enough to
estimate how one image's intensities map to the other's
(:func:`ddmr_core.spatial.contrast.estimate_contrast_map`), and through that map the pair
becomes a pair of one contrast, which the network of one contrast registers better.

Which way to map matters. Into the fixed image's contrast when the fixed image is the T1,
into the moving one's when the moving image is; mapped the other way, the network of one
contrast sees a pair of a contrast it was not trained on and fails. The pair itself does
not say which image is the T1, so both ways are predicted and the one whose field the
second network *inverts consistently* is kept: the network is run on the mapped pair
both ways round, and the field that, composed with its reverse, comes back closer to the
identity over the fixed image's foreground wins. A network given images like those it was
trained on is inverse-consistent; given others, its two directions disagree (brain
benchmark, 2 mm, 2 pairs each of T1, T2, PD, FLAIR and inverted, both roles: the rule
picked the better way in all 18 pairs, the loser's consistency error 1.5-2.3x the
winner's; between two T1 images both ways are within 0.01 Dice).

No optimisation runs: the maps are conditional means, the rest are forward passes (five
of a network at its own grid, plus the maps on the working grid), so this is still the
"network alone" of a model (an affine start and networks, no instance optimisation).

Tensors: images ``(1, 1, D, H, W)`` in [0, 1] on one (working) grid; fields
``(1, 3, D, H, W)`` pull fields in voxels of that grid.
"""

from __future__ import annotations

import torch

from ..spatial.contrast import background_mask, estimate_contrast_map
from ..spatial.fields import warp

#: the two ways: the moving image mapped into the fixed one's contrast, or the fixed into the moving one's
WAYS = ("moving_to_fixed", "fixed_to_moving")


def inverse_consistency(forward: torch.Tensor, backward: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean length (voxels) over ``mask`` ``(B, 1, D, H, W)`` of ``forward(x) +
    backward(x + forward(x))``: zero when the pull field ``backward`` (moving grid to
    fixed) undoes ``forward`` (fixed to moving) exactly."""
    back = warp(backward, forward, mode="linear", padding="border")
    err = (forward + back).norm(dim=1, keepdim=True)
    w = mask.to(err.dtype)
    return float((err * w).sum() / w.sum().clamp_min(1.0))


def second_pass(predict, fixed: torch.Tensor, moving: torch.Tensor, first: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """The second network's field for the pair put into one contrast, the way it inverts
    most consistently, and what was measured: ``(disp, info)``.

    ``predict(fixed, moving)``: the second network's pull field for two images of one grid
    (a model's ``predict_on_grid`` without refinement); ``first``: the first network's
    field, the alignment the contrast maps are estimated from. ``info``: ``way`` (one of
    :data:`WAYS`) and ``inverse_consistency`` (voxels, per way)."""
    with torch.no_grad():
        aligned = warp(moving, first, mode="linear", padding="border")
        moving_mapped = estimate_contrast_map(fixed, aligned)(moving).clamp(0, 1)
        fixed_mapped = estimate_contrast_map(aligned, fixed)(fixed).clamp(0, 1)
        mask = ~background_mask(fixed)
        pairs = {"moving_to_fixed": (fixed, moving_mapped), "fixed_to_moving": (fixed_mapped, moving)}
        fields, errors = {}, {}
        for way, (f, m) in pairs.items():
            fields[way] = predict(f, m)
            errors[way] = inverse_consistency(fields[way], predict(m, f), mask)
    way = min(errors, key=errors.get)
    return fields[way], {"way": way, "inverse_consistency": {k: round(v, 4) for k, v in errors.items()}}
