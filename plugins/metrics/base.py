"""What every built-in metric shares: its direction, its display name and its unit.

A metric is a callable on one evaluated pair (see ``docs/ARCHITECTURE.md``)::

    {"fixed", "moving", "warped": (D, H, W) float arrays,
     "fixed_seg", "moving_seg", "warped_seg": (D, H, W) uint8 label maps or None,
     "disp": (3, D, H, W) voxel pull field, "disp_true": same or None,
     "spacing": (3,) mm, "labels": foreground label values or None, "runtime": seconds}

returning a float, or ``{suffix: float}`` for several values (``""`` is the main value;
the evaluator names the columns ``<name>`` and ``<name>_<suffix>``). A metric whose
inputs are missing (no segmentations, no ground-truth field) returns NaN.
"""

from __future__ import annotations

import numpy as np


class Metric:
    """Base class: subclasses set the class attributes and implement ``__call__``."""

    #: True when larger values are better (SSIM, NCC, DSC); False for distances, times.
    higher_is_better: bool = False
    #: Column title in summary tables.
    title: str = ""
    #: Unit shown in summary tables ("" for unitless).
    unit: str = ""

    def __call__(self, pair: dict):  # pragma: no cover - abstract
        raise NotImplementedError


def foreground_labels(pair: dict, *segs) -> list[int]:
    """The pair's foreground labels: ``pair["labels"]`` if given, else the non-zero values
    found in ``segs``."""
    labels = pair.get("labels")
    if labels is not None and len(labels):
        return [int(v) for v in labels]
    found = set()
    for s in segs:
        if s is not None:
            found.update(int(v) for v in np.unique(s))
    found.discard(0)
    return sorted(found)


def spacing_of(pair: dict) -> np.ndarray:
    spacing = pair.get("spacing")
    if spacing is None:
        return np.ones(3)
    return np.asarray(spacing, dtype=np.float64).reshape(3)
