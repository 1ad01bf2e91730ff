"""``ddmr_core.experiments.findings``: paired verdicts on reports of ``ddmr reproduce``
(``benchmarks/paper_findings.py`` prints them)."""

import csv
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def findings():
    from ddmr_core.experiments import findings

    return findings


def _report(path: Path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["method", "pair", "dsc", "hd", "tre", "error"])
        w.writeheader()
        w.writerows(rows)


def test_paired_verdicts_and_seed_averaging(findings, tmp_path):
    rows = []
    for k in range(8):
        pair = f"pair_{k:04d}"
        # SG-ND better than BL-N on every pair; its two seeds average to 0.8 + k/100
        rows.append({"method": "SG-ND", "pair": pair, "dsc": 0.79 + k / 100, "hd": 10 - k / 10, "tre": 2, "error": ""})
        rows.append({"method": "SG-ND (seed 1)", "pair": pair, "dsc": 0.81 + k / 100, "hd": 10 - k / 10, "tre": 2,
                     "error": ""})
        rows.append({"method": "BL-N", "pair": pair, "dsc": 0.70 + k / 100, "hd": 12, "tre": 2 + (k % 2) / 10,
                     "error": ""})
    rows.append({"method": "BL-N", "pair": "pair_0008", "dsc": "", "hd": "", "tre": "", "error": "failed"})
    _report(tmp_path / "r.csv", rows)
    runs = findings.load(tmp_path / "r.csv")
    assert sorted(runs["SG-ND"]) == [0, 1] and "pair_0008" not in runs["BL-N"][0]["dsc"]
    assert findings.per_pair(runs["SG-ND"], "dsc")["pair_0003"] == pytest.approx(0.83)
    line, verdict = findings.compare(runs["SG-ND"], runs["BL-N"], "dsc", "beats", 0.05)
    assert verdict == "reproduced" and "p=0.00781" in line and "+0.100" in line  # exact: 2 / 2^8
    assert findings.compare(runs["BL-N"], runs["SG-ND"], "hd", "beats", 0.05)[1] == "opposite"
    # TRE: BL-N worse on 4 of 8 pairs only by 0.1 mm -> not significant at 8 pairs
    assert findings.compare(runs["SG-ND"], runs["BL-N"], "tre", "beats", 0.05)[1] == "no difference shown"
    # "at least as good": only a significant deficit refutes it
    assert findings.compare(runs["BL-N"], runs["SG-ND"], "tre", "at least", 0.05)[1] == "reproduced"
    assert findings.compare(runs["BL-N"], runs["SG-ND"], "dsc", "at least", 0.05)[1] == "not reproduced"
