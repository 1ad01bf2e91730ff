"""``brightness``: random additive intensity shift, ``I' = clip(I + s, 0, 1)``.

``s ~ U(-max_shift, max_shift)`` per sample and image; the paper's +-20 % of the [0, 1]
intensity range is ``max_shift = 0.2``. Expects intensities in [0, 1].
"""

from __future__ import annotations

import torch
from torch import nn

from ddmr_core.data.augment import check_non_negative, check_target, draw


class Brightness(nn.Module):
    """Args:
        max_shift: largest shift, in units of the [0, 1] intensity range (paper: 0.2).
        target: ``"moving"`` (paper), ``"fixed"`` or ``"both"`` (independent draws).
    """

    def __init__(self, max_shift: float = 0.2, target: str = "moving"):
        super().__init__()
        check_non_negative("brightness", "max_shift", max_shift)
        check_target("brightness", target)
        self.max_shift, self.target = float(max_shift), target

    def extra_repr(self) -> str:
        return f"max_shift={self.max_shift}, target={self.target}"

    def forward(self, state):
        for key in ("fixed", "moving"):
            if self.target in (key, "both"):
                img = state[key]
                s = draw(state, lambda g: (torch.rand(1, generator=g) * 2 - 1) * self.max_shift)
                state[key] = (img + s.view(-1, 1, 1, 1, 1).to(img.dtype)).clamp(0, 1)
        return state
