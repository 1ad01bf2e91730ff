"""``ddmr demo``: the main job, end to end on the embedded brain template, on a CPU.

    ddmr demo --out demo_out [--size 64] [--max-time 12m | --steps N] [--pairs 8] [--designs UW-NSD ...]

The demo is library code (:class:`ddmr_core.experiments.demo.Demo`: its steps and defaults);
this module turns arguments into one, runs it and prints the table with the location of
everything.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import duration
from ..experiments.catalogue import design_files
from ..experiments.demo import Demo, free_cores


def add_arguments(parser):
    designs = design_files()
    parser.add_argument("--out", default=Demo.out, metavar="DIR", help=f"report folder (default: {Demo.out})")
    parser.add_argument("--size", type=int, default=Demo.size, metavar="S",
                        help=f"grid S^3 of the data and networks (multiple of 16; default {Demo.size})")
    parser.add_argument("--max-time", type=duration, default=Demo.max_time, metavar="DURATION",
                        help=f"training time per model, e.g. 60m for the hour-long run (default "
                             f"{Demo.max_time / 60:g}m; counted over the whole run, so a rerun with a longer time "
                             "continues)")
    parser.add_argument("--steps", type=int, default=None, metavar="N",
                        help="optimiser steps per model instead of a time budget")
    parser.add_argument("--designs", nargs="+", default=list(Demo.designs), choices=list(designs),
                        metavar="DESIGN", help=f"designs to train (default: {' '.join(Demo.designs)}; any of "
                                               f"{', '.join(designs)})")
    parser.add_argument("--pairs", type=int, default=Demo.pairs, metavar="N", help=f"test pairs (default {Demo.pairs})")
    parser.add_argument("--baselines", nargs="*", default=list(Demo.baselines), metavar="NAME",
                        help=f"baselines to compare with (default: {' '.join(Demo.baselines)})")
    parser.add_argument("--device", default=None, help="training/inference device (default: cuda if available)")


def run(args) -> int:
    spec = Demo(out=args.out, size=args.size, max_time=args.max_time, steps=args.steps, designs=args.designs,
                pairs=args.pairs, baselines=args.baselines, device=args.device)
    threads = free_cores() if args.device in (None, "cpu") else None
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
        print(f"demo: {threads} CPU thread(s) (the free ones of {os.cpu_count()} cores; "
              "set OMP_NUM_THREADS to choose)", flush=True)
    timings = spec.run()
    out = Path(spec.out)
    summary = out / "report" / "summary.md"
    print()
    print(summary.read_text() if summary.exists() else "(no summary table was written)")
    print(f"Report folder: {out / 'report'} (per_pair.csv, summary.md, box plots, median-pair figures)")
    print(f"TensorBoard:   tensorboard --logdir {out / 'runs'}")
    done = {k: v for k, v in timings.items() if v}
    print("Step times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in done.items())
          + f"; total {sum(done.values()):.0f}")
    return 0
