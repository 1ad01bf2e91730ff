"""Evaluation: every method on every pair of a fixed test set, scored by the same code.

::

    from ddmr_core.evaluate import evaluate
    evaluate("testset/", models=["BL-N=runs/bln/best.pt"], baselines=["identity", "ants_syn"],
             out="eval/")

Flow (paper, Section 2.6). For each test pair (written in advance by
``ddmr build-testset``, so all methods see the same pairs) and each method:

1. the method predicts a voxel pull field ``disp (3, D, H, W)`` on the test grid -- a model
   from a checkpoint or a registered model name, through
   :meth:`ddmr_core.register.Registrar.predict` as ``ddmr register`` does (images resized
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
plots and a median-pair figure per method (:mod:`ddmr_core.evaluate_report`). The folder
is written whole or not at all (:func:`ddmr_core.io.atomic_dir`): a crash, Ctrl-C or a
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
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .devices import resolve_device, synchronize
from .errors import DataError, DdmrError
from .io import (atomic_dir, atomic_path, check_field, check_finite, check_not_constant, check_output_folder,
                 spacing_from_affine)
from .spatial import apply_field, carry_field, warp

#: order of the paper's tables, then the metrics beyond the paper
METRIC_ORDER = ("ssim", "ncc", "dsc", "hd", "hd95", "tre", "runtime", "folding", "sdlogj", "epe")


# ===================================================================== test set
@dataclass
class Pair:
    """One loaded test pair. Arrays are ``(D, H, W)``; ``disp_true`` is ``(3, D, H, W)``."""

    name: str
    fixed: np.ndarray
    moving: np.ndarray
    affine: np.ndarray
    spacing: np.ndarray
    fixed_seg: np.ndarray | None = None
    moving_seg: np.ndarray | None = None
    disp_true: np.ndarray | None = None
    #: volumes on their original grids (``{"fixed": (array, affine), ...}``) or None
    original: dict | None = None


def _normalise(image: np.ndarray) -> np.ndarray:
    """Images are compared in [0, 1], as the networks see them; a test set written by
    ``build-testset`` already is, anything else is min-max scaled."""
    lo, hi = float(image.min()), float(image.max())
    if lo >= 0.0 and hi <= 1.0:
        return image.astype(np.float32)
    return ((image - lo) / (hi - lo if hi > lo else 1.0)).astype(np.float32)


class TestSet:
    """A test set folder as the evaluator reads it: :func:`ddmr_core.testset.read_testset`
    (the format's owner), pairs loaded with their images in [0, 1] and constant images
    refused, the original-grid volumes on request.

    Raises:
        DataError: the folder, ``manifest.csv``, ``testset.json`` or a required column is
            missing. Files of single pairs are checked when the pair is loaded
            (:meth:`load`), so one broken pair does not stop a run.
    """

    __test__ = False  # not a pytest test class, despite its name

    def __init__(self, root: str | Path):
        from .testset import MANIFEST, read_testset

        self.root = Path(root)
        self._ts = read_testset(self.root)
        if len(self._ts) == 0:
            raise DataError(f"test set {str(self.root)!r}: {MANIFEST} lists no pairs")
        self.info: dict = dict(self._ts.meta)
        self.labels = self._ts.labels or None
        self.has_original = self._ts.has_original

    def __len__(self):
        return len(self._ts)

    def names(self) -> list[str]:
        return [r.pair for r in self._ts.records]

    def load(self, index: int, original: bool = False) -> Pair:
        """Read pair ``index``; ``original`` also reads the original-grid volumes.

        Raises:
            DataError: naming the missing or unreadable file."""
        from .testset import load_original, load_pair

        record = self._ts[index]
        d = load_pair(record)
        check_not_constant(d["fixed"], f"image {str(record.fixed)!r}")
        check_not_constant(d["moving"], f"image {str(record.moving)!r}")
        pair = Pair(d["pair"], _normalise(d["fixed"]), _normalise(d["moving"]), d["affine"],
                    np.asarray(d["spacing"], np.float64), d["fixed_seg"], d["moving_seg"], d["disp_true"])
        if original and self.has_original and {"fixed", "moving"} <= set(record.original):
            pair.original = {key: (arr if key.endswith("seg") else _normalise(arr), aff)
                             for key, (arr, aff) in load_original(record).items()}
        return pair


# ===================================================================== methods
def warp_array(volume: np.ndarray, disp: np.ndarray, labels: bool = False) -> np.ndarray:
    """``volume`` ``(D, H, W)`` warped by the voxel field ``disp`` ``(3, D, H, W)`` on its own
    grid, as the evaluation does: images linearly with border padding (as the models warp
    in training), label maps by nearest neighbour with zeros outside."""
    mode, padding = ("nearest", "zeros") if labels else ("linear", "border")
    return warp(torch.from_numpy(volume)[None, None], torch.from_numpy(disp)[None], mode, padding)[0, 0].numpy()


class ModelMethod:
    """A trained network from a checkpoint (or a registered model name), predicting through
    :meth:`ddmr_core.register.Registrar.predict`, the path ``ddmr register`` takes.
    ``predict`` returns ``(disp, warped, seconds)``."""

    kind = "model"

    def __init__(self, name: str, checkpoint, device="cpu", registry=None, refine: bool = True):
        self.name, self.checkpoint, self.device = name, str(checkpoint), torch.device(device)
        self.registry = registry
        self.refine = refine  # False: switch the model's instance optimisation off
        self.registrar = None

    @property
    def model(self):
        return None if self.registrar is None else self.registrar.model

    @property
    def input_size(self):
        return None if self.registrar is None else self.registrar.input_size

    def prepare(self) -> None:
        from .register import Registrar

        self.registrar = Registrar(self.checkpoint, device=self.device, registry=self.registry)
        if not self.refine:
            self.registrar.model.refine_iterations = 0

    @torch.inference_mode()
    def predict(self, fixed: np.ndarray, moving: np.ndarray, spacing) -> tuple:
        f = torch.from_numpy(fixed)[None, None].to(self.device)
        m = torch.from_numpy(moving)[None, None].to(self.device)
        synchronize(self.device)
        start = time.perf_counter()
        disp = self.registrar.predict(f, m)
        warped = warp(m, disp, mode="linear", padding="border")  # on the device: part of the runtime
        synchronize(self.device)
        seconds = time.perf_counter() - start
        return disp[0].float().cpu().numpy(), warped[0, 0].float().cpu().numpy(), seconds


class BaselineMethod:
    """A baseline plugin (``register(fixed, moving, spacing) -> disp`` on NumPy arrays)."""

    kind = "baseline"

    def __init__(self, name: str, method):
        # built up front, while the user's gin bindings are in force (loading a model's
        # checkpoint later replaces the gin config with the model's own)
        self.name, self.method = name, method

    def prepare(self) -> None:
        method = self.method
        available = getattr(method, "available", None)
        if available is not None and not available():
            hint = getattr(sys.modules.get(type(method).__module__), "INSTALL_HINT", None)
            raise DdmrError(
                f"baseline {self.name!r} cannot run: its library is not installed"
                + (f" (install it with `{hint}`)" if hint else "")
            )

    def predict(self, fixed: np.ndarray, moving: np.ndarray, spacing) -> tuple:
        start = time.perf_counter()
        disp = np.asarray(self.method.register(fixed, moving, tuple(float(s) for s in spacing)), np.float32)
        if disp.shape != (3,) + fixed.shape:
            raise ValueError(f"baseline {self.name!r} returned a field of shape {disp.shape}, expected {(3,) + fixed.shape}")
        warped = warp_array(moving, disp)
        seconds = time.perf_counter() - start
        return disp, warped, seconds


def _model_name(spec: str) -> tuple[str, str]:
    """``"NAME=MODEL"`` or ``"MODEL"`` (named after the file's stem, or the model's name),
    ``MODEL`` a checkpoint path or a registered model name."""
    if "=" in spec and not Path(spec).exists():
        name, path = spec.split("=", 1)
        return name.strip(), path.strip()
    stem = Path(spec).name
    for suffix in (".pt", ".pth", ".ckpt"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    return stem, spec


def build_methods(models: Sequence[str] = (), baselines: Sequence[str] = (), device="cpu", registry=None,
                  make: Callable | None = None, unrefined: bool = False) -> list:
    """Methods in the order given: models first, then baselines (built at once by
    ``make(kind, name)``, default: the plain factory). Names are made unique; unknown
    baseline names, and model names that are neither a file nor a registered model,
    raise :class:`~ddmr_core.errors.UnknownNameError` at once (a checkpoint that does not
    load is a failure of its rows instead).
    ``unrefined``: each model also runs with its instance optimisation off, as
    ``"NAME (no refinement)"`` (an ablation: what the network and prealignment give)."""
    from .checkpoint import resolve_model
    from .registry import Registry

    methods: list = []
    registry = registry or Registry(bind_gin=False)
    make = make or (lambda kind, name: registry.get(kind, name)())
    for spec in models:
        name, path = _model_name(spec)
        resolve_model(path, registry)  # an unknown model name stops here, before any work
        methods.append(ModelMethod(name, path, device, registry))
        if unrefined:
            methods.append(ModelMethod(f"{name} (no refinement)", path, device, registry, refine=False))
    for name in baselines:
        methods.append(BaselineMethod(name, make("baselines", name)))
    seen: dict[str, int] = {}
    for m in methods:  # two checkpoints called best.pt: best, best_2
        seen[m.name] = seen.get(m.name, 0) + 1
        if seen[m.name] > 1:
            m.name = f"{m.name}_{seen[m.name]}"
    return methods


# ===================================================================== geometry
def to_original_grid(disp: np.ndarray, affine: np.ndarray, fixed0_shape, fixed0_affine) -> np.ndarray:
    """Carry a test-grid field to the fixed image's original grid.

    Fixed original voxel ``y`` is the world point ``A0 y``, i.e. test voxel
    ``x = A^-1 A0 y``; it corresponds to moving test voxel ``x + u(x)`` (field interpolated
    linearly, border padding), the world point ``q = A (x + u(x))`` (fixed and moving test
    images share the affine ``A``). Returns the pull field on the original fixed grid in
    its voxel units, ``v(y) = A0^-1 q - y`` (``(3, *S0)`` float64), which
    :func:`ddmr_core.spatial.apply_field` applies to the original moving image: the
    geometry of ``ddmr register --original-resolution``
    (:func:`ddmr_core.spatial.carry_field`)."""
    return carry_field(disp, affine, affine, fixed0_affine, fixed0_shape, dtype=torch.float64)


# ===================================================================== scoring
def score_pair(pair: Pair, disp: np.ndarray, warped: np.ndarray | None, runtime: float, metrics: dict,
               labels=None, original_resolution: bool = False) -> tuple[dict, dict, list]:
    """Apply ``disp`` to the pair and run every metric on the same pair dict.

    Returns ``(values {column: float}, arrays for figures, metric errors)``."""
    fixed, moving, fixed_seg, moving_seg = pair.fixed, pair.moving, pair.fixed_seg, pair.moving_seg
    spacing, disp_true = pair.spacing, pair.disp_true
    if original_resolution and pair.original is not None:
        f0, f0_aff = pair.original["fixed"]
        m0, m0_aff = pair.original["moving"]
        disp0 = to_original_grid(disp, pair.affine, f0.shape, f0_aff)
        warped = apply_field(disp0, f0_aff, m0, m0_aff, padding="border", dtype=torch.float64)
        moving_seg = pair.original.get("moving_seg", (None,))[0]
        fixed_seg = pair.original.get("fixed_seg", (None,))[0]
        warped_seg = None
        if moving_seg is not None:
            warped_seg = apply_field(disp0, f0_aff, moving_seg, m0_aff, labels=True, dtype=torch.float64)
        if disp_true is not None:
            disp_true = to_original_grid(disp_true, pair.affine, f0.shape, f0_aff)
        fixed, moving, disp, spacing = f0, m0, disp0.astype(np.float32), spacing_from_affine(f0_aff)
    else:
        if warped is None:
            warped = warp_array(moving, disp)
        warped_seg = None
        if moving_seg is not None:
            warped_seg = warp_array(moving_seg, disp, labels=True)
    if fixed_seg is None:
        warped_seg = None
    record = {
        "fixed": fixed, "moving": moving, "warped": warped,
        "fixed_seg": fixed_seg, "moving_seg": moving_seg, "warped_seg": warped_seg,
        "disp": disp, "disp_true": disp_true, "spacing": np.asarray(spacing, np.float64),
        "labels": labels, "runtime": runtime,
    }
    values, errors = {}, []
    for name, metric in metrics.items():
        try:
            out = metric(record)
        except Exception as exc:  # one broken metric must not lose the others
            errors.append(f"metric {name}: {type(exc).__name__}: {exc}")
            out = float("nan")
        items = out.items() if isinstance(out, dict) else [("", out)]
        for suffix, v in items:
            column = name if suffix == "" else f"{name}_{suffix}"
            values[column] = float(v)
            if math.isinf(values[column]):  # NaN means "not available"; inf is a failure
                errors.append(f"metric {column} is infinite")
                values[column] = float("nan")
    return values, record, errors


def figure_slices(record: dict) -> dict:
    """The 2-D slices the median-pair figure needs (middle of the last array axis)."""
    from .spatial import jacobian_determinant

    k = record["fixed"].shape[2] // 2
    disp = np.asarray(record["disp"], np.float32)
    jac = jacobian_determinant(torch.from_numpy(disp)[None])[0].numpy()
    return {
        "fixed": record["fixed"][:, :, k], "moving": record["moving"][:, :, k], "warped": record["warped"][:, :, k],
        "disp": disp[:2, :, :, k], "jacobian": jac[:, :, k],
    }


# ===================================================================== CSV
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
    from .evaluate_report import write_report
    from .guards import check_inputs_outside
    from .registry import Registry

    from .progress import bar, write

    counter = None  # the progress bar of the method/pair runs, when no ``progress`` is given

    def say(line: str) -> None:
        if progress is not None:
            progress(line)
        else:
            write(line, counter)

    def tick(line: str) -> None:  # one method/pair run done
        if progress is not None:
            progress(line)
        else:
            counter.update(1)
    if not models and not baselines:
        raise DdmrError("nothing to evaluate: give at least one --model CKPT or --baseline NAME")
    out = check_output_folder(out, "--out", replaceable=is_evaluation_output, what="ddmr evaluate")
    # the report folder is replaced as a whole: no input may lie in it
    check_inputs_outside(out, {"test set": testset, **{f"--config {c}": c for c in gin_files},
                               **{f"--model {m}": m.split("=", 1)[-1] for m in models
                                  if isinstance(m, str) and Path(m.split("=", 1)[-1]).exists()}})
    device = resolve_device(device)
    tset = TestSet(testset)
    if gin_files or gin_bindings:
        from .config import parse_config

        registry = parse_config(gin_files, gin_bindings, registry)
        make = lambda kind, name: registry.gin_wrapper(kind, name)()  # noqa: E731
    else:
        registry = registry or Registry(bind_gin=False)
        make = lambda kind, name: registry.get(kind, name)()  # noqa: E731
    names = list(metrics) if metrics else sorted(registry.names("metrics"),
                                                 key=lambda n: (METRIC_ORDER.index(n) if n in METRIC_ORDER else len(METRIC_ORDER), n))
    metric_objs = {n: make("metrics", n) for n in names}
    methods = build_methods(models, baselines, device, registry, make, unrefined=unrefined)
    if original_resolution and not tset.has_original:
        say("note: the test set records no original grids (manifest columns fixed_original, "
            "moving_original); scoring on the test grid")
    # the report folder is written whole or not at all (replacing an earlier report)
    with atomic_dir(out, "--out", replaceable=is_evaluation_output, what="ddmr evaluate") as tmp:
        writer = ResultsWriter(tmp / "per_pair.csv", names)
        pair_names = tset.names()
        method_errors: dict[str, str] = {}
        for m in methods:
            try:
                m.prepare()
                say(f"{m.name}: ready ({m.kind})")
            except Exception as exc:
                method_errors[m.name] = _message(exc)
                say(f"{m.name}: FAILED to load, recorded for every pair: {method_errors[m.name]}")
        slices: dict = {}
        failures = 0
        total = len(pair_names) * len(methods)
        step = 0
        if progress is None:
            counter = bar(total, "evaluate", "run")
        for i, pname in enumerate(pair_names):
            pair, pair_error = None, None
            try:
                pair = tset.load(i, original=original_resolution)
            except Exception as exc:
                pair_error = _message(exc)
                say(f"pair {pname}: cannot be loaded, recorded for every method: {pair_error}")
            for m in methods:
                step += 1
                row = {"method": m.name, "kind": m.kind, "pair": pname, "error": ""}
                error = method_errors.get(m.name) or pair_error
                if counter is not None:
                    counter.set_postfix_str(f"{m.name} on {pname}", refresh=False)
                if error is None:
                    try:
                        disp, warped, seconds = m.predict(pair.fixed, pair.moving, pair.spacing)
                        check_field(f"{m.name} on pair {pname!r}", disp)
                        check_finite(f"{m.name} on pair {pname!r}", warped=warped)
                        values, record, metric_errors = score_pair(pair, disp, warped, seconds, metric_objs,
                                                                   tset.labels, original_resolution)
                        row.update(values)
                        row["error"] = "; ".join(metric_errors)
                        failures += bool(metric_errors)
                        if figures:
                            slices[(m.name, pname)] = figure_slices(record)
                        key = "dsc" if not math.isnan(values.get("dsc", float("nan"))) else next(iter(values), None)
                        shown = f"{key} {values[key]:.3f}, " if key else ""
                        tick(f"[{step}/{total}] {m.name} on {pname}: {shown}{seconds:.2f} s")
                    except Exception as exc:
                        error = _message(exc)
                if error is not None:
                    row["error"] = error
                    failures += 1
                    say(f"[{step}/{total}] {m.name} on {pname}: FAILED ({error})")
                    if counter is not None:
                        counter.update(1)
                writer.add(row)
        if counter is not None:
            counter.close()
            counter = None
        directions = {n: getattr(metric_objs[n], "higher_is_better", None) for n in names}
        titles = {n: getattr(metric_objs[n], "title", "") or n.upper() for n in names}
        units = {n: getattr(metric_objs[n], "unit", "") for n in names}
        models_used = {m.name: m.registrar.model_info for m in methods
                       if m.kind == "model" and m.registrar is not None}
        write_report(tmp, writer.rows, [m.name for m in methods], names, directions, titles, units,
                     slices if figures else None, tset, models=models_used)
    say(f"results: {out / 'per_pair.csv'}, {out / 'summary.md'}"
        + (f"; {failures} failed method/pair run(s) recorded in the error column" if failures else ""))
    return EvaluationResult(writer.rows, out, failures, [m.name for m in methods])


def _message(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    if isinstance(exc, DdmrError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
