"""Shared machinery of the built-in dataset plugins: subjects, seeded splits, samples.

A dataset is a list of subjects, each a loader returning ``(image, seg or None, affine)``
on its original grid, plus a :class:`ddmr_core.data.preprocess.Preprocess` that brings it to
the network grid. ``split(name)`` gives a ``torch.utils.data.Dataset`` of samples::

    {"image": float32 (1, D, H, W) in [0, 1], "seg": uint8 (1, D, H, W) (when the
     dataset has segmentations), "spacing": float32 (3,) mm, "affine": float64 (4, 4),
     "index": int (the subject's index in the whole dataset)}

Splits are deterministic: subjects are shuffled with ``numpy.random.default_rng(seed)``
and cut into train/validation/test by counts or fractions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ddmr_core.errors import ConfigError, DataError
from ddmr_core.data.io import spacing_from_affine
from ddmr_core.data.preprocess import Preprocess, as_preprocess

SPLITS = ("train", "validation", "test")


def split_counts(n: int, splits: Sequence[float]) -> list[int]:
    """Counts per split from counts (ints summing to ``n``) or fractions (summing to 1)."""
    splits = list(splits)
    if len(splits) != 3 or any(s < 0 for s in splits):
        raise ConfigError(f"splits must be three non-negative numbers (train, validation, test), got {splits}")
    if all(float(s).is_integer() and s >= 1 or s == 0 for s in splits) and sum(splits) == n:
        return [int(s) for s in splits]
    total = float(sum(splits))
    if abs(total - 1.0) > 1e-6:
        raise ConfigError(
            f"splits {splits} are neither counts summing to the {n} subjects nor fractions summing to 1"
        )
    val = int(round(splits[1] * n))
    test = int(round(splits[2] * n))
    return [n - val - test, val, test]


def seeded_splits(n: int, splits: Sequence[float], seed: int) -> dict[str, list[int]]:
    """Subject positions per split: a seeded permutation cut by :func:`split_counts`."""
    counts = split_counts(n, splits)
    order = np.random.default_rng(seed).permutation(n).tolist()
    out, start = {}, 0
    for name, c in zip(SPLITS, counts):
        out[name] = sorted(order[start : start + c])
        start += c
    return out


@dataclass
class Subject:
    """One subject: a name and a loader of ``(image, seg or None, affine)`` (raw grid)."""

    name: str
    load: Callable[[], tuple]
    has_seg: bool = True


def make_sample(image, seg, affine, index: int) -> dict:
    """A sample dict in the dataset contract's layout from NumPy arrays."""
    affine = np.asarray(affine, dtype=np.float64)
    sample = {
        "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None],
        "spacing": torch.from_numpy(spacing_from_affine(affine).astype(np.float32)),
        "affine": torch.from_numpy(affine),
        "index": int(index),
    }
    if seg is not None:
        sample["seg"] = torch.from_numpy(np.ascontiguousarray(seg, dtype=np.uint8))[None]
    return sample


class SubjectSplit(Dataset):
    """The samples of one split (loads and preprocesses on access)."""

    def __init__(self, owner: "SubjectDataset", positions: Sequence[int], name: str):
        self.owner, self.positions, self.name = owner, list(positions), name

    def __len__(self):
        return len(self.positions)

    def __getitem__(self, i):
        if not -len(self) <= i < len(self):
            raise IndexError(f"{self.name} split has {len(self)} samples, index {i}")
        return self.owner.sample(self.positions[i])


class SubjectDataset:
    """Base of the file-backed and generated datasets.

    Args:
        subjects: the subjects, in a fixed order (their position is the sample ``index``).
        labels: foreground label values.
        preprocess: the :class:`Preprocess` (or dict) applied to every subject.
        assignment: positions per split name.
    """

    def __init__(self, subjects: list[Subject], labels: Sequence[int], preprocess,
                 assignment: dict[str, list[int]]):
        self.subjects = list(subjects)
        self.labels = tuple(int(v) for v in labels)
        self.preprocessing: Preprocess = as_preprocess(preprocess) or Preprocess()
        self._assignment = {name: list(assignment.get(name, [])) for name in SPLITS}

    @property
    def preprocess(self) -> dict:
        """The preprocessing applied to every sample (for checkpoints)."""
        return self.preprocessing.to_dict()

    @property
    def subject_names(self) -> list[str]:
        return [s.name for s in self.subjects]

    def split_names(self, name: str) -> list[str]:
        return [self.subjects[p].name for p in self._positions(name)]

    def _positions(self, name: str) -> list[int]:
        if name not in self._assignment:
            raise KeyError(f"unknown split {name!r}; splits: {', '.join(SPLITS)}")
        return self._assignment[name]

    def split(self, name: str) -> Dataset:
        """``train``, ``validation`` or ``test`` as a ``torch.utils.data.Dataset``."""
        return SubjectSplit(self, self._positions(name), name)

    def load_raw(self, position: int) -> tuple:
        """``(image, seg or None, affine)`` of a subject on its original grid."""
        return self.subjects[position].load()

    def sample(self, position: int) -> dict:
        subject = self.subjects[position]
        image, seg, affine = subject.load()
        image, seg, affine = self.preprocessing.apply(image, affine, seg, name=subject.name)
        return make_sample(image, seg, affine, position)


def scan_labels(segs: Sequence, what: str = "segmentations") -> tuple[int, ...]:
    """Union of the foreground values of label maps given as arrays or loaders."""
    values: set[int] = set()
    for s in segs:
        arr = s() if callable(s) else s
        values.update(int(v) for v in np.unique(arr) if v != 0)
    if not values:
        raise DataError(f"all {what} are empty (no foreground label)")
    return tuple(sorted(values))
