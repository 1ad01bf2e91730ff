"""Caching a dataset's preprocessed samples on disk (``ddmr prepare`` as a library).

Each sample is written as ``OUT/<split>/<index>.npz`` (uncompressed: image float32, seg
uint8, affine, index) to a temporary file renamed into place
(:func:`ddmr_core.data.files.atomic_path`), so an interrupted or failed run never leaves a
half-written entry; a rerun with the same settings skips the entries already there.
``OUT/index.json`` (:data:`INDEX`: ``format``, ``dataset``, ``labels``, ``preprocess``,
``splits``) is written last. This module owns the format: it writes the cache
(:func:`prepare`) and reads it (:func:`read_index`, :func:`read_entry`), and the
``prepared`` dataset plugin reads through it::

    ddmr.build_dataset.dataset = @ddmr.datasets.prepared()
    ddmr.datasets.prepared.path = 'cache/abdomen'
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError, DdmrError
from .files import atomic_path, check_output_folder, write_text_atomic

#: the cache format (written and read here; ``ddmr_plugins.datasets.prepared`` reads through it)
FORMAT = "ddmr-prepared"
FORMAT_VERSION = 1
INDEX = "index.json"
#: the settings a cache was prepared with (a rerun must use the same)
SETTINGS = ".prepare.json"
SPLITS = ("train", "validation", "test")


def default_workers() -> int:
    """DataLoader workers for writing or reading a cache: the CPU count, at most 4."""
    return max(1, min(4, os.cpu_count() or 1))


def _atomic_save_npz(path: Path, **arrays) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)  # uncompressed: loading is a plain read


def read_index(path: str | Path) -> dict:
    """The index of a finished cache folder (:data:`INDEX`: ``format``, ``dataset``,
    ``labels``, ``preprocess``, ``splits``).

    Raises:
        DataError: no folder, no index (an unfinished cache), or not a ddmr prepare index."""
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


def read_entry(path: Path) -> dict:
    """One cache entry: ``{"image": float32 (D, H, W), "seg": uint8 (D, H, W) or None,
    "affine": (4, 4), "index": int}``.

    Raises:
        DataError: the entry cannot be read."""
    try:
        with np.load(path) as z:
            image = z["image"]
            seg = z["seg"] if "seg" in z.files else None
            affine = z["affine"]
            index = int(z["index"])
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"prepared: cache entry {str(path)!r} cannot be read: {exc}") from exc
    return {"image": image, "seg": seg, "affine": affine, "index": index}


class _Guarded:
    """Returns user errors as values so a DataLoader worker does not wrap them in a traceback."""

    def __init__(self, split, positions):
        self.split, self.positions = split, positions

    def __len__(self):
        return len(self.positions)

    def __getitem__(self, i):
        try:
            return self.split[self.positions[i]]
        except DdmrError as exc:
            return exc


def _check_workers(workers) -> None:
    if workers is not None and int(workers) < 0:
        raise ConfigError(f"--workers must be >= 0 (0: no worker processes), got {workers}")


def prepare(dataset, out: str | Path, name: str, splits=SPLITS, workers: int | None = None, log=print,
            progress: bool | None = None) -> dict:
    """Cache every sample of ``splits`` of ``dataset`` under ``out``; returns the index.

    ``log`` gets one summary line; the samples are counted by a progress bar on stderr
    (:func:`ddmr_core.progress.bar`; ``progress``: force it on or off, ``None``: on a
    terminal only)."""
    from ..progress import bar
    from torch.utils.data import DataLoader

    _check_workers(workers)
    out = check_output_folder(out, "--out", replace=False)
    out.mkdir(parents=True, exist_ok=True)
    preprocess = getattr(dataset, "preprocess", None)
    if preprocess is not None and not isinstance(preprocess, dict):
        preprocess = preprocess.to_dict() if hasattr(preprocess, "to_dict") else dict(preprocess)
    settings = {"dataset": name, "labels": [int(v) for v in dataset.labels], "preprocess": preprocess}
    settings_path = out / SETTINGS
    if settings_path.is_file():
        try:
            old = json.loads(settings_path.read_text())
        except ValueError:
            old = None
        if old != json.loads(json.dumps(settings)):
            raise DataError(
                f"cache folder {str(out)!r} holds samples prepared with other settings "
                f"({settings_path.name} differs); use another --out or delete it"
            )
    elif any(out.iterdir()):
        raise DataError(f"output folder {str(out)!r} is not empty and is not a ddmr prepare cache")
    write_text_atomic(settings_path, json.dumps(settings, indent=2))
    workers = default_workers() if workers is None else int(workers)
    index = {"format": FORMAT, "format_version": FORMAT_VERSION, **settings, "splits": {}}
    t0, written, skipped = time.perf_counter(), 0, 0
    for split_name in splits:
        split = dataset.split(split_name)
        entries: list = [None] * len(split)
        # a sample's file name needs its index, known only once loaded: entries of an
        # earlier run are found through a sidecar mapping split position -> entry
        done_path = out / split_name / ".positions.json"
        done = json.loads(done_path.read_text()) if done_path.is_file() else {}
        remaining = []
        for i in range(len(split)):
            rel = done.get(str(i))
            if rel and (out / rel["file"]).is_file():
                entries[i] = rel
                skipped += 1
            else:
                remaining.append(i)
        loader = DataLoader(_Guarded(split, remaining), batch_size=None, shuffle=False,
                            num_workers=workers if len(remaining) > 1 else 0, collate_fn=lambda x: x)
        counter = bar(len(split), f"prepare {split_name}", "sample", progress, initial=len(split) - len(remaining))
        for k, sample in enumerate(loader):
            if isinstance(sample, Exception):
                counter.close()
                raise sample
            pos = remaining[k]
            idx = int(sample["index"])
            rel = f"{split_name}/{idx:05d}.npz"
            arrays = {"image": sample["image"].numpy()[0], "affine": sample["affine"].numpy(), "index": np.int64(idx)}
            if "seg" in sample:
                arrays["seg"] = sample["seg"].numpy()[0]
            _atomic_save_npz(out / rel, **arrays)
            entries[pos] = {"file": rel, "index": idx}
            done[str(pos)] = entries[pos]
            write_text_atomic(done_path, json.dumps(done))
            written += 1
            counter.update(1)
        counter.close()
        index["splits"][split_name] = entries
    write_text_atomic(out / INDEX, json.dumps(index, indent=2) + "\n")
    log(f"prepared {written} samples ({skipped} already cached) into {out} in {time.perf_counter() - t0:.1f} s")
    return index


def prepare_named(name: str, out: str | Path, size: int | None = None, configs=(), bindings=(), splits=SPLITS,
                  workers: int | None = None, log=print, progress: bool | None = None) -> dict:
    """What ``ddmr prepare`` does: check the arguments and ``out`` (before the dataset is
    built, which can take minutes), build the dataset plugin ``name``
    (:func:`ddmr_core.data.datasets.build_named_dataset`: its data mix-in, ``configs``,
    ``bindings``, ``SIZE = size``) and :func:`prepare` it into ``out``. Returns the index."""
    from .datasets import build_named_dataset

    _check_workers(workers)
    if size is not None and size < 2:
        raise ConfigError(f"--size must be >= 2, got {size}")
    check_output_folder(out, "--out", replace=False)
    dataset, _ = build_named_dataset(name, configs, bindings, size)
    return prepare(dataset, out, name, splits, workers, log, progress)
