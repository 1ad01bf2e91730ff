"""``identity``: no registration at all -- the floor every method must beat."""

from __future__ import annotations

from typing import Sequence

import numpy as np


class Identity:
    """Returns a zero displacement field: ``warped == moving``."""

    @staticmethod
    def available() -> bool:
        return True

    def register(self, fixed: np.ndarray, moving: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
        """``(3, D, H, W)`` float32 zeros on the fixed grid."""
        fixed = np.asarray(fixed)
        if fixed.ndim != 3:
            raise ValueError(f"fixed must be a 3-D array, got shape {fixed.shape}")
        return np.zeros((3,) + fixed.shape, np.float32)


def identity() -> Identity:
    """The no-registration baseline."""
    return Identity()
