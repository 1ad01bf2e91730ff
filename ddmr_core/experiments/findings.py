"""The paper's four findings, tested on the reports of ``ddmr reproduce`` (paired, per test pair).

:func:`paper_findings` (``python benchmarks/paper_findings.py [--out paper_runs] [--alpha 0.05]``)
reads ``OUT/<experiment>/report/per_pair.csv`` of the experiments that have one and, for
each finding, compares the designs on the same test pairs: the mean paired difference of
DSC, HD (mm) and TRE (mm) with its standard deviation over the pairs, and the two-sided
Wilcoxon signed-rank p-value (``scipy.stats.wilcoxon``; with 8 pairs the smallest possible
is 0.008, with 11 pairs 0.001). A design trained with several seeds (``--seeds``: rows
``DESIGN`` and ``DESIGN (seed k)``) enters with its per-pair mean over the seeds; the seeds'
own means are printed beside it, so their spread can be read against the difference.

Verdicts, per comparison and metric, at ``--alpha``:

* a claim "A beats B": *reproduced* when A is better on average and the test rejects
  equality, *opposite* when B is, *no difference shown* otherwise;
* a claim "A is at least as good as B": *reproduced* unless A is worse and the test rejects
  equality (*not reproduced*).

A finding is reproduced when all its comparisons on all three metrics are; the printout
gives the parts, so a partial result can be stated as such.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import numpy as np

METRICS = {"dsc": ("DSC", True), "hd": ("HD (mm)", False), "tre": ("TRE (mm)", False)}
SEED = re.compile(r"^(?P<design>.+?) \(seed (?P<seed>\d+)\)$")


def load(report: Path) -> dict:
    """``{design: {seed: {metric: {pair: value}}}}`` of a ``per_pair.csv`` (failed runs skipped)."""
    out: dict = {}
    with open(report, newline="") as fh:
        for row in csv.DictReader(fh):
            m = SEED.match(row["method"])
            design, seed = (m["design"], int(m["seed"])) if m else (row["method"], 0)
            for metric in METRICS:
                try:
                    v = float(row.get(metric) or "nan")
                except ValueError:
                    continue
                if math.isfinite(v):
                    out.setdefault(design, {}).setdefault(seed, {}).setdefault(metric, {})[row["pair"]] = v
    return out


def per_pair(runs: dict, metric: str) -> dict:
    """The design's value per pair, averaged over its seeds (pairs every seed registered)."""
    seeds = [runs[s].get(metric, {}) for s in sorted(runs)]
    common = set.intersection(*(set(s) for s in seeds)) if seeds else set()
    return {p: float(np.mean([s[p] for s in seeds])) for p in sorted(common)}


def compare(a: dict, b: dict, metric: str, claim: str, alpha: float) -> tuple[str, str]:
    """One line comparing design runs ``a`` and ``b`` on ``metric``, and its verdict."""
    from scipy.stats import wilcoxon

    title, higher = METRICS[metric]
    va, vb = per_pair(a, metric), per_pair(b, metric)
    pairs = sorted(set(va) & set(vb))
    if len(pairs) < 2:
        return f"{title}: fewer than 2 common pairs", "inconclusive"
    d = np.array([va[p] - vb[p] for p in pairs])
    better = d.mean() > 0 if higher else d.mean() < 0
    p = float(wilcoxon(d).pvalue) if np.any(d != 0) else 1.0
    significant = p < alpha
    if claim == "beats":
        verdict = ("reproduced" if better else "opposite") if significant else "no difference shown"
    else:
        verdict = "not reproduced" if (significant and not better) else "reproduced"
    seeds = ""
    if len(a) > 1 or len(b) > 1:
        means = lambda runs: "/".join(f"{np.mean(list(runs[s][metric].values())):.3f}" for s in sorted(runs))
        seeds = f"  [seed means {means(a)} vs {means(b)}]"
    line = (f"{title}: {np.mean([va[q] for q in pairs]):.3f} vs {np.mean([vb[q] for q in pairs]):.3f}, "
            f"difference {d.mean():+.3f}±{d.std(ddof=1):.3f} over {len(pairs)} pairs, Wilcoxon p={p:.3g}"
            f"{seeds} -> {verdict}")
    return line, verdict


