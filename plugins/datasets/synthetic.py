"""``synthetic``: random smooth 3-D phantoms with labelled ellipsoids, generated in memory.

Meant for tests, smoke runs and tutorials: any size, no files, deterministic from a
seed. Each subject has a body ellipsoid (label 0 background) containing ``n_labels``
labelled ellipsoids of distinct intensities, plus smooth low-frequency texture.
It is synthetic and says so: no anatomy is implied.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset


def make_phantom(shape: Sequence[int], n_labels: int, seed: int):
    """``(image float32 in [0, 1], labels uint8)`` of one synthetic subject."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    image = np.zeros(shape, np.float32)
    labels = np.zeros(shape, np.uint8)
    body = sum((g / r) ** 2 for g, r in zip(grids, rng.uniform(0.75, 0.9, 3))) <= 1
    image[body] = 0.3
    for lab in range(1, n_labels + 1):
        centre = rng.uniform(-0.35, 0.35, 3)
        radii = rng.uniform(0.15, 0.3, 3)
        inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)) <= 1
        inside &= body
        image[inside] = 0.45 + 0.5 * lab / n_labels
        labels[inside] = lab
    # smooth texture: a few random low-frequency cosines
    for _ in range(3):
        k = rng.uniform(1, 3, 3)
        phase = rng.uniform(0, 2 * np.pi, 3)
        image += 0.03 * np.cos(sum(kk * np.pi * g + p for kk, g, p in zip(k, grids, phase))) * body
    image = np.clip(image, 0, 1)
    return image.astype(np.float32), labels


class _SyntheticSplit(Dataset):
    def __init__(self, owner: "SyntheticDataset", indices: Sequence[int]):
        self.owner, self.indices = owner, list(indices)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        subject = self.indices[i]
        image, labels = make_phantom(self.owner.shape, len(self.owner.labels), self.owner.seed * 100003 + subject)
        spacing = np.asarray(self.owner.spacing, np.float32)
        affine = np.diag(list(spacing) + [1.0]).astype(np.float64)
        return {
            "image": torch.from_numpy(image)[None],
            "seg": torch.from_numpy(labels)[None],
            "spacing": torch.from_numpy(spacing),
            "affine": torch.from_numpy(affine),
            "index": subject,
        }


class SyntheticDataset:
    """Args:
        shape: grid ``(D, H, W)`` of every subject.
        n_labels: number of foreground labels (1..n_labels).
        subjects: ``(train, validation, test)`` counts.
        spacing: voxel spacing in mm.
        seed: subject generation seed.
    """

    def __init__(
        self,
        shape: Sequence[int] = (32, 32, 32),
        n_labels: int = 3,
        subjects: Sequence[int] = (8, 2, 2),
        spacing: Sequence[float] = (1.0, 1.0, 1.0),
        seed: int = 0,
    ):
        if n_labels < 1 or n_labels > 255:
            raise ValueError(f"n_labels must be in 1..255, got {n_labels}")
        if len(shape) != 3 or min(shape) < 4:
            raise ValueError(f"shape must be three sizes of at least 4, got {tuple(shape)}")
        self.shape, self.spacing, self.seed = tuple(shape), tuple(spacing), seed
        # generated directly on the network grid: the only "preprocessing" to record is
        # that grid and a min-max to [0, 1] (what a user image needs to look alike)
        from ddmr_core.data.preprocess import Preprocess

        self.preprocess = Preprocess(spacing=None, size=self.shape, percentiles=(0.0, 100.0)).to_dict()
        self.labels = tuple(range(1, n_labels + 1))
        counts = [int(c) for c in subjects]
        if len(counts) != 3 or min(counts) < 0:
            raise ValueError(f"subjects must be three counts >= 0 (train, validation, test), got {tuple(subjects)}")
        starts = np.cumsum([0] + counts)
        self._splits = {
            name: range(starts[i], starts[i + 1])
            for i, name in enumerate(("train", "validation", "test"))
        }

    def split(self, name: str) -> Dataset:
        if name not in self._splits:
            raise KeyError(f"unknown split {name!r}; splits: {', '.join(self._splits)}")
        return _SyntheticSplit(self, self._splits[name])
