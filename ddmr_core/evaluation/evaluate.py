"""Evaluation: every method on every pair of a fixed test set, scored by the same code.

::

    from ddmr_core.evaluation.evaluate import evaluate
    evaluate("testset/", models=["BL-N=runs/bln/best.pt"], baselines=["identity", "ants_syn"],
             out="eval/")

Flow (paper, Section 2.6). For each test pair (written in advance by
``ddmr build-testset``, so all methods see the same pairs) and each method:

1. the method predicts a voxel pull field ``disp (3, D, H, W)`` on the test grid -- a model
   from a checkpoint or a registered model name, through
   :meth:`ddmr_core.registration.register.Registrar.predict` as ``ddmr register`` does (images resized
   to its input size, the field resized back and refined on the test grid), or a
   baseline plugin by name;
2. the field is applied to the moving image (linear) and its label map (nearest
   neighbour); ``runtime`` times prediction plus application, device synchronised;
3. with ``original_resolution`` and a test set that records the original grids, the field
   is carried to the fixed image's original grid through the affines and applied to the
   original moving image (the paper resampled back to isotropic 1 mm);
4. every metric plugin scores the pair dict (``docs/ARCHITECTURE.md``).

Outputs in ``out``: ``per_pair.csv`` (one row per method and pair; a column per metric,
per-label values as ``<metric>_<label>``; an ``error`` column), then ``summary.md``, box
plots and a median-pair figure per method (:mod:`ddmr_core.evaluation.report`). The folder
is written whole or not at all (:func:`ddmr_core.data.files.atomic_dir`): a crash, Ctrl-C or a
kill leaves an earlier report as it was, and a new report replaces an earlier one as a
whole; an existing ``out`` holding other files is refused before anything runs.

Failures: a checkpoint that does not load (also one with non-finite weights), a baseline
whose library is missing, a pair with missing files or a constant image, a method that
raises on one pair or returns a non-finite field or warped image, a metric that raises or
is infinite -- each is recorded in the ``error`` column of the affected rows (no value is
written for it), reported on the progress stream, and the run goes on; the command then
exits with status 1.

Test-set format (``docs/ARCHITECTURE.md``): ``DIR/manifest.csv`` with columns
``pair,fixed,moving,fixed_seg,moving_seg,disp_true,disp_true_npz`` (paths relative to
``DIR``, empty when absent) and ``DIR/testset.json`` (``dataset, size, seed, pairs,
labels``). Optional columns ``fixed_original, moving_original, fixed_seg_original,
moving_seg_original`` name the volumes on their original grids, for
``original_resolution``.
"""

from __future__ import annotations

import csv
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..devices import resolve_device
from ..errors import DataError, DdmrError
from ..data.io import check_field, check_finite
from ..data.files import atomic_dir, atomic_path, check_output_folder
from ..data.testset import read_testset
from .methods import build_methods
from .scoring import figure_slices, score_pair

#: order of the paper's tables, then the metrics beyond the paper
METRIC_ORDER = ("ssim", "ncc", "dsc", "hd", "hd95", "tre", "runtime", "folding", "sdlogj", "epe")


# ===================================================================== test set
class ResultsWriter:
    """Keeps the rows and rewrites ``per_pair.csv`` atomically after each one."""

    def __init__(self, path: Path, metric_names: Sequence[str]):
        self.path, self.metric_names, self.rows = Path(path), list(metric_names), []

    def columns(self) -> list[str]:
        seen = {k for r in self.rows for k in r} - {"method", "kind", "pair", "error"}
        cols = []
        for name in self.metric_names:  # main value, then its per-label columns
            cols.append(name)
            cols.extend(sorted((c for c in seen if c.startswith(name + "_") and c not in self.metric_names),
                               key=_natural))
        cols.extend(sorted(c for c in seen if c not in cols))
        return ["method", "kind", "pair"] + cols + ["error"]

    def add(self, row: dict) -> None:
        self.rows.append(row)
        self.write()

    def write(self) -> None:
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.columns(), restval="")
            writer.writeheader()
            for row in self.rows:
                writer.writerow({k: _fmt(v) for k, v in row.items()})


