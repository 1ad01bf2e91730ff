"""Small plotting helpers shared by the evaluation report, ``ddmr register`` and the examples.

Arrays here are 2-D slices ``(N0, N1)`` drawn with axis 0 horizontal and axis 1 vertical
(``imshow(slice.T, origin="lower")``); fields are the matching two components of a
voxel pull field, ``(2, N0, N1)``.
"""

from __future__ import annotations

import numpy as np


def checkerboard(a: np.ndarray, b: np.ndarray, tiles: int = 8) -> np.ndarray:
    """Alternate square tiles of ``a`` and ``b`` (2-D, same shape), ``tiles`` per side."""
    if a.shape != b.shape:
        raise ValueError(f"checkerboard of different shapes {a.shape} and {b.shape}")
    idx = [np.arange(n) * tiles // max(n, 1) for n in a.shape]
    mask = (idx[0][:, None] + idx[1][None, :]) % 2 == 0
    return np.where(mask, a, b)


def draw_deformation_grid(ax, disp: np.ndarray, step: int | None = None, color="b", lw: float = 0.6) -> None:
    """Draw the fixed grid's lines moved to ``x + u(x)``: where each fixed voxel samples
    the moving image. ``disp`` is ``(2, N0, N1)`` in voxels (components along axes 0, 1);
    ``step`` is the line spacing in voxels (default: about 16 lines per side)."""
    n0, n1 = disp.shape[1:]
    step = step or max(1, min(n0, n1) // 16)
    g0, g1 = np.meshgrid(np.arange(n0), np.arange(n1), indexing="ij")
    p0, p1 = g0 + disp[0], g1 + disp[1]
    for i in range(0, n0, step):
        ax.plot(p0[i, :], p1[i, :], color=color, lw=lw)
    for j in range(0, n1, step):
        ax.plot(p0[:, j], p1[:, j], color=color, lw=lw)
    ax.set_xlim(-0.5, n0 - 0.5)
    ax.set_ylim(-0.5, n1 - 0.5)
