"""The demo (what ``ddmr demo`` runs): the main job, end to end on the embedded brain
template, on a CPU.

Steps (each resumable: a rerun skips finished steps and resumes training):

1. ``prepare`` -- cache the MNI ICBM152 2009a template (shipped inside nilearn) at ``SIZE^3``;
2. ``train-UW-NSD`` -- the paper's uncertainty-weighted, segmentation-guided design (light
   U-Net) trained from scratch for a wall-clock budget (``designs`` adds others, e.g. the
   baseline ``BL-N``), with pairs made on the fly by the augmentation layer, by ddmr's
   training recipe (``mixins/recipe/learnt.gin``; docs/research_notes.md, "Training that
   learns"; docs/training_notes.md) with the rate decayed over the budget
   (``mixins/recipe/budget.gin``). The default budget, 12 minutes, keeps the whole demo
   within 15 minutes on a 2-core CPU; ``max_time=3600`` is the hour-long run. Training and
   inference use the CPU cores not busy when the demo starts (:func:`free_cores`);
3. ``testset`` -- fixed evaluation pairs written once (the same for every method);
4. ``evaluate`` -- the trained networks, the shipped pretrained ``brain-mr`` when it is
   installed, and the baselines: per-pair CSV, summary table in the paper's format, box
   plots, median-pair figures.

Every network row is the network alone: no instance optimisation at inference.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ..errors import DdmrError
from .catalogue import design_config

if TYPE_CHECKING:  # the protocol (torch, files) is imported when a plan is made
    from .protocol import Step

#: the designs the demo trains by default
DESIGNS = ("UW-NSD",)
#: training budget per model (s): with the rest of the demo it fits 15 minutes on a 2-core CPU
DEFAULT_MAX_TIME = 720.0
#: its data, and the seed of its test pairs
DATASET, TESTSET_SEED = "mni_brain", 2023


@dataclass
class Demo:
    """Attributes:
        out: the demo's folder (data, runs, test set, report).
        size: grid ``size^3`` of the data and networks (a multiple of 16: the light U-Net
            has 4 levels).
        max_time: training seconds per model (default 12 minutes, :data:`DEFAULT_MAX_TIME`;
            3600 for the hour-long run); ignored when ``steps`` is given.
        steps: optimiser steps per model instead of a time budget.
        designs: the designs to train (catalogue names).
        pairs: test pairs.
        baselines: baseline plugins scored beside the networks.
        device: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or None.
    """
    out: Path | str = "demo_out"
    size: int = 64
    max_time: float | None = DEFAULT_MAX_TIME
    steps: int | None = None
    designs: Sequence[str] = DESIGNS
    pairs: int = 8
    baselines: Sequence[str] = ("ants_syn", "identity")
    device: str | None = None

    def check(self, registry) -> None:
        """Refuse bad values before any work (one-line errors)."""
        for name in self.baselines:  # an unknown name lists the known ones
            registry.entry("baselines", name)
        size = int(self.size)
        if size % 16 or size < 16:
            raise DdmrError(f"--size must be a positive multiple of 16 (the light U-Net has 4 levels), got {size}")
        if (self.steps is not None and self.steps < 1) or self.pairs < 1:
            raise DdmrError("--steps and --pairs must be positive")

    def plan(self) -> list[Step]:
        """Prepare, train each design by the recipe, write the test pairs, evaluate."""
        from ..plugins.registry import Registry
        from .protocol import data_bindings, evaluate_step, prepare_step, testset_step, train_step

        registry = Registry(bind_gin=False)
        self.check(registry)
        out, size = Path(self.out), int(self.size)
        max_time = None if self.steps is not None else self.max_time
        # ddmr's training recipe: the paper's protocol does not learn the rigid part of the
        # augmentation in a CPU budget; and the rate decayed over the budget, with steps too
        bindings = data_bindings(out / "data", size, light=True) + ["include 'mixins/recipe/learnt.gin'",
                                                                    "include 'mixins/recipe/budget.gin'"]
        steps = [prepare_step(DATASET, size, out / "data")]
        runs = {}
        for design in dict.fromkeys(self.designs):
            runs[design] = out / "runs" / design
            steps.append(train_step(design, design_config("brain", design), runs[design], self.steps, bindings,
                                    self.device, max_time=max_time))
        shipped = {}
        if "brain-mr" in registry.names("models"):  # the shipped model, trained by the same recipe
            shipped["brain-mr (pretrained)"] = "brain-mr"
        steps.append(testset_step(DATASET, self.pairs, size, TESTSET_SEED, out / "testset"))
        steps.append(evaluate_step(out / "testset", runs, self.baselines, out / "report", self.device,
                                   checkpoints=shipped))
        return steps

    def run(self) -> dict:
        """Run (or resume) the demo; returns the step timings (seconds)."""
        from .protocol import run_protocol

        return run_protocol(Path(self.out), self.plan(), title="demo")


def free_cores() -> int | None:
    """CPU threads for the demo's training and inference: the cores not already busy, at
    least 1; None (PyTorch's default) when ``OMP_NUM_THREADS`` is set or the load is unknown.
    Busy is the smaller of the 1-minute load average and the cores in use over the next
    second (:func:`busy_cores`): a core counts as taken only when both say so, so the
    load that ``make demo``'s own install leaves in the average (about 1 for a minute) does
    not halve the demo's threads, while another process that keeps a core busy does take
    one. On a shared 2-core machine, 2 threads with one core taken by another process ran a
    training step 5x slower than 1 thread (OpenMP threads waiting for each other,
    docs/training_notes.md)."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    now = busy_cores()
    if now is not None:
        busy = min(busy, now)
    cores = os.cpu_count() or 1
    return max(1, min(cores, int(cores - busy + 0.5)))


def busy_cores(seconds: float = 1.0) -> float | None:
    """Cores in use (all processes) over the next ``seconds``, from the CPU time counters
    of Linux's ``/proc/stat`` (the non-idle share of all CPUs' time, times their number);
    None where there is no such file."""
    def counters() -> tuple[int, int]:
        with open("/proc/stat") as fh:  # "cpu  user nice system idle iowait irq softirq steal ..."
            values = [int(v) for v in fh.readline().split()[1:9]]
        return sum(values), values[3] + values[4]  # all time, idle time (idle + iowait)

    try:
        total0, idle0 = counters()
        time.sleep(seconds)
        total1, idle1 = counters()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (1.0 - (idle1 - idle0) / (total1 - total0)) * (os.cpu_count() or 1)