def _natural(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _fmt(v):
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(v)
    return v


# ===================================================================== loop
def is_evaluation_output(folder: str | Path) -> bool:
    """Whether ``folder`` holds only what :func:`evaluate` writes (``per_pair.csv``,
    ``summary.md``, ``boxplots.png``, ``median_pair_*.png``), so a new run may replace it."""
    for e in Path(folder).iterdir():
        if e.is_symlink() or not e.is_file():
            return False
        if not (e.name in ("per_pair.csv", "summary.md", "boxplots.png")
                or re.fullmatch(r"median_pair_[A-Za-z0-9_.-]+\.png", e.name)
                or (e.name.startswith(".") and ".ddmr-" in e.name)):
            return False
    return True



@dataclass
class EvaluationResult:
    rows: list
    out: Path
    failures: int
    methods: list = field(default_factory=list)


def evaluate(testset: str | Path, models: Sequence[str] = (), baselines: Sequence[str] = (),
             out: str | Path = "evaluation", original_resolution: bool = False,
             metrics: Sequence[str] | None = None, device: str | None = None, registry=None,
             progress: Callable[[str], Any] | None = None, figures: bool = True,
             gin_files: Sequence[str] = (), gin_bindings: Sequence[str] = (),
             unrefined: bool = False) -> EvaluationResult:
    """Evaluate models (checkpoint paths, optionally ``NAME=PATH``) and baselines (plugin
    names) on a test set; write ``out/per_pair.csv``, ``out/summary.md`` and figures.

    Args:
        metrics: metric plugin names (default: all registered, paper's order first).
        device: torch device for the models (default: CUDA when available),
            :func:`ddmr_core.devices.resolve_device`.
        progress: called with one line per method and pair and the other messages; default:
            the messages are printed and the method/pair runs counted by a progress bar on
            stderr (:func:`ddmr_core.progress.bar`: on a terminal only).
        gin_files, gin_bindings: gin configuration of the baselines and metrics, e.g.
            ``ddmr.baselines.ants_syn.reg_iterations = (100, 70, 50, 20)``.
        unrefined: also score each model without its instance optimisation
            (see :func:`build_methods`).

    Raises:
        DataError: the test set folder/manifest is unusable (before anything runs).
        DdmrError: no method given; UnknownNameError: an unknown baseline or metric.
    """
    from .report import write_report
    from ..data.guards import check_inputs_outside

    if not models and not baselines:
        raise DdmrError("nothing to evaluate: give at least one --model CKPT or --baseline NAME")
    out = check_output_folder(out, "--out", replaceable=is_evaluation_output, what="ddmr evaluate")
    # the report folder is replaced as a whole: no input may lie in it
    check_inputs_outside(out, {"test set": testset, **{f"--config {c}": c for c in gin_files},
                               **{f"--model {m}": m.split("=", 1)[-1] for m in models
                                  if isinstance(m, str) and Path(m.split("=", 1)[-1]).exists()}})
    device = resolve_device(device)
    tset = read_testset(testset)
    registry, make = _components(registry, gin_files, gin_bindings)
    names = list(metrics) if metrics else sorted(registry.names("metrics"),
                                                 key=lambda n: (METRIC_ORDER.index(n) if n in METRIC_ORDER else len(METRIC_ORDER), n))
    metric_objs = {n: make("metrics", n) for n in names}
    methods = build_methods(models, baselines, device, registry, make, unrefined=unrefined)
    report = _Progress(progress)
    if original_resolution and not tset.has_original:
        report.say("note: the test set records no original grids (manifest columns fixed_original, "
                   "moving_original); scoring on the test grid")
    # the report folder is written whole or not at all (replacing an earlier report)
    with atomic_dir(out, "--out", replaceable=is_evaluation_output, what="ddmr evaluate") as tmp:
        writer = ResultsWriter(tmp / "per_pair.csv", names)
        method_errors = _prepare_methods(methods, report.say)
        slices: dict | None = {} if figures else None
        failures = 0
        pair_names = tset.names()
        report.start(len(pair_names) * len(methods))
        for i, pname in enumerate(pair_names):
            pair, pair_error = None, None
            try:
                pair = tset.load(i, original=original_resolution)
            except Exception as exc:
                pair_error = _message(exc)
                report.say(f"pair {pname}: cannot be loaded, recorded for every method: {pair_error}")
            for m in methods:
                row = _run(m, pair, pname, method_errors.get(m.name) or pair_error, metric_objs,
                           tset.labels or None, original_resolution, slices, report)
                failures += bool(row["error"])
                writer.add(row)
        report.close()
        write_report(tmp, writer.rows, [m.name for m in methods], names, *_metric_labels(metric_objs, names),
                     slices, tset, models=_models_used(methods))
    report.say(f"results: {out / 'per_pair.csv'}, {out / 'summary.md'}"
               + (f"; {failures} failed method/pair run(s) recorded in the error column" if failures else ""))
    return EvaluationResult(writer.rows, out, failures, [m.name for m in methods])


class _Progress:
    """An evaluation's messages: to ``progress`` when given (one line per method/pair run
    and the other messages), else printed, with the runs counted by a progress bar on
    stderr (:func:`ddmr_core.progress.bar`: on a terminal only)."""

    def __init__(self, progress: Callable[[str], Any] | None):
        self.progress = progress
        self.counter = None  # the bar, between start() and close()
        self.total = self.done = 0

    def start(self, total: int) -> None:
        from ..progress import bar

        self.total = total
        if self.progress is None:
            self.counter = bar(total, "evaluate", "run")

    def say(self, line: str) -> None:
        from ..progress import write

        if self.progress is not None:
            self.progress(line)
        else:
            write(line, self.counter)

    def running(self, what: str) -> str:
        """Note the next method/pair run; its ``[k/total]`` prefix."""
        self.done += 1
        if self.counter is not None:
            self.counter.set_postfix_str(what, refresh=False)
        return f"[{self.done}/{self.total}] {what}"

    def finished(self, line: str) -> None:
        """A run's line: given to ``progress``, or counted by the bar (not printed)."""
        if self.progress is not None:
            self.progress(line)
        elif self.counter is not None:
            self.counter.update(1)

    def failed(self, line: str) -> None:
        self.say(line)
        if self.counter is not None:
            self.counter.update(1)

    def close(self) -> None:
        if self.counter is not None:
            self.counter.close()
            self.counter = None


def _run(method, pair, pname: str, error: str | None, metric_objs: dict, labels, original_resolution: bool,
         slices: dict | None, report: _Progress) -> dict:
    """One method on one pair: its ``per_pair.csv`` row (``error`` set when it failed,
    with ``error`` given when the method or the pair could not be prepared)."""
    row = {"method": method.name, "kind": method.kind, "pair": pname, "error": ""}
    prefix = report.running(f"{method.name} on {pname}")
    if error is None:
        try:
            values, record, seconds, metric_errors = _score(method, pair, pname, metric_objs, labels,
                                                            original_resolution)
        except Exception as exc:
            error = _message(exc)
        else:
            row.update(values)
            row["error"] = "; ".join(metric_errors)
            if slices is not None:
                slices[(method.name, pname)] = figure_slices(record)
            key = "dsc" if not math.isnan(values.get("dsc", float("nan"))) else next(iter(values), None)
            shown = f"{key} {values[key]:.3f}, " if key else ""
            report.finished(f"{prefix}: {shown}{seconds:.2f} s")
            return row
    row["error"] = error
    report.failed(f"{prefix}: FAILED ({error})")
    return row


def _components(registry, gin_files, gin_bindings):
    """``(registry, make)``: ``make(kind, name)`` builds a baseline or metric, configured by
    ``gin_files``/``gin_bindings`` when given."""
    from ..plugins.registry import Registry

    if gin_files or gin_bindings:
        from ..config.parsing import parse_config

        registry = parse_config(gin_files, gin_bindings, registry)
        return registry, lambda kind, name: registry.gin_wrapper(kind, name)()
    registry = registry or Registry(bind_gin=False)
    return registry, lambda kind, name: registry.get(kind, name)()


def _prepare_methods(methods, say) -> dict[str, str]:
    """Load every method; ``{name: error}`` of those that fail (recorded for every pair)."""
    errors: dict[str, str] = {}
    for m in methods:
        try:
            m.prepare()
            say(f"{m.name}: ready ({m.kind})")
        except Exception as exc:
            errors[m.name] = _message(exc)
            say(f"{m.name}: FAILED to load, recorded for every pair: {errors[m.name]}")
    return errors


def _score(method, pair, pname: str, metric_objs: dict, labels, original_resolution: bool):
    """``method`` on ``pair``, checked and scored: ``(values, record, seconds, metric errors)``."""
    disp, warped, seconds = method.predict(pair.fixed, pair.moving, pair.spacing)
    check_field(f"{method.name} on pair {pname!r}", disp)
    check_finite(f"{method.name} on pair {pname!r}", warped=warped)
    values, record, errors = score_pair(pair, disp, warped, seconds, metric_objs, labels, original_resolution)
    return values, record, seconds, errors


def _metric_labels(metric_objs: dict, names) -> tuple[dict, dict, dict]:
    """``(directions, titles, units)`` of the metrics, for the summary."""
    directions = {n: getattr(metric_objs[n], "higher_is_better", None) for n in names}
    titles = {n: getattr(metric_objs[n], "title", "") or n.upper() for n in names}
    units = {n: getattr(metric_objs[n], "unit", "") for n in names}
    return directions, titles, units


def _models_used(methods) -> dict:
    """What the report records of each model (its release, sha256, card)."""
    return {m.name: m.registrar.model_info for m in methods if m.kind == "model" and m.registrar is not None}


def _message(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    if isinstance(exc, DdmrError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
