"""``prepared``: samples cached on disk by ``ddmr prepare`` (no preprocessing at load time).

Layout of a cache folder ``DIR`` (written and read by :mod:`ddmr_core.data.prepare`, which owns the format)::

    DIR/index.json                 # format, dataset, labels, preprocess, splits
    DIR/<split>/<index>.npz        # image float32 (D, H, W), seg uint8 (D, H, W) (optional), affine (4, 4)

``index.json`` is written last, so a folder without it is an unfinished cache and is
refused. Entries are plain (uncompressed) ``.npz`` files: loading one is a file read.
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from ddmr_core.data.prepare import read_entry, read_index

from .common import SPLITS, make_sample


def load_entry(path: Path) -> dict:
    """A cache entry (:func:`ddmr_core.data.prepare.read_entry`) as a dataset sample."""
    e = read_entry(path)
    return make_sample(e["image"], e["seg"], e["affine"], e["index"])


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
