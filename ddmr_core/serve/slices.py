"""Two-dimensional slices of a registration result as RGB pictures and PNG bytes.

``ddmr serve`` keeps a result's volumes in memory and renders one slice per request
(:mod:`ddmr_core.serve.view`); this module turns such a slice into colours. Everything
works on 2-D arrays ``(Na, Nb)`` indexed like the volume (``a`` and ``b`` the two array
axes of the slice, ``a < b``); :func:`display` turns the finished picture into screen
order at the very end: axis ``a`` left to right, axis ``b`` bottom to top (the figures'
convention, :mod:`ddmr_core.registration.figures`), so on a grid brought to RAS an axial slice shows
anterior up, coronal and sagittal slices superior up.

Pictures are ``uint8`` arrays ``(Na, Nb, 3)`` until :func:`display`; PNG encoding uses
Pillow (a dependency of matplotlib, and so of ddmr) at a low compression level: a slice
is encoded on every slider move, where speed matters more than size.
"""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np

from ..registration.figures import checkerboard

#: colour of folded voxels (Jacobian determinant <= 0) in :func:`jacobian_rgb`
FOLD_COLOUR = (255, 230, 0)
#: colour of the deformed grid's lines in :func:`grid_rgb`
GRID_COLOUR = (0, 220, 255)
#: label colours (label ``k`` takes entry ``(k - 1) mod len``), distinct on grey images
LABEL_COLOURS = np.array([(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
                          (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128)],
                         dtype=np.float32)


def window(volume: np.ndarray, percentiles=(1.0, 99.0)) -> tuple[float, float]:
    """The grey-level window ``(lo, hi)`` of a volume: its 1st and 99th percentiles, as
    ``ddmr register``'s overview uses (``hi > lo`` always). Computed on at most ~1 M voxels
    (a regular subsample), once per volume, not per slice."""
    flat = np.asarray(volume).ravel()
    step = max(1, flat.size // 1_000_000)
    lo, hi = (float(v) for v in np.percentile(flat[::step], percentiles))
    if not hi > lo:
        lo, hi = float(flat.min()), float(flat.max())
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi


def grey(slice2d: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """A slice through the window ``[lo, hi]`` to grey levels ``uint8 (Na, Nb)``."""
    return (np.clip((np.asarray(slice2d, np.float32) - lo) / (hi - lo), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def rgb(grey8: np.ndarray) -> np.ndarray:
    """Grey levels ``(Na, Nb)`` -> ``(Na, Nb, 3)``."""
    return np.repeat(grey8[..., None], 3, axis=2)


def checkerboard_rgb(a8: np.ndarray, b8: np.ndarray, tiles: int = 8) -> np.ndarray:
    """Alternating tiles of two grey slices (:func:`ddmr_core.registration.figures.checkerboard`)."""
    return rgb(checkerboard(a8, b8, tiles))


def colour_overlay(fixed8: np.ndarray, warped8: np.ndarray) -> np.ndarray:
    """Fixed in magenta, warped in green: grey where they agree, coloured where not."""
    return np.stack([fixed8, warped8, fixed8], axis=2)


@lru_cache(maxsize=4)
def colormap(name: str) -> np.ndarray:
    """A matplotlib colormap as a ``(256, 3)`` uint8 lookup table (built once)."""
    from matplotlib import colormaps

    return (colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3] * 255.0 + 0.5).astype(np.uint8)


def magnitude_rgb(magnitude: np.ndarray, vmax: float) -> np.ndarray:
    """Displacement length (mm) on ``viridis`` from 0 to ``vmax``."""
    idx = np.clip(np.asarray(magnitude, np.float32) / max(float(vmax), 1e-6), 0.0, 1.0) * 255.0
    return colormap("viridis")[(idx + 0.5).astype(np.uint8)]


def jacobian_rgb(jac: np.ndarray) -> np.ndarray:
    """Jacobian determinant on a diverging map in ``log2`` from 1/2 (blue, shrinks) over 1
    (white) to 2 (red, expands), folded voxels (determinant <= 0) in :data:`FOLD_COLOUR`."""
    jac = np.asarray(jac, np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.log2(np.maximum(jac, 1e-6))
    idx = (np.clip(t, -1.0, 1.0) + 1.0) * 127.5
    out = colormap("RdBu_r")[(idx + 0.5).astype(np.uint8)]
    out[jac <= 0] = FOLD_COLOUR
    return out


def label_overlay(picture: np.ndarray, labels: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """Label map ``(Na, Nb)`` blended over a picture (background 0 left as it is)."""
    labels = np.asarray(labels)
    mask = labels > 0
    if not mask.any():
        return picture
    colours = LABEL_COLOURS[(labels[mask].astype(np.int64) - 1) % len(LABEL_COLOURS)]
    out = picture.astype(np.float32)
    out[mask] = (1.0 - alpha) * out[mask] + alpha * colours
    return (out + 0.5).astype(np.uint8)


def grid_scale(shape) -> int:
    """The upsampling of a grid picture: thin lines need a few pixels per voxel (~256
    pixels on the longer side, at most 4 per voxel)."""
    return int(min(4, max(1, -(-256 // max(shape)))))


def grid_rgb(base8: np.ndarray, ua: np.ndarray, ub: np.ndarray, step: int | None = None) -> np.ndarray:
    """The deformed grid over a dimmed grey slice, upsampled by :func:`grid_scale`.

    ``ua``, ``ub``: the pull field's in-plane components (voxels along axes ``a``, ``b``).
    The lines are the moving image's regular grid (every ``step`` voxels; default about
    16 lines per side) pulled back to the fixed grid: a pixel at ``x`` is on a line where
    ``x + u(x)`` is on one, so straight lines mean no deformation and where the lines
    cross over each other the field folds."""
    from scipy.ndimage import map_coordinates

    na, nb = base8.shape
    s = grid_scale((na, nb))
    step = step or max(2, min(na, nb) // 16)
    # pixel centres of the upsampled picture, in voxels of the slice
    pa = np.clip((np.arange(na * s) + 0.5) / s - 0.5, 0, na - 1)
    pb = np.clip((np.arange(nb * s) + 0.5) / s - 0.5, 0, nb - 1)
    PA, PB = np.meshgrid(pa, pb, indexing="ij")
    coords = np.stack([PA, PB])
    ca = PA + map_coordinates(np.asarray(ua, np.float32), coords, order=1, mode="nearest")
    cb = PB + map_coordinates(np.asarray(ub, np.float32), coords, order=1, mode="nearest")
    half = 0.6 / s  # about one pixel wide where the field does not stretch
    on = (np.abs(ca / step - np.round(ca / step)) * step < half) | (np.abs(cb / step - np.round(cb / step)) * step < half)
    base = np.repeat(np.repeat(base8, s, axis=0), s, axis=1).astype(np.float32) * 0.5
    out = np.repeat(base[..., None], 3, axis=2)
    out[on] = GRID_COLOUR
    return (out + 0.5).astype(np.uint8)


def display(picture: np.ndarray) -> np.ndarray:
    """A picture indexed ``(a, b[, 3])`` in screen order: rows are axis ``b`` from its
    last index (top) to its first, columns axis ``a``."""
    return np.ascontiguousarray(np.swapaxes(picture, 0, 1)[::-1])


def png(picture: np.ndarray) -> bytes:
    """PNG bytes of a screen-order ``uint8`` picture ``(rows, cols)`` or ``(rows, cols, 3)``."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(picture)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
