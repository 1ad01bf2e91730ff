"""``prepared``: samples cached on disk by ``ddmr prepare`` (no preprocessing at load time).

Layout of a cache folder ``DIR`` (written by :mod:`ddmr_core.data.prepare`, which owns the format)::

    DIR/index.json                 # format, dataset, labels, preprocess, splits
    DIR/<split>/<index>.npz        # image float32 (D, H, W), seg uint8 (D, H, W) (optional), affine (4, 4)

``index.json`` is written last, so a folder without it is an unfinished cache and is
refused. Entries are plain (uncompressed) ``.npz`` files: loading one is a file read.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from ddmr_core.errors import DataError
from ddmr_core.data.prepare import FORMAT, FORMAT_VERSION, INDEX, default_workers  # noqa: F401  (the format's owner)

from .common import SPLITS, make_sample

def read_index(path: str | Path) -> dict:
    root = Path(path)
    index = root / INDEX
    if not root.is_dir():
        raise DataError(f"prepared: cache folder {str(root)!r} not found (run `ddmr prepare --out {root}`)")
    if not index.is_file():
        raise DataError(
            f"prepared: {str(root)!r} has no {INDEX}: not a finished `ddmr prepare` cache "
            "(an interrupted run? run `ddmr prepare` again)"
        )
    try:
        meta = json.loads(index.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"prepared: {str(index)!r} cannot be read: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"prepared: {str(index)!r} is not a ddmr prepare index")
    return meta


def load_entry(path: Path) -> dict:
    try:
        with np.load(path) as z:
            image = z["image"]
            seg = z["seg"] if "seg" in z.files else None
            affine = z["affine"]
            index = int(z["index"])
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"prepared: cache entry {str(path)!r} cannot be read: {exc}") from exc
    return make_sample(image, seg, affine, index)


class _PreparedSplit(Dataset):
    def __init__(self, root: Path, entries: list):
        self.root, self.entries = root, entries

    def __len__(self):
        return len(self.entries)

    def __getitem__(self, i):
        return load_entry(self.root / self.entries[i]["file"])


class PreparedDataset:
    """A dataset read from a ``ddmr prepare`` cache.

    Args:
        path: the cache folder (``--out`` of ``ddmr prepare``).

    Attributes:
        labels, preprocess: as recorded by ``prepare`` (``preprocess`` is a dict).
        dataset: name of the dataset that was prepared.
    """

    def __init__(self, path: str = "prepared"):
        self.root = Path(path)
        meta = read_index(self.root)
        self.meta = meta
        self.dataset = meta.get("dataset")
        self.labels = tuple(int(v) for v in meta.get("labels", ()))
        self.preprocess = dict(meta.get("preprocess") or {})
        self._splits = {name: list(meta.get("splits", {}).get(name, [])) for name in SPLITS}

    def split(self, name: str) -> Dataset:
        if name not in self._splits:
            raise KeyError(f"unknown split {name!r}; splits: {', '.join(SPLITS)}")
        return _PreparedSplit(self.root, self._splits[name])
