"""``ddmr demo``: the main job, end to end on the embedded brain template, on a CPU.

    ddmr demo --out demo_out [--size 64] [--max-time 12m | --steps N] [--pairs 8] [--designs UW-NSD ...]

Steps (each resumable: a rerun skips finished steps and resumes training):

1. ``prepare`` -- cache the MNI ICBM152 2009a template (shipped inside nilearn) at ``SIZE^3``;
2. ``train-UW-NSD`` -- the paper's uncertainty-weighted, segmentation-guided design (light
   U-Net) trained from scratch for a wall-clock budget (``--designs`` adds others, e.g.
   the baseline ``BL-N``), with pairs made on the fly by the augmentation layer (TPS,
   rigid, gamma, brightness), by ddmr's training recipe (``mixins/recipe/learnt.gin``:
   affine start, coarse diffeomorphic field, supervision by the pairs' ground-truth
   fields, warm-up) with the rate decayed over the budget (``mixins/recipe/budget.gin``).
   The default budget, 12 minutes, keeps the whole demo within 15 minutes on a 2-core
   CPU; there the network came within 0.007 Dice of ANTs SyN at 64^3 (README);
   ``--max-time 60m`` is the hour-long run (which matched SyN with the earlier recipe).
   Training and inference use the CPU cores not busy when the demo starts
   (:func:`free_cores`);
3. ``testset`` -- fixed evaluation pairs written once (the same for every method);
4. ``evaluate`` -- the trained networks, the shipped pretrained ``brain-mr`` (the earlier
   recipe, trained for an hour; see docs/models.md) when it is installed, ``ants_syn``
   and ``identity``: per-pair CSV, summary table in the paper's format, box plots,
   median-pair figures;
then the table is printed with the location of everything.

Every network row is the network alone: no instance optimisation at inference.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import DdmrError
from . import duration
from ..protocol import (DESIGN_FILES, data_bindings, evaluate_step, prepare_step, run_protocol,
                        testset_step, train_step)

NAME = "demo"
HELP = "the main job: train UW-NSD on the embedded brain template, evaluate against ANTs"
ORDER = 5

DESIGNS = ("UW-NSD",)
#: training budget per model: with the rest of the demo it fits 15 minutes on a 2-core CPU
DEFAULT_MAX_TIME = 720.0


def add_arguments(parser):
    parser.add_argument("--out", default="demo_out", metavar="DIR", help="report folder (default: demo_out)")
    parser.add_argument("--size", type=int, default=64, metavar="S",
                        help="grid S^3 of the data and networks (multiple of 16; default 64)")
    parser.add_argument("--max-time", type=duration, default=DEFAULT_MAX_TIME, metavar="DURATION",
                        help="training time per model, e.g. 60m for the hour-long run (default 12m; counted "
                             "over the whole run, so a rerun with a longer time continues)")
    parser.add_argument("--steps", type=int, default=None, metavar="N",
                        help="optimiser steps per model instead of a time budget")
    parser.add_argument("--designs", nargs="+", default=list(DESIGNS), choices=list(DESIGN_FILES),
                        metavar="DESIGN", help=f"designs to train (default: {' '.join(DESIGNS)}; any of "
                                               f"{', '.join(DESIGN_FILES)})")
    parser.add_argument("--pairs", type=int, default=8, metavar="N", help="test pairs (default 8)")
    parser.add_argument("--baselines", nargs="*", default=["ants_syn", "identity"], metavar="NAME",
                        help="baselines to compare with (default: ants_syn identity)")
    parser.add_argument("--device", default=None, help="training/inference device (default: cuda if available)")


def build_steps(args) -> list:
    from ..registry import Registry

    registry = Registry(bind_gin=False)
    for name in args.baselines:  # before any training: an unknown name lists the known ones
        registry.entry("baselines", name)
    out = Path(args.out)
    size = int(args.size)
    if size % 16 or size < 16:
        raise DdmrError(f"--size must be a positive multiple of 16 (the light U-Net has 4 levels), got {size}")
    if (args.steps is not None and args.steps < 1) or args.pairs < 1:
        raise DdmrError("--steps and --pairs must be positive")
    max_time = None if args.steps is not None else args.max_time
    # ddmr's training recipe (docs/ARCHITECTURE.md, "Training that learns"): the paper's
    # protocol does not learn the rigid part of the augmentation in a CPU budget
    # ... and the rate decayed over the budget (mixins/recipe/budget.gin), with --steps too
    bindings = data_bindings(out / "data", size, light=True) + ["include 'mixins/recipe/learnt.gin'",
                                                                "include 'mixins/recipe/budget.gin'"]
    steps = [prepare_step("mni_brain", size, out / "data")]
    runs = {}
    for design in dict.fromkeys(args.designs):
        runs[design] = out / "runs" / design
        steps.append(train_step(design, f"experiments/brain/{DESIGN_FILES[design]}.gin", runs[design],
                                args.steps, bindings, args.device, max_time=max_time))
    shipped = {}
    if "brain-mr" in registry.names("models"):  # the shipped model, trained by the same recipe
        shipped["brain-mr (pretrained)"] = "brain-mr"
    steps.append(testset_step("mni_brain", args.pairs, size, 2023, out / "testset"))
    steps.append(evaluate_step(out / "testset", runs, args.baselines, out / "report", args.device,
                               checkpoints=shipped))
    return steps


def free_cores() -> int | None:
    """CPU threads for the demo's training and inference: the cores not already busy (by the
    1-minute load average), at least 1; None (PyTorch's default) when ``OMP_NUM_THREADS`` is
    set or the load is unknown. On a shared 2-core machine, 2 threads with one core taken by
    another process ran a training step 5x slower than 1 thread (OpenMP threads waiting
    for each other, docs/training_notes.md)."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    cores = os.cpu_count() or 1
    return max(1, min(cores, int(cores - busy + 0.5)))


def run(args) -> int:
    out = Path(args.out)
    threads = free_cores() if args.device in (None, "cpu") else None
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
        print(f"demo: {threads} CPU thread(s) ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; "
              "set OMP_NUM_THREADS to choose)", flush=True)
    timings = run_protocol(out, build_steps(args), title="demo")
    summary = out / "report" / "summary.md"
    print()
    print(summary.read_text() if summary.exists() else "(no summary table was written)")
    print(f"Report folder: {out / 'report'} (per_pair.csv, summary.md, box plots, median-pair figures)")
    print(f"TensorBoard:   tensorboard --logdir {out / 'runs'}")
    done = {k: v for k, v in timings.items() if v}
    print("Step times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in done.items())
          + f"; total {sum(done.values()):.0f}")
    return 0
