"""``gamma``: random gamma correction, ``I' = clip(I, 0, 1) ** gamma``.

``gamma = 2 ** U(-max_log2, max_log2)`` per sample and image; the paper's range
``[0.5, 2]`` is ``max_log2 = 1``. Drawing the exponent of two uniformly makes brightening
and darkening equally likely (``gamma`` and ``1 / gamma`` have the same probability).
Expects intensities in [0, 1] (place it after ``normalize``); the result is in [0, 1].
"""

from __future__ import annotations

import torch
from torch import nn

from ddmr_core.data.augment import check_non_negative, check_target, draw


class Gamma(nn.Module):
    """Args:
        max_log2: the exponent is ``2 ** U(-max_log2, max_log2)`` (>= 0; paper: 1).
        target: ``"moving"`` (paper), ``"fixed"`` or ``"both"`` (independent draws).
    """

    def __init__(self, max_log2: float = 1.0, target: str = "moving"):
        super().__init__()
        check_non_negative("gamma", "max_log2", max_log2)
        check_target("gamma", target)
        self.max_log2, self.target = float(max_log2), target

    def extra_repr(self) -> str:
        return f"gamma in [2^-{self.max_log2}, 2^{self.max_log2}], target={self.target}"

    def _adjust(self, state, key):
        img = state[key]
        e = draw(state, lambda g: (torch.rand(1, generator=g) * 2 - 1) * self.max_log2)
        gamma = torch.exp2(e).view(-1, 1, 1, 1, 1).to(img.dtype)
        state[key] = img.clamp(0, 1).pow(gamma)

    def forward(self, state):
        # fixed first, then moving: a fixed order of draws keeps "both" reproducible
        for key in ("fixed", "moving"):
            if self.target in (key, "both"):
                self._adjust(state, key)
        return state
