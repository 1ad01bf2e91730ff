"""Segmentation overlap and distances between the fixed and the warped label maps:
``dsc``, ``hd``, ``hd95`` and ``tre``.

Label maps are ``(D, H, W)`` integer arrays (0 = background); the warped one comes from
nearest-neighbour warping. Distances use the voxel spacing and are in millimetres.
A label missing from one of the two maps makes its value NaN, and label means skip
NaNs (so the mean is over the labels that can be scored).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ddmr_core.spatial.similarity import centroid_distance
from ddmr_core.spatial.similarity import dice as overlap

from .base import Metric, foreground_labels, spacing_of

_CROSS = ndimage.generate_binary_structure(3, 1)


def _nanmean(values) -> float:
    values = np.asarray(list(values), dtype=np.float64)
    if values.size == 0 or np.all(np.isnan(values)):
        return float("nan")
    return float(np.nanmean(values))


def _segs(pair: dict):
    fixed, warped = pair.get("fixed_seg"), pair.get("warped_seg")
    if fixed is None or warped is None:
        return None, None
    return np.asarray(fixed), np.asarray(warped)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks (:func:`ddmr_core.spatial.similarity.dice`); NaN when both are empty."""
    return float(overlap(a, b))


def surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a face-neighbour outside it (the volume border counts as outside)."""
    return mask & ~ndimage.binary_erosion(mask, structure=_CROSS, border_value=0)


def surface_distances(a: np.ndarray, b: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from every surface voxel of ``a`` to the surface of ``b`` and back.

    Both masks must be non-empty. Only the bounding box of the two masks is processed:
    every nearest surface voxel lies inside it.
    """
    both = a | b
    box = ndimage.find_objects(both.astype(np.uint8))[0]
    box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
    sa, sb = surface(a[box]), surface(b[box])
    # the EDT of ~surface gives, everywhere, the distance to the nearest surface voxel
    dist_to_b = ndimage.distance_transform_edt(~sb, sampling=spacing)
    dist_to_a = ndimage.distance_transform_edt(~sa, sampling=spacing)
    return dist_to_b[sa], dist_to_a[sb]


def hausdorff(a: np.ndarray, b: np.ndarray, spacing, percentile: float | None = None) -> float:
    """Symmetric Hausdorff distance (mm) between the surfaces of two masks.

    ``percentile`` (e.g. 95) replaces each directed maximum by that percentile and takes
    the larger of the two (the HD95 of MONAI and Learn2Reg). NaN if a mask is empty."""
    if not a.any() or not b.any():
        return float("nan")
    d_ab, d_ba = surface_distances(a, b, spacing)
    if percentile is None:
        return float(max(d_ab.max(), d_ba.max()))
    return float(max(np.percentile(d_ab, percentile), np.percentile(d_ba, percentile)))


class DSC(Metric):
    """Dice similarity coefficient per foreground label and their mean.

    Returns ``{"": mean, "<label>": value, ...}`` (columns ``dsc``, ``dsc_<label>``)."""

    higher_is_better = True
    title = "DSC"

    def __init__(self, per_label: bool = True):
        self.per_label = per_label

    def __call__(self, pair: dict):
        fixed, warped = _segs(pair)
        if fixed is None:
            return float("nan")
        values = {str(lab): dice(fixed == lab, warped == lab) for lab in foreground_labels(pair, fixed)}
        mean = _nanmean(values.values())
        if not self.per_label:
            return mean
        return {"": mean, **values}


class HD(Metric):
    """Hausdorff distance (mm) between fixed and warped label surfaces, mean over labels.

    Args:
        percentile: ``None`` for the maximum (HD); 95 for HD95.
    """

    higher_is_better = False
    unit = "mm"

    def __init__(self, percentile: float | None = None):
        self.percentile = percentile
        self.title = "HD" if percentile is None else f"HD{percentile:g}"

    def __call__(self, pair: dict) -> float:
        fixed, warped = _segs(pair)
        if fixed is None:
            return float("nan")
        spacing = spacing_of(pair)
        return _nanmean(
            hausdorff(fixed == lab, warped == lab, spacing, self.percentile)
            for lab in foreground_labels(pair, fixed)
        )


class TRE(Metric):
    """Target registration error (mm): distance between the centroids of each label in the
    fixed and in the warped label map (the paper's definition,
    :func:`ddmr_core.spatial.similarity.centroid_distance`), mean over labels.

    The distance uses the voxel spacing only: an orthonormal orientation does not change it.
    """

    higher_is_better = False
    title = "TRE"
    unit = "mm"

    def __call__(self, pair: dict) -> float:
        fixed, warped = _segs(pair)
        if fixed is None:
            return float("nan")
        scale = np.diag(spacing_of(pair))
        return _nanmean(centroid_distance(fixed == lab, warped == lab, scale) for lab in foreground_labels(pair, fixed))


def dsc(per_label: bool = True) -> DSC:
    """Dice per label and mean over labels (higher is better)."""
    return DSC(per_label)


def hd() -> HD:
    """Hausdorff distance in mm, mean over labels (lower is better)."""
    return HD(None)


def hd95(percentile: float = 95.0) -> HD:
    """95th-percentile Hausdorff distance in mm, mean over labels (lower is better)."""
    return HD(percentile)


def tre() -> TRE:
    """Centroid distance in mm, mean over labels (lower is better)."""
    return TRE()
