"""Reports of an evaluation (:mod:`ddmr_core.evaluation.evaluate`): ``summary.md`` in the paper's
table format, box plots and a median-pair figure per method (matplotlib, Agg backend).

Table format (paper, Tables 2-5): one row per method, ``mean±std`` over the pairs for
SSIM, NCC, DSC, HD, TRE and runtime, HD95 as a single figure (here the mean of the
per-pair HD95), the best value of each column in bold -- the highest for metrics where
higher is better (``higher_is_better`` on the metric), the lowest otherwise.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from ..registration.figures import checkerboard, draw_deformation_grid

PAPER_METRICS = ("ssim", "ncc", "dsc", "hd", "hd95", "tre", "runtime")
#: reported as one number (the paper gives HD95 without a spread)
SINGLE_FIGURE = ("hd95",)


def safe_name(name: str) -> str:
    """A method name usable in a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "method"


def _values(rows, method: str, column: str) -> np.ndarray:
    out = []
    for r in rows:
        if r["method"] == method and column in r:
            v = r[column]
            if isinstance(v, (int, float)) and not math.isnan(v):
                out.append(float(v))
    return np.asarray(out, dtype=np.float64)


def _fmt(v: float) -> str:
    if v is None or not math.isfinite(v):
        return "–"
    if v != 0 and abs(v) < 0.01:
        return f"{v:.1e}"
    return f"{v:.2f}"


def stats(rows, methods, column) -> dict:
    """``{method: (mean, std, n)}`` over the finite values (sample std, ddof=1)."""
    out = {}
    for m in methods:
        v = _values(rows, m, column)
        if v.size == 0:
            out[m] = (float("nan"), float("nan"), 0)
        else:
            out[m] = (float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size))
    return out


def _table(rows, methods, columns, directions, titles, units) -> list[str]:
    header = ["Method"] + [titles[c] + (f" ({units[c]})" if units.get(c) else "") for c in columns] + ["Pairs"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    cells = {m: [] for m in methods}
    for c in columns:
        st = stats(rows, methods, c)
        shown = {m: _fmt(st[m][0]) for m in methods}
        best = None
        finite = [m for m in methods if math.isfinite(st[m][0])]
        if finite and directions.get(c) is not None:
            pick = max if directions[c] else min
            best_val = pick(st[m][0] for m in finite)
            best = {m for m in finite if shown[m] == _fmt(best_val)}  # ties as displayed
        for m in methods:
            mean, std, n = st[m]
            text = shown[m] if (c in SINGLE_FIGURE or n == 0) else f"{shown[m]}±{_fmt(std)}"
            cells[m].append(f"**{text}**" if best and m in best else text)
    totals = {m: sum(1 for r in rows if r["method"] == m) for m in methods}
    ok = {m: sum(1 for r in rows if r["method"] == m and not _failed(r)) for m in methods}
    for m in methods:
        lines.append("| " + " | ".join([m] + cells[m] + [f"{ok[m]}/{totals[m]}"]) + " |")
    return lines


def _failed(row) -> bool:
    err = row.get("error") or ""
    return bool(err) and not all(part.startswith("metric ") for part in err.split("; "))


def model_lines(models: dict) -> list[str]:
    """The summary's "Models" section: for each model method, the release it ran (name,
    version) and the sha256 of its weight file (:func:`ddmr_core.model.zoo.identify`)."""
    if not models:
        return []
    lines = ["## Models", ""]
    for method, info in models.items():
        version = f", version {info['version']}" if info.get("version") else ", no version"
        sha = f"sha256 `{info['sha256']}`" if info.get("sha256") else "sha256 unknown"
        ref = info.get("ref") or info.get("name")
        lines.append(f"- {method}: `{ref}`{version}, {sha} ({info.get('checkpoint')})")
    return lines + [""]


def write_summary(path: Path, rows, methods, metric_names, directions, titles, units, testset=None,
                  models: dict | None = None) -> Path:
    paper = [c for c in PAPER_METRICS if c in metric_names]
    extra = [c for c in metric_names if c not in PAPER_METRICS]
    lines = ["# Evaluation summary", ""]
    if testset is not None:
        info = testset.meta
        desc = ", ".join(f"{k} {info[k]}" for k in ("dataset", "size", "seed") if k in info)
        lines += [f"Test set `{testset.root}`: {len(testset)} pairs" + (f" ({desc})" if desc else "") + ".", ""]
    if paper:
        lines += _table(rows, methods, paper, directions, titles, units) + [""]
    if extra:
        lines += ["## Beyond the paper", ""] + _table(rows, methods, extra, directions, titles, units) + [""]
    better = [titles[c] for c in metric_names if directions.get(c)]
    lines += [
        "Mean±standard deviation over the pairs each method registered (Pairs: registered/total). "
        + ("HD95 is the mean of the per-pair 95th-percentile Hausdorff distances, one figure as in the paper. "
           if "hd95" in metric_names else "")
        + "Best value per column in bold: highest for " + (", ".join(better) or "none")
        + "; lowest for the others. Runtime: prediction plus application of the field.",
        "",
    ]
    label_cols = sorted({k for r in rows for k in r if k.startswith("dsc_")},
                        key=lambda s: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)])
    if label_cols:
        t = {c: f"DSC {c[4:]}" for c in label_cols}
        lines += ["## Dice per label", ""] + _table(rows, methods, label_cols, {c: True for c in label_cols}, t, {}) + [""]
    lines += model_lines(models or {})
    failed = [r for r in rows if r.get("error")]
    if failed:
        lines += ["## Failures", ""]
        lines += [f"- {r['method']} on {r['pair']}: {r['error']}" for r in failed] + [""]
    path.write_text("\n".join(lines))
    return path


