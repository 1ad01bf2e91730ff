"""``resize``: resample the pair to the network's input size, keeping the field of view.

Images are resized trilinearly, one-hot segmentations trilinearly, label maps by nearest
neighbour, and the ground-truth and rendering fields with
:func:`ddmr_core.spatial.fields.resize_field` (vectors rescaled by ``N_new / N_old`` per axis;
fields held on a lattice are upsampled to the old grid first).
Spacing becomes ``spacing * N_old / N_new``; the affine is updated as
:func:`ddmr_core.spatial.grids.resize_affine` says. Placed first in a pipeline, the geometric
steps then run at the (usually smaller) network size -- physically the same
augmentation, since bounds are in millimetres, and cheaper.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ddmr_core.data.augment import to_full_resolution
from ddmr_core.errors import ConfigError
from ddmr_core.spatial.fields import resize_field, resize_image
from ddmr_core.spatial.grids import resize_affine


def _resize_segs(segs, size):
    if segs is None:
        return None
    return resize_image(segs, size, mode="linear" if segs.is_floating_point() else "nearest")


class Resize(nn.Module):
    """Args:
        size: output grid ``(D, H, W)``, three positive integers (usually ``%SIZE``).
    """

    def __init__(self, size: Sequence[int] = (64, 64, 64)):
        super().__init__()
        size = tuple(size) if not isinstance(size, int) else (size,) * 3
        if len(size) != 3 or not all(int(s) == s and s > 0 for s in size):
            raise ConfigError(f"augmenter 'resize': parameter 'size' must be 3 positive integers, got {size!r}")
        self.size = tuple(int(s) for s in size)

    def extra_repr(self) -> str:
        return f"size={self.size}"

    def forward(self, state):
        old = tuple(state["fixed"].shape[2:])
        if old == self.size:
            return state
        # fields held on a lattice (spanning the old grid's first to last voxel) do not
        # carry over to the new grid as a lattice: upsample them to the old grid first
        to_full_resolution(state)
        for key in ("fixed", "moving"):
            state[key] = resize_image(state[key], self.size)
        same = state["moving_segs"] is state["fixed_segs"]
        state["fixed_segs"] = _resize_segs(state["fixed_segs"], self.size)
        state["moving_segs"] = state["fixed_segs"] if same else _resize_segs(state["moving_segs"], self.size)
        for key in ("disp_true", "warp"):
            if state[key] is not None:
                state[key] = resize_field(state[key], self.size)
        ratio = torch.tensor([o / n for o, n in zip(old, self.size)], device=state["spacing"].device)
        state["spacing"] = state["spacing"] * ratio.to(state["spacing"].dtype)
        m = torch.as_tensor(resize_affine(torch.eye(4).numpy(), old, self.size))
        state["affine"] = state["affine"] @ m.to(state["affine"])
        return state
