"""``normalize``: per-sample min-max scaling of the intensities to [0, 1].

Each image of the batch is scaled on its own (``(I - min) / (max - min)``); a constant
image becomes zeros. ``target="both"`` (default) normalises the fixed image and the
moving source alike, so before any intensity change they stay identical.
"""

from __future__ import annotations

from torch import nn

from ddmr_core.data.augment import check_target


def min_max(img, eps: float = 1e-8):
    """``(B, C, ...)`` -> each sample scaled to [0, 1] over all its channels and voxels."""
    flat = img.flatten(1)
    lo = flat.amin(1).view(-1, *[1] * (img.dim() - 1))
    hi = flat.amax(1).view(-1, *[1] * (img.dim() - 1))
    return (img - lo) / (hi - lo).clamp_min(eps)


class Normalize(nn.Module):
    """Args:
        target: ``"both"`` (default), ``"fixed"`` or ``"moving"``.
    """

    def __init__(self, target: str = "both"):
        super().__init__()
        check_target("normalize", target)
        self.target = target

    def extra_repr(self) -> str:
        return f"target={self.target}"

    def forward(self, state):
        if self.target == "both" and state["moving"] is state["fixed"]:
            # still one image (no intensity step before): scale it once
            state["fixed"] = state["moving"] = min_max(state["fixed"])
            return state
        for key in ("fixed", "moving"):
            if self.target in (key, "both"):
                state[key] = min_max(state[key])
        return state