def write_boxplots(path: Path, rows, methods, metric_names, titles, units) -> Path | None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    cols = [c for c in metric_names if any(_values(rows, m, c).size for m in methods)]
    if not cols:
        return None
    ncols = min(4, len(cols))
    nrows = math.ceil(len(cols) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3.0 * nrows), squeeze=False)
    for ax, c in zip(axes.ravel(), cols):
        data = [_values(rows, m, c) for m in methods]
        ax.boxplot([d if d.size else np.array([np.nan]) for d in data], showfliers=True)
        ax.set_xticks(range(1, len(methods) + 1), methods, rotation=45, ha="right", fontsize=8)
        ax.set_title(titles[c] + (f" ({units[c]})" if units.get(c) else ""), fontsize=10)
    for ax in axes.ravel()[len(cols):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def median_pair(rows, method: str, metric_names) -> str | None:
    """The pair whose value of the primary metric (DSC, else NCC, else the first) is the
    median of the method's pairs (the lower middle one for an even count)."""
    for c in ("dsc", "ncc") + tuple(metric_names):
        cands = [(r[c], r["pair"]) for r in rows
                 if r["method"] == method and isinstance(r.get(c), float) and math.isfinite(r[c])]
        if cands:
            cands.sort()
            return cands[(len(cands) - 1) // 2][1]
    return None


def write_median_figure(path: Path, method: str, pair: str, s: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(10, 7))
    show = dict(cmap="gray", origin="lower", vmin=0, vmax=1)
    # slices are (axis 0, axis 1); draw axis 0 horizontally
    for ax, key, title in zip(axes[0], ("fixed", "moving", "warped"), ("Fixed", "Moving", "Warped")):
        ax.imshow(s[key].T, **show)
        ax.set_title(title)
    axes[1, 0].imshow(checkerboard(s["fixed"], s["warped"]).T, **show)
    axes[1, 0].set_title("Checkerboard fixed/warped")
    ax = axes[1, 1]
    draw_deformation_grid(ax, s["disp"])
    ax.set_aspect("equal")
    ax.set_title("Deformation grid")
    ax = axes[1, 2]
    im = ax.imshow(s["jacobian"].T, cmap="RdBu_r", vmin=0, vmax=2, origin="lower")
    if (s["jacobian"] <= 0).any():
        ax.contour((s["jacobian"] <= 0).T.astype(float), levels=[0.5], colors="k", linewidths=0.6)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title("Jacobian determinant")
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{method}: median pair {pair}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_report(out: Path, rows, methods: Sequence[str], metric_names, directions, titles, units,
                 slices: dict, testset=None, models: dict | None = None) -> dict:
    """Write ``summary.md``, ``boxplots.png`` and ``median_pair_<method>.png``; returns paths.
    ``models``: ``{method: model info}`` of the model methods, recorded in the summary."""
    out = Path(out)
    paths = {"summary": write_summary(out / "summary.md", rows, methods, metric_names, directions,
                                      titles, units, testset, models)}
    if slices is not None:
        box = write_boxplots(out / "boxplots.png", rows, methods, metric_names, titles, units)
        if box is not None:
            paths["boxplots"] = box
        for m in methods:
            pair = median_pair(rows, m, metric_names)
            if pair is not None and (m, pair) in slices:
                paths[f"median_{m}"] = write_median_figure(
                    out / f"median_pair_{safe_name(m)}.png", m, pair, slices[(m, pair)])
    return paths
