"""Multi-step experiment protocols (the demo, the paper's experiments) that resume.

A protocol is a list of named steps run in order inside an output folder. A step that
finished leaves a marker in ``OUT/.steps/``; running the protocol again skips finished
steps and resumes the interrupted one (training resumes from its last checkpoint).
A failing step stops the protocol with an error naming the step; nothing a finished
step wrote is touched.

Steps call the library (:func:`ddmr_core.data.prepare.prepare_named`,
:func:`ddmr_core.training.trainer.train`, :func:`ddmr_core.data.build_testset.build_testset_named`,
:func:`ddmr_core.evaluation.evaluate.evaluate`), never the command line.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ..devices import resolve_device
from ..errors import DdmrError
from ..data.files import write_text_atomic


class StepFailed(DdmrError):
    """A protocol step failed; the message names the step and the cause."""


@dataclass
class Step:
    name: str
    run: Callable[[], None]
    description: str = ""
    #: files/folders the step produces, for the summary printed at the end
    outputs: Sequence[str] = field(default_factory=tuple)
    #: what the step was asked to do (a training budget): a finished step whose key has
    #: changed since runs again, and so does every step after it
    key: str = ""


def run_protocol(out: Path, steps: Sequence[Step], title: str = "protocol") -> dict:
    """Run ``steps`` in ``out``, skipping those already done. Returns step timings.

    A step is done when its marker (``out/.steps/NAME.done``) exists with the step's
    :attr:`Step.key` (a marker written before keys existed matches any key). A done step
    whose key changed (say, a larger ``--max-time``) runs again, resuming its work, and
    every step after it runs again too."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        marks = out / ".steps"
        marks.mkdir(exist_ok=True)
    except OSError as exc:
        raise StepFailed(f"{title}: cannot create output folder {str(out)!r}: {exc}") from exc
    timings = {}
    n = len(steps)
    redo = False
    for k, step in enumerate(steps, 1):
        marker = marks / f"{step.name}.done"
        head = f"[{title} {k}/{n}] {step.name}"
        if marker.exists() and not redo:
            done = json.loads(marker.read_text())
            if done.get("key", step.key) == step.key:
                print(f"{head}: done earlier, skipped", flush=True)
                timings[step.name] = done.get("seconds")
                continue
            print(f"{head}: done earlier for {done.get('key')!r}, now asked for {step.key!r}: continuing",
                  flush=True)
        if marker.exists():
            marker.unlink()
        redo = True  # what follows uses this step's output
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
        write_text_atomic(marker, json.dumps({"seconds": seconds, "key": step.key}))
        print(f"{head}: finished in {seconds:.0f} s", flush=True)
    return timings


# ------------------------------------------------------------ common steps
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
    """Cache the dataset ``dataset`` at ``size^3`` (:func:`ddmr_core.data.prepare.prepare_named`,
    which skips entries already written, so a rerun is cheap)."""
    def run():
        from ..data.prepare import prepare_named

        prepare_named(dataset, cache, size=size)

    return Step(f"prepare-{dataset}", run, f"cache {dataset} at {size}^3")


def train_step(name: str, config: str, run_dir: Path, steps: int | None, bindings: list[str], device=None,
               max_time: float | None = None) -> Step:
    """Train (or resume) one model with :func:`ddmr_core.training.trainer.train` for ``steps``
    optimiser steps and/or ``max_time`` seconds of training, counted over the whole run.
    ``device`` is checked now, before any step runs."""
    resolve_device(device)

    def run():
        from ..training.trainer import train

        resume = (Path(run_dir) / "last.pt").exists()
        train(config, bindings, run_dir=run_dir, max_steps=steps, max_time=max_time, device=device, resume=resume)

    budget = [f"{steps} optimiser steps"] if steps else []
    budget += [f"{max_time / 60:.0f} min"] if max_time else []
    what = " or ".join(budget) or "until early stopping"
    return Step(f"train-{name}", run, f"train {name} for {what} ({config})", key=what)


def testset_step(dataset: str, pairs: int, size: int, seed: int, out: Path) -> Step:
    """Write the fixed test pairs (:func:`ddmr_core.data.build_testset.build_testset_named`),
    or reuse the test set already in ``out`` so that every method sees the same pairs."""
    def run():
        from ..data.build_testset import build_testset_named

        if (Path(out) / "testset.json").exists():
            print(f"  test set {out} exists: reused, so every method sees the same pairs", flush=True)
            return
        build_testset_named(dataset, pairs, size, seed, out, overwrite=True)

    return Step(f"testset-{dataset}", run, f"write {pairs} fixed {dataset} test pairs")


def best_checkpoint(run_dir: Path) -> Path:
    best = Path(run_dir) / "best.pt"
    return best if best.exists() else Path(run_dir) / "last.pt"


def evaluate_step(testset: Path, models: dict, baselines, report: Path, device=None, unrefined=False,
                  checkpoints: dict | None = None) -> Step:
    """Score the best checkpoint of each run in ``models`` (``{name: run folder}``), the
    ``checkpoints`` as they are (``{name: checkpoint path or registered model name}``) and
    the ``baselines`` on ``testset`` (:func:`ddmr_core.evaluation.evaluate.evaluate`) into
    ``report``; a method/pair run that failed fails the step (after the report is written)."""
    resolve_device(device)

    def run():
        import shutil

        from ..evaluation.evaluate import evaluate

        if Path(report).exists():  # an interrupted evaluation is redone from scratch
            shutil.rmtree(report)
        specs = [f"{name}={best_checkpoint(d)}" for name, d in models.items()]
        specs += [f"{name}={c}" for name, c in (checkpoints or {}).items()]
        result = evaluate(testset, models=specs,
                          baselines=list(baselines), out=report, device=device, unrefined=unrefined)
        if result.failures:
            raise DdmrError(f"{result.failures} method/pair run(s) failed; see the error column of "
                            f"{str(Path(report) / 'per_pair.csv')!r}")

    what = ", ".join(list(models) + list(checkpoints or {}) + list(baselines))
    # keyed by the methods: asking for another set scores them all again, in one run
    return Step("evaluate", run, f"evaluate {what}", key=what)

