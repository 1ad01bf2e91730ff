"""Multi-step experiment protocols (the demo, the paper's experiments) that resume.

A protocol is a list of named steps run in order inside an output folder. A step that
finished leaves a marker in ``OUT/.steps/``; running the protocol again skips finished
steps and resumes the interrupted one (training resumes from its last checkpoint).
A failing step stops the protocol with an error naming the step; nothing a finished
step wrote is touched.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from .devices import resolve_device
from .errors import DdmrError
from .io import write_text_atomic


class StepFailed(DdmrError):
    """A protocol step failed; the message names the step and the cause."""


@dataclass
class Step:
    name: str
    run: Callable[[], None]
    description: str = ""
    #: files/folders the step produces, for the summary printed at the end
    outputs: Sequence[str] = field(default_factory=tuple)


def cli(*argv: str) -> None:
    """Run a ``ddmr`` sub-command in-process; raise :class:`DdmrError` if it fails."""
    from .cli import main

    code = main([str(a) for a in argv])
    if code:
        raise DdmrError(f"`ddmr {' '.join(str(a) for a in argv)}` exited with status {code}")


def run_protocol(out: Path, steps: Sequence[Step], title: str = "protocol") -> dict:
    """Run ``steps`` in ``out``, skipping those already done. Returns step timings."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        marks = out / ".steps"
        marks.mkdir(exist_ok=True)
    except OSError as exc:
        raise StepFailed(f"{title}: cannot create output folder {str(out)!r}: {exc}") from exc
    timings = {}
    n = len(steps)
    for k, step in enumerate(steps, 1):
        marker = marks / f"{step.name}.done"
        head = f"[{title} {k}/{n}] {step.name}"
        if marker.exists():
            print(f"{head}: done earlier, skipped", flush=True)
            timings[step.name] = json.loads(marker.read_text()).get("seconds")
            continue
        print(f"{head}: {step.description}", flush=True)
        t0 = time.perf_counter()
        try:
            step.run()
        except DdmrError as exc:
            raise StepFailed(f"{title} step '{step.name}' failed: {exc} (rerun to resume)") from exc
        except OSError as exc:
            raise StepFailed(
                f"{title} step '{step.name}' failed: {type(exc).__name__}: {exc} (rerun to resume)"
            ) from exc
        seconds = time.perf_counter() - t0
        timings[step.name] = seconds
        write_text_atomic(marker, json.dumps({"seconds": seconds}))
        print(f"{head}: finished in {seconds:.0f} s", flush=True)
    return timings


# ------------------------------------------------------------ common steps
DESIGN_FILES = {
    "BL-N": "bl_n", "BL-NS": "bl_ns", "SG-ND": "sg_nd",
    "SG-NSD": "sg_nsd", "UW-NSD": "uw_nsd", "UW-NSDH": "uw_nsdh",
}


def data_bindings(cache: Path, size: int, light: bool) -> list[str]:
    """Gin bindings that point an experiment config at a prepared cache and a grid size;
    ``light`` swaps the paper's U-Net for ddmr's light default (``mixins/backbone/default.gin``)."""
    out = [
        f"SIZE = ({size}, {size}, {size})",
        "ddmr.build_dataset.dataset = @ddmr.datasets.prepared()",
        f"ddmr.datasets.prepared.path = '{Path(cache).as_posix()}'",
    ]
    if light:
        out.append("include 'mixins/backbone/default.gin'")
    return out


def prepare_step(dataset: str, size: int, cache: Path) -> Step:
    # `ddmr prepare` skips entries already written, so rerunning it is cheap
    return Step(f"prepare-{dataset}", lambda: cli("prepare", "--dataset", dataset, "--size", size, "--out", cache),
                f"cache {dataset} at {size}^3")


def train_step(name: str, config: str, run_dir: Path, steps: int | None, bindings: list[str], device=None,
               max_time: float | None = None) -> Step:
    """Train (or resume) one model with :func:`ddmr_core.trainer.train` for ``steps``
    optimiser steps and/or ``max_time`` seconds of training, counted over the whole run.
    ``device`` is checked now, before any step runs."""
    resolve_device(device)

    def run():
        from .trainer import train

        resume = (Path(run_dir) / "last.pt").exists()
        train(config, bindings, run_dir=run_dir, max_steps=steps, max_time=max_time, device=device, resume=resume)

    budget = [f"{steps} optimiser steps"] if steps else []
    budget += [f"{max_time / 60:.0f} min"] if max_time else []
    return Step(f"train-{name}", run, f"train {name} for {' or '.join(budget) or 'until early stopping'} ({config})")


def testset_step(dataset: str, pairs: int, size: int, seed: int, out: Path) -> Step:
    def run():
        if (Path(out) / "testset.json").exists():
            print(f"  test set {out} exists: reused, so every method sees the same pairs", flush=True)
            return
        cli("build-testset", "--dataset", dataset, "--pairs", pairs, "--size", size, "--seed", seed,
            "--out", out, "--overwrite")

    return Step(f"testset-{dataset}", run, f"write {pairs} fixed {dataset} test pairs")


def best_checkpoint(run_dir: Path) -> Path:
    best = Path(run_dir) / "best.pt"
    return best if best.exists() else Path(run_dir) / "last.pt"


def evaluate_step(testset: Path, models: dict, baselines, report: Path, device=None, unrefined=False) -> Step:
    def run():
        import shutil

        args = []
        for name, run_dir in models.items():
            args += ["--model", f"{name}={best_checkpoint(run_dir)}"]
        for b in baselines:
            args += ["--baseline", b]
        if Path(report).exists():  # an interrupted evaluation is redone from scratch
            shutil.rmtree(report)
        dev = ["--device", device] if device else []
        extra = ["--unrefined"] if unrefined else []
        cli("evaluate", "--testset", testset, *args, "--out", report, *dev, *extra)

    what = ", ".join(list(models) + list(baselines))
    return Step("evaluate", run, f"evaluate {what}")
