"""``ddmr prepare``: preprocess a dataset once and cache the samples on disk.

    ddmr prepare --dataset abdomen_phantom --out cache/abdomen [--gin BINDING]... [--config FILE]...

The dataset is built from the registry with the shipped data mix-in
``mixins/data/<NAME>.gin`` (when there is one), then ``--config`` files, then ``--gin``
bindings; ``SIZE`` defaults to ``--size`` (128). Each sample is written as
``OUT/<split>/<index>.npz`` (uncompressed: image float32, seg uint8, affine, index) to a
temporary file renamed into place, so an interrupted or failed run never leaves a
half-written entry; a rerun with the same settings skips the entries already there.
``OUT/index.json`` is written last; the ``prepared`` dataset plugin reads the cache::

    ddmr.build_dataset.dataset = @ddmr.datasets.prepared()
    ddmr.datasets.prepared.path = 'cache/abdomen'
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError, DdmrError
from ..io import atomic_path, check_output_folder, write_text_atomic

NAME = "prepare"
HELP = "preprocess a dataset once and cache it on disk (for fast training epochs)"
ORDER = 20

SETTINGS = ".prepare.json"


def add_arguments(parser):
    parser.add_argument("--dataset", required=True, metavar="NAME", help="dataset plugin name (see `ddmr plugins`)")
    parser.add_argument("--out", required=True, metavar="DIR", help="cache folder")
    parser.add_argument("--config", action="append", default=[], metavar="FILE",
                        help="extra gin file (repeatable)")
    parser.add_argument("--gin", action="append", default=[], metavar="BINDING",
                        help="gin binding, e.g. \"ddmr.datasets.abdomen_phantom.patients = 10\" (repeatable)")
    parser.add_argument("--size", type=int, default=None, metavar="S",
                        help="network grid S^3 (binds SIZE; default 128 unless a config sets SIZE)")
    parser.add_argument("--splits", nargs="+", default=["train", "validation", "test"],
                        choices=["train", "validation", "test"], help="splits to cache")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="worker processes (default: CPU count, at most 4)")


def build_named_dataset(name: str, configs=(), bindings=(), size: int | None = None):
    """Parse the data mix-in of ``name`` (if shipped), ``configs`` and ``bindings``, then
    build the dataset plugin ``name`` through gin. Returns ``(dataset, registry)``."""
    import gin

    from ..config import config_root, parse_config
    from ..registry import Registry

    registry = Registry()
    registry.entry("datasets", name)  # unknown name -> clear error listing the names
    files = []
    mixin = config_root() / "mixins" / "data" / f"{name}.gin"
    if mixin.is_file():
        files.append(mixin)
    files += list(configs)
    extra = [] if size is None else [f"SIZE = ({size}, {size}, {size})"]
    parse_config(files, list(bindings) + extra, registry=registry)
    try:
        gin.query_parameter("SIZE/macro.value")
    except ValueError:  # no config set SIZE: the paper's 128^3
        parse_config(files, list(bindings) + ["SIZE = (128, 128, 128)"], registry=registry)
    try:
        dataset = registry.create("datasets", name)
    except DdmrError as exc:
        # gin appends "In call to configurable ..." lines: keep the one-line message
        # (gin re-raises a proxy subclass: rebuild the ddmr class it derives from)
        lines = str(exc).splitlines() or [""]
        cls = next((c for c in (DataError, ConfigError, DdmrError) if isinstance(exc, c)))
        raise cls(f"dataset {name!r}: {lines[0]}") from exc
    except (TypeError, ValueError) as exc:
        raise DataError(f"dataset {name!r} cannot be built: {exc}") from exc
    return dataset, registry


def _atomic_save_npz(path: Path, **arrays) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)  # uncompressed: loading is a plain read


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


def prepare(dataset, out: str | Path, name: str, splits=("train", "validation", "test"),
            workers: int | None = None, log=print) -> dict:
    """Cache every sample of ``splits`` of ``dataset`` under ``out``; returns the index."""
    from torch.utils.data import DataLoader

    from ddmr_plugins.datasets.prepared import FORMAT, FORMAT_VERSION, INDEX, default_workers

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
        for k, sample in enumerate(loader):
            if isinstance(sample, Exception):
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
            log(f"  {rel}  ({written + skipped} samples, {time.perf_counter() - t0:.1f} s)")
        index["splits"][split_name] = entries
    write_text_atomic(out / INDEX, json.dumps(index, indent=2) + "\n")
    log(f"prepared {written} samples ({skipped} already cached) into {out} in {time.perf_counter() - t0:.1f} s")
    return index


def run(args) -> int:
    # every argument is checked before the dataset is built (which can take minutes)
    _check_workers(args.workers)
    if args.size is not None and args.size < 2:
        raise ConfigError(f"--size must be >= 2, got {args.size}")
    check_output_folder(args.out, "--out", replace=False)
    dataset, _ = build_named_dataset(args.dataset, args.config, args.gin, args.size)
    prepare(dataset, args.out, args.dataset, args.splits, args.workers)
    return 0
