"""Timings of the evaluation: each metric on one pair, and the ANTs baselines.

    python benchmarks/evaluate.py [--size 128] [--labels 17] [--ants-size 64]

Prints seconds per metric call on a synthetic ``size^3`` pair with ``labels`` labels
(the paper's IXI setting is 128^3 and 17 labels), then seconds per registration for
the ANTs baselines at ``ants-size^3`` (``--ants-size 0`` skips them).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--labels", type=int, default=17)
    ap.add_argument("--ants-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from ddmr_core.plugins.registry import Registry
    from ddmr_core.spatial.fields import warp
    from ddmr_plugins.datasets.synthetic import make_phantom

    shape = (args.size,) * 3
    fixed, seg = make_phantom(shape, args.labels, seed=0)
    g = torch.linspace(0, 2 * np.pi, args.size)
    u = torch.stack(torch.meshgrid(g, g, g, indexing="ij")).sin() * 2.0  # smooth, up to 2 voxels
    moving = warp(torch.from_numpy(fixed)[None, None], -u[None])[0, 0].numpy()
    mseg = warp(torch.from_numpy(seg)[None, None], -u[None], mode="nearest")[0, 0].numpy()
    disp = u.numpy().astype(np.float32)
    warped = warp(torch.from_numpy(moving)[None, None], u[None])[0, 0].numpy()
    wseg = warp(torch.from_numpy(mseg)[None, None], u[None], mode="nearest")[0, 0].numpy()
    pair = {"fixed": fixed, "moving": moving, "warped": warped, "fixed_seg": seg, "moving_seg": mseg,
            "warped_seg": wseg, "disp": disp, "disp_true": disp * 0.9, "spacing": np.ones(3),
            "labels": tuple(range(1, args.labels + 1)), "runtime": 0.0}
    reg = Registry(bind_gin=False)
    print(f"metrics on one {args.size}^3 pair, {args.labels} labels (best of {args.repeats}):")
    for name in reg.names("metrics"):
        metric = reg.get("metrics", name)()
        metric(pair)  # warm-up (imports)
        best = min(_timed(metric, pair) for _ in range(args.repeats))
        print(f"  {name:8s} {best:8.3f} s")
    if args.ants_size:
        small = (args.ants_size,) * 3
        f = torch.nn.functional.interpolate(torch.from_numpy(fixed)[None, None], size=small, mode="trilinear")[0, 0].numpy()
        m = torch.nn.functional.interpolate(torch.from_numpy(moving)[None, None], size=small, mode="trilinear")[0, 0].numpy()
        print(f"ANTs baselines at {args.ants_size}^3 (defaults):")
        for name in ("ants_syn", "ants_syncc"):
            method = reg.get("baselines", name)()
            if not method.available():
                print(f"  {name:10s} antspyx not installed")
                continue
            start = time.perf_counter()
            method.register(f, m, (1.0, 1.0, 1.0))
            print(f"  {name:10s} {time.perf_counter() - start:8.2f} s")


def _timed(fn, pair):
    start = time.perf_counter()
    fn(pair)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
