"""Preprocessing that brings an image (and its label map) to the network grid.

The paper's recipe (section 2.2), each step optional and configurable from gin as
``ddmr.preprocess`` (e.g. ``ddmr.preprocess.window = (-100, 300)``):

1. **crop** around the voxels of some labels (the liver for CT) with a margin in mm,
   on the original grid (the paper crops before resampling). At inference an image may
   come without a label map: ``apply(..., crop="foreground")`` then crops to the image's
   foreground (:meth:`Preprocess.foreground`) with the same margin;
2. **resample** to an isotropic spacing (1 mm);
3. **resize** to the network size (128^3), keeping the field of view
   (``align_corners=False``, the convention of :func:`ddmr_core.spatial.fields.resize_image`
   and :func:`ddmr_core.spatial.grids.resize_affine`);
4. **intensities**: a CT window ``(lo, hi)`` in HU, clipped and mapped to [0, 1], or
   (without a window) a robust min-max between two percentiles.

Steps 2 and 3 are both axis-aligned scalings of the voxel grid, so they are composed into
*one* interpolation (trilinear for images, nearest for label maps) with the exact
composed affine: ``out_affine = affine @ M`` where ``M`` maps output voxels to input
voxels. Downsampling applies a Gaussian pre-filter (``antialias``) to images so that
fine structure does not alias. The output affine is exact, so a displacement field
predicted on the output grid can be resampled back onto the original grid.

Arrays are ``(D, H, W)`` (nibabel's array axes); affines map voxels to RAS+ mm.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import gin
import numpy as np
from scipy import ndimage

from ..errors import ConfigError, DataError
from .io import spacing_from_affine
from ..spatial.grids import resize_matrix

#: ``crop_labels`` value meaning "every foreground label"
ALL_LABELS = "all"
#: what a recipe that crops around labels crops around: the label map (training, and
#: inference with label maps) or the image's foreground (inference without them)
CROP_MODES = ("labels", "foreground")
#: foreground: connected parts smaller than this fraction of the largest are dropped
FOREGROUND_MIN_PART = 0.1


def _tuple3(value, name, cast=float):
    if value is None:
        return None
    if isinstance(value, (int, float)):
        value = (value,) * 3
    value = tuple(cast(v) for v in value)
    if len(value) != 3:
        raise ConfigError(f"preprocess {name} must have 3 values, got {value}")
    return value


@dataclass(frozen=True)
class Grid:
    """The geometry of one preprocessing: the crop (in input voxels), then the map
    ``input_voxel = scale * output_voxel + offset`` from the cropped grid."""

    crop: tuple  # 3 slices on the input grid
    scale: np.ndarray  # (3,)
    offset: np.ndarray  # (3,)
    shape: tuple  # output (D, H, W)
    affine: np.ndarray  # output voxel -> RAS mm


def _extent(line: np.ndarray) -> tuple[int, int]:
    """First and last index of the true values of a non-empty 1-D boolean array."""
    nz = np.flatnonzero(line)
    return int(nz[0]), int(nz[-1])


@gin.configurable("preprocess", module="ddmr")
@dataclass
class Preprocess:
    """A serialisable preprocessing recipe; :meth:`apply` runs it on one volume.

    Args:
        spacing: target isotropic (or per-axis) spacing in mm; ``None`` keeps the grid.
        size: output grid ``(D, H, W)``; ``None`` keeps the resampled grid.
        crop_labels: crop around voxels with these label values (``"all"``: any
            foreground); ``None`` does not crop. Needs a segmentation (``apply``'s
            ``crop="foreground"`` crops to the image's foreground instead).
        crop_margin: margin around the crop box, mm.
        window: ``(lo, hi)`` intensity window (HU for CT): clip, then map to [0, 1].
        percentiles: without a window, map ``[p_lo, p_hi]`` percentiles to [0, 1]
            (clipping outside); ``(0, 100)`` is plain min-max.
        antialias: Gaussian pre-filter (sigma ``(r - 1) / 2`` voxels for a
            downsampling ratio ``r``) before downsampling images.
    """

    spacing: Any = (1.0, 1.0, 1.0)
    size: Any = (128, 128, 128)
    crop_labels: Any = None
    crop_margin: float = 10.0
    window: Any = None
    percentiles: Any = (0.0, 100.0)
    antialias: bool = True

    def __post_init__(self):
        self.spacing = _tuple3(self.spacing, "spacing")
        self.size = _tuple3(self.size, "size", int)
        if self.spacing is not None and not all(math.isfinite(v) and v > 0 for v in self.spacing):
            raise ConfigError(f"preprocess spacing must be positive, got {self.spacing}")
        if self.size is not None and min(self.size) < 1:
            raise ConfigError(f"preprocess size must be positive, got {self.size}")
        if self.crop_labels is not None and self.crop_labels != ALL_LABELS:
            labels = self.crop_labels
            labels = (labels,) if isinstance(labels, int) else labels
            self.crop_labels = tuple(int(v) for v in labels)
            if not self.crop_labels:
                raise ConfigError("preprocess crop_labels is empty; use None to skip cropping")
        self.crop_margin = float(self.crop_margin)
        if not (math.isfinite(self.crop_margin) and self.crop_margin >= 0):
            raise ConfigError(f"preprocess crop_margin must be >= 0 mm, got {self.crop_margin}")
        if self.window is not None:
            self.window = tuple(float(v) for v in self.window)
            # NaN compares false: without isfinite a NaN window passes and zeroes every image
            if len(self.window) != 2 or not all(map(math.isfinite, self.window)) or self.window[1] <= self.window[0]:
                raise ConfigError(f"preprocess window must be (lo, hi), finite, with lo < hi, got {self.window}")
        self.percentiles = tuple(float(v) for v in self.percentiles)
        p = self.percentiles
        if len(p) != 2 or not 0 <= p[0] < p[1] <= 100:
            raise ConfigError(f"preprocess percentiles must be (lo, hi) in 0..100 with lo < hi, got {p}")
        self.antialias = bool(self.antialias)

    # ------------------------------------------------------------ serialising
    def to_dict(self) -> dict:
        """Plain dict (lists, floats, strings, None) for checkpoints and cache indexes."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls, d: dict | None) -> "Preprocess":
        """Inverse of :meth:`to_dict` (missing keys take the defaults)."""
        if d is None:
            return cls()
        if isinstance(d, Preprocess):
            return d
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown preprocess setting(s) {unknown}; known: {sorted(names)}")
        return cls(**dict(d))

    def replace(self, **changes) -> "Preprocess":
        return dataclasses.replace(self, **changes)

    # -------------------------------------------------------------- geometry
    def foreground(self, image: np.ndarray) -> np.ndarray:
        """The image's foreground, a boolean mask: what a recipe that crops around labels
        crops to when there is no label map (inference on users' images).

        :func:`ddmr_core.spatial.prealign.foreground_mask`: the voxels that differ from the
        background's level (the median of the outermost voxel layer) by more than a tenth of
        the robust intensity range, so a scan with a bright background (an inverted image)
        gives the same mask as its dark-background counterpart; computed after clipping to
        the recipe's ``window`` if it has one (CT: air and the scanner's padding value fall
        below it). Then connected parts smaller than
        ``FOREGROUND_MIN_PART`` of the largest are dropped, so that a stray bright voxel
        or a small object beside the body does not widen the crop. On a skull-stripped
        brain (the ``mni_brain`` template) this is the brain, the region its label map
        covers; on a CT, the body."""
        v = np.asarray(image, dtype=np.float32)
        if self.window is not None:
            v = np.clip(v, *self.window)
        import torch

        from ..spatial.prealign import foreground_mask

        mask = foreground_mask(torch.from_numpy(np.ascontiguousarray(v))[None, None])[0, 0].numpy() > 0
        parts, n = ndimage.label(mask)
        if n > 1:
            sizes = np.bincount(parts.ravel())[1:]
            keep = np.flatnonzero(sizes >= FOREGROUND_MIN_PART * sizes.max()) + 1
            mask = np.isin(parts, keep)
        return mask

    def crops_around(self, seg) -> bool:
        """Whether the label map ``seg`` has voxels of the labels this recipe crops around
        (``False`` for a recipe that does not crop around labels, or no label map)."""
        if self.crop_labels is None or seg is None:
            return False
        seg = np.asarray(seg)
        return bool((seg > 0).any() if self.crop_labels == ALL_LABELS else np.isin(seg, self.crop_labels).any())

    def _crop_mask(self, seg, image, name: str, crop: str) -> np.ndarray:
        if crop not in CROP_MODES:
            raise ValueError(f"crop must be one of {CROP_MODES}, got {crop!r}")
        if crop == "foreground":
            if image is None:
                raise ValueError("crop='foreground' needs the image")
            return self.foreground(image)
        if seg is None:
            raise DataError(f"{name}: cropping around labels {self.crop_labels} needs a segmentation")
        mask = seg > 0 if self.crop_labels == ALL_LABELS else np.isin(seg, self.crop_labels)
        if not mask.any():
            raise DataError(
                f"{name}: the segmentation is empty (no voxel with label(s) "
                f"{self.crop_labels}), so it cannot be cropped around"
            )
        return mask

    def grid(self, shape: Sequence[int], affine: np.ndarray, seg: np.ndarray | None = None,
             name: str = "image", crop: str = "labels", image: np.ndarray | None = None) -> Grid:
        """The crop and output grid for an input of ``shape``/``affine`` (no resampling).

        ``crop``: for a recipe with ``crop_labels``, crop around the label map's voxels
        (``"labels"``, the default, needs ``seg``) or around the foreground of ``image``
        (``"foreground"``, see :meth:`foreground`), with ``crop_margin`` either way."""
        shape = tuple(int(s) for s in shape)
        affine = np.asarray(affine, dtype=np.float64)
        spacing = spacing_from_affine(affine)
        crop_box = tuple(slice(0, n) for n in shape)
        if self.crop_labels is not None:
            mask = self._crop_mask(seg, image, name, crop)
            # the mask's bounding box from its projection on each axis (np.argwhere would
            # list every voxel of a 1 mm brain: millions of index triples)
            first, last = zip(*(_extent(mask.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)))
            margin = np.ceil(self.crop_margin / spacing).astype(int)
            lo = np.maximum(np.asarray(first) - margin, 0)
            hi = np.minimum(np.asarray(last) + 1 + margin, shape)
            crop_box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
            shift = np.eye(4)
            shift[:3, 3] = lo
            affine = affine @ shift
        cshape = np.array([s.stop - s.start for s in crop_box], dtype=float)
        m = np.eye(4)
        n1 = cshape
        if self.spacing is not None:
            r1 = np.asarray(self.spacing) / spacing
            n1 = np.maximum(np.round(cshape / r1), 1)
            # same centre: input voxel (N-1)/2 sits at output voxel (n1-1)/2
            t1 = (cshape - 1) / 2 - (n1 - 1) / 2 * r1
            m[:3, :3] = np.diag(r1)
            m[:3, 3] = t1
        out_affine = affine @ m
        out_shape = tuple(int(v) for v in n1)
        if self.size is not None:
            m2 = resize_matrix(out_shape, self.size)
            out_affine = out_affine @ m2
            m = m @ m2
            out_shape = tuple(self.size)
        return Grid(crop_box, np.diag(m)[:3].copy(), m[:3, 3].copy(), out_shape, out_affine)

    # ---------------------------------------------------------------- running
    def apply(self, image: np.ndarray, affine: np.ndarray, seg: np.ndarray | None = None,
              name: str = "image", crop: str = "labels",
              resample_seg: bool = True) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """Preprocess one volume.

        Args:
            image: ``(D, H, W)`` (or ``(1, D, H, W)``) intensities (HU for CT).
            affine: ``(4, 4)`` voxel -> RAS mm.
            seg: optional uint8 label map on the same grid.
            name: used in error messages (e.g. the file name).
            crop: what a recipe with ``crop_labels`` crops around: ``"labels"`` (the
                label map ``seg``, which it then needs) or ``"foreground"`` (the image's,
                :meth:`foreground`; ``seg`` is only resampled). Inference on images
                without label maps uses ``"foreground"``.
            resample_seg: False: ``seg`` only chooses the crop, and None is returned in
                its place (``ddmr register`` never uses the working grid's label maps).

        Returns:
            ``(image float32 (D', H', W') in [0, 1], seg uint8 or None, affine float64)``.
        """
        image = np.asarray(image)
        if image.ndim == 4 and image.shape[0] == 1:
            image = image[0]
        if image.ndim != 3:
            raise DataError(f"{name}: a 3-D image is needed, got shape {tuple(image.shape)}")
        if seg is not None:
            seg = np.asarray(seg)
            if seg.ndim == 4 and seg.shape[0] == 1:
                seg = seg[0]
            if seg.shape != image.shape:
                raise DataError(
                    f"{name}: segmentation shape {tuple(seg.shape)} differs from image shape {tuple(image.shape)}"
                )
        g = self.grid(image.shape, affine, seg, name, crop=crop, image=image)
        image = np.asarray(image[g.crop], dtype=np.float32)
        seg = None if seg is None or not resample_seg else np.asarray(seg[g.crop])
        identity = np.allclose(g.scale, 1) and np.allclose(g.offset, 0) and tuple(image.shape) == g.shape
        if not identity:
            src = image
            if self.antialias and np.any(g.scale > 1 + 1e-6):
                sigma = np.maximum((g.scale - 1) / 2, 0)
                src = ndimage.gaussian_filter(image, sigma, mode="nearest")
            # edge replication matches torch's align_corners=False clamping at borders
            image = _zoom(src, g, order=1)
            if seg is not None:
                seg = _zoom(seg.astype(np.uint8), g, order=0)
        image = self.normalise(image)
        if seg is not None:
            seg = seg.astype(np.uint8)
        return image.astype(np.float32), seg, g.affine

    def normalise(self, image: np.ndarray) -> np.ndarray:
        """Intensities to [0, 1]: the window, else the percentile range."""
        if self.window is not None:
            lo, hi = self.window
        else:
            lo, hi = np.percentile(image, self.percentiles) if image.size else (0.0, 1.0)
        if not math.isfinite(hi - lo) or hi <= lo:
            return np.zeros_like(image, dtype=np.float32)
        return np.clip((image.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)


def _zoom(volume: np.ndarray, g: Grid, order: int) -> np.ndarray:
    """``out[o] = volume[scale * o + offset]``, values beyond the edges replicated: linear
    (``order=1``) as three 1-D passes in torch (:func:`~ddmr_core.spatial.fields.
    resample_separable`, on the CPU's threads: a 1 mm brain in 0.05 s instead of scipy's
    0.2 s), nearest (``order=0``, label maps) by scipy's diagonal fast path."""
    if order == 1:
        import torch

        from ..spatial.regrid import resample_separable

        positions = [torch.arange(n, dtype=torch.float64) * k + c for n, k, c in zip(g.shape, g.scale, g.offset)]
        vol = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None]
        return resample_separable(vol, positions)[0].numpy()
    with warnings.catch_warnings():
        # scipy warns that a 1-D matrix means a diagonal one since 0.18: that is intended
        warnings.simplefilter("ignore", UserWarning)
        return ndimage.affine_transform(
            volume, g.scale, g.offset, output_shape=g.shape, order=order, mode="nearest"
        )


def as_preprocess(value) -> Preprocess | None:
    """Accept a :class:`Preprocess`, a dict (see :meth:`Preprocess.to_dict`) or None."""
    if value is None or isinstance(value, Preprocess):
        return value
    if isinstance(value, dict):
        return Preprocess.from_dict(value)
    raise ConfigError(f"preprocess must be a Preprocess or a dict, got {type(value).__name__}")