def finding(title: str, comparisons, reports: dict, alpha: float) -> tuple[list[str], str]:
    """The comparisons ``(claim, (exp_a, design_a), (exp_b, design_b))`` of one finding, as
    Markdown lines, and its overall verdict."""
    lines, verdicts = [f"## {title}"], []
    for claim, (ea, da), (eb, db) in comparisons:
        a, b = reports.get(ea, {}).get(da), reports.get(eb, {}).get(db)
        name = f"{da} ({ea}) {'beats' if claim == 'beats' else '>='} {db} ({eb})"
        if a is None or b is None:
            lines.append(f"- {name}: not run ({ea if a is None else eb}/report has no {da if a is None else db})")
            verdicts.append("inconclusive")
            continue
        lines.append(f"- {name}")
        for metric in METRICS:
            line, verdict = compare(a, b, metric, claim, alpha)
            lines.append(f"    {line}")
            verdicts.append(verdict)
    if all(v == "reproduced" for v in verdicts):
        overall = "reproduced"
    elif "inconclusive" in verdicts:
        overall = "inconclusive (runs missing)"
    else:
        overall = "partly reproduced" if "reproduced" in verdicts else "not reproduced"
    counts = ", ".join(f"{v}: {verdicts.count(v)}" for v in dict.fromkeys(verdicts))
    lines.append(f"=> {overall} ({counts})")
    return lines, overall


def load_reports(root: Path) -> tuple[dict, list[str]]:
    """The ``per_pair.csv`` of each experiment under ``root`` (the ``--out`` of ``ddmr
    reproduce``) that has one: ``({experiment: load(...)}, lines saying what was found)``."""
    reports, lines = {}, []
    for exp in ("brain", "abdomen", "finetune_full", "finetune_two_step"):
        f = Path(root) / exp / "report" / "per_pair.csv"
        if f.exists():
            reports[exp] = load(f)
            lines.append(f"{exp}: {f} ({', '.join(reports[exp])})")
        else:
            lines.append(f"{exp}: no report yet ({f})")
    return reports, lines


def paper_findings(root: Path, alpha: float = 0.05) -> str:
    """The report of the paper's four findings on the experiments under ``root``: what was
    found, then each finding's comparisons and verdict."""
    from .catalogue import design_files

    reports, lines = load_reports(root)
    sg, bl = ("SG-ND", "SG-NSD"), ("BL-N", "BL-NS")
    findings = []
    for e, table in (("brain", "Table 2"), ("abdomen", "Table 3")):
        findings += [
            (f"1. Segmentation guidance beats the baseline, {e} ({table})",
             [("beats", (e, s), (e, b)) for s in sg for b in bl]),
            (f"2a. Uncertainty weighting is at least as good as fixed weights, {e} ({table})",
             [("at least", (e, "UW-NSD"), (e, "SG-NSD"))]),
            (f"2b. The Hausdorff loss does not help (UW-NSD >= UW-NSDH), {e} ({table})",
             [("at least", (e, "UW-NSD"), (e, "UW-NSDH"))]),
        ]
    designs = tuple(design_files())
    findings += [
        ("3. Finetuning the brain model beats training from scratch, same steps (Table 4 vs 3)",
         [("beats", ("finetune_full", d), ("abdomen", d)) for d in designs]),
        ("4. Two-step finetuning is at least as good as full finetuning (Table 5 vs 4)",
         [("at least", ("finetune_two_step", d), ("finetune_full", d)) for d in designs]),
    ]
    for title, comparisons in findings:
        lines += [""] + finding(title, comparisons, reports, alpha)[0]
    return "\n".join(lines)
