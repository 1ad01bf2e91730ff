"""The paper's four findings, tested on the reports of ``ddmr reproduce`` (paired, per test pair).

    python benchmarks/paper_findings.py [--out paper_runs] [--alpha 0.05]

The tool is library code: :mod:`ddmr_core.experiments.findings` (its docstring says how the
verdicts are reached).
"""

from __future__ import annotations

import argparse

from ddmr_core.experiments.findings import paper_findings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="paper_runs", help="the --out of ddmr reproduce")
    ap.add_argument("--alpha", type=float, default=0.05)
    args = ap.parse_args()
    print(paper_findings(args.out, args.alpha))


if __name__ == "__main__":
    main()
