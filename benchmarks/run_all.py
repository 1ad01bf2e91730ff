"""Every benchmark in one run, figures side by side (``make bench``).

    python benchmarks/run_all.py [--quick] [--demo-report demo_out/report] [--model CKPT]

Runs, each in its own process (so peak-memory figures do not mix):

* inference of a trained model vs ``ants_syn`` at 128^3, with the ratio, and its Dice
  against ``ants_syn``'s on 8 brain test pairs at the same size (``--dice-pairs``): the
  demo's UW-NSD (``--model``) when ``make demo`` has trained it, else the shipped
  ``brain-mr``;
* ``ddmr register`` against ANTs SyN as processes, end to end, at 2 mm and 1 mm
  (``register_end_to_end.py``, 3 pairs per grid; ``--quick``: 2 pairs at 2 mm);
* the augmentation overhead of a training step (64^3 on CPU);
* the trainer's overhead against a bare PyTorch loop (64^3);
* loader throughput from a ``ddmr prepare`` cache at 128^3;
* inference of the paper-size and light networks at 64^3 and 128^3 with peak memory;
* ddmr's CPU convolution and volume sampling against PyTorch's own calls.

Then, if the demo has been run, the Dice of the default model and of ``ants_syn`` on the
brain test set from its report. ``--quick`` uses 64^3 for the ANTs comparison.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(script: str, *args: str) -> tuple[int, str]:
    cmd = [sys.executable, str(HERE / script), *args]
    print(f"\n=== {script} {' '.join(args)}", flush=True)
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    text = proc.stdout + (proc.stderr if proc.returncode else "")
    print(text.rstrip())
    print(f"--- {script}: exit {proc.returncode}, {time.perf_counter() - t:.0f} s", flush=True)
    return proc.returncode, text


def demo_dice(report: Path) -> dict:
    table = report / "per_pair.csv"
    if not table.exists():
        return {}
    by_method: dict = {}
    with open(table) as fh:
        for row in csv.DictReader(fh):
            try:
                by_method.setdefault(row["method"], []).append(float(row["dsc"]))
            except (KeyError, ValueError):
                continue
    return {m: (statistics.mean(v), statistics.pstdev(v)) for m, v in by_method.items() if v}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--demo-report", default="demo_out/report")
    ap.add_argument("--model", default="demo_out/runs/UW-NSD/best.pt",
                    help="trained checkpoint for the inference and Dice comparison (default: the demo's UW-NSD)")
    args = ap.parse_args(argv)
    size = "64" if args.quick else "128"
    checkpoint = args.model if Path(args.model).exists() else "brain-mr"
    if checkpoint != args.model:
        print(f"(no checkpoint {args.model}: the inference benchmark uses the shipped brain-mr; `make demo` trains "
              "the demo's models)")
    model = ("--model", checkpoint, "--dice-pairs", "8")
    jobs = [
        ("inference_vs_ants.py", "--size", size, *model),
        # ddmr register and ANTs as the processes users run, at 2 mm and 1 mm
        ("register_end_to_end.py", *(("--grids", "2", "--pairs", "2") if args.quick else ("--pairs", "3"))),
        ("augmentation_overhead.py",),
        ("trainer_overhead.py",),
        ("loader.py",),
        ("inference.py",),
        ("cpu_kernels.py",),
    ]
    failures = []
    outputs = {}
    for job in jobs:
        if not (HERE / job[0]).exists():
            print(f"\n=== {job[0]}: not present, skipped")
            continue
        code, text = run(*job)
        outputs[job[0]] = text
        if code:
            failures.append(job[0])
    print("\n=== summary")
    for name, text in outputs.items():
        if name == "cpu_kernels.py":  # the per-layer rows are in the full output above
            keep = [line for line in text.splitlines() if "U-Net" in line or "grid_sample" in line]
        else:
            keep = [line for line in text.splitlines()
                    if any(k in line for k in ("speed-up", "overhead", "ratio", "samples/s", "peak", "s (median", "mean DSC",
                                               "ANTs/ddmr", "per pair"))
                    or (name == "inference.py" and "^3" in line)]
        for line in keep[:12]:
            print(f"{name:26s} {line.strip()}")
    dice = demo_dice(Path(args.demo_report))
    if dice:
        print(f"Dice on the demo's brain test set ({args.demo_report}): "
              + ", ".join(f"{m} {mu:.3f}±{sd:.3f}" for m, (mu, sd) in sorted(dice.items())))
    else:
        print(f"(no demo report in {args.demo_report}: run `make demo` for the Dice comparison)")
    if failures:
        print("failed: " + ", ".join(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
