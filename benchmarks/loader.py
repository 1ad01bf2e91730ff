"""Samples per second read from a ``ddmr prepare`` cache at 128^3 with the default workers.

    python benchmarks/loader.py [--cache DIR] [--samples N] [--workers W] [--batch B]

Without ``--cache`` it first prepares a small cache of the (synthetic) abdomen phantom at
128^3 in a temporary folder (preparing is not timed). The timed loop iterates a
``torch.utils.data.DataLoader`` over the cache's train split, as a training loop does,
for ``--samples`` samples after one warm-up batch. Target: >= 20 samples/s.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time


def main(argv=None) -> int:
    from torch.utils.data import DataLoader

    from ddmr_core.data.prepare import prepare
    from ddmr_plugins.datasets.abdomen_phantom import AbdomenPhantomDataset
    from ddmr_core.data.prepare import default_workers
    from ddmr_plugins.datasets.prepared import PreparedDataset

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", default=None, help="a `ddmr prepare` folder (default: build one)")
    p.add_argument("--samples", type=int, default=200, help="samples to time")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: the cache default)")
    p.add_argument("--batch", type=int, default=1, help="batch size (the paper trains with 1)")
    args = p.parse_args(argv)

    tmp = None
    cache = args.cache
    if cache is None:
        tmp = tempfile.TemporaryDirectory(prefix="ddmr-loader-")
        cache = os.path.join(tmp.name, "cache")
        ds = AbdomenPhantomDataset(patients=8, splits=(8, 0, 0), size=(128, 128, 128))
        t = time.perf_counter()
        prepare(ds, cache, "abdomen_phantom", splits=("train",), log=lambda *a: None)
        print(f"prepared 8 abdomen_phantom samples at 128^3 in {time.perf_counter() - t:.1f} s "
              f"({(time.perf_counter() - t) / 8:.2f} s/sample, not timed below)")
    split = PreparedDataset(cache).split("train")
    workers = default_workers() if args.workers is None else args.workers
    loader = DataLoader(split, batch_size=args.batch, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0)
    shape = tuple(split[0]["image"].shape[1:])
    it, seen = iter(loader), 0
    next(it)  # warm-up: start the workers
    t0 = time.perf_counter()
    while seen < args.samples:
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        seen += batch["image"].shape[0]
    dt = time.perf_counter() - t0
    print(f"loader: {seen / dt:.1f} samples/s ({seen} samples of {shape}, batch {args.batch}, "
          f"{workers} workers, {os.cpu_count()} CPUs)")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
