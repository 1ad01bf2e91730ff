"""``ddmr register`` as a process against ANTs SyN as a process, at 2 mm and 1 mm (issue 32).

    python benchmarks/register_end_to_end.py                          # brain-mr, 8 pairs per grid
    python benchmarks/register_end_to_end.py --grids 2 --pairs 2      # a quick look
    python benchmarks/register_end_to_end.py --no-ants --ddmr-arg=--outputs=field,results

The pairs (``brain_pairs.py``): the MNI T1 template on a 2 mm (98x116x94) or 1 mm
(197x233x189) grid, and a copy moved by a random rigid motion (<= 10 degrees, <= 15 mm)
and a smooth SimpleITK B-spline warp, written as NIfTI with both label maps (CSF/other,
grey, white matter) to ``--work``.

Each method runs as the process a user starts, timed from start to exit (wall clock) with
its peak resident memory (``os.wait4``'s ``ru_maxrss`` of that process), with Python's
bytecode caches in use as in a user's shell (:func:`process_env`):

* ddmr: ``ddmr register --fixed F --moving M --moving-seg MS --model MODEL --out DIR
  --original-resolution`` (the installed console script; start-up, model load, reading,
  registration, writing its default outputs on the fixed image's grid);
* ANTs: ``python benchmarks/ants_register.py F M MS DIR`` (imports antspyx, reads, runs the
  ``SyN`` preset with its defaults, warps the image and label map, writes both). Its
  outputs and timing are kept in ``--work`` and reused by later runs on the same pairs
  (``--rerun-ants`` runs it again: do, when timing on a machine that was busy before).

Dice: the label map each process wrote (``warped_seg.nii.gz``) against the fixed one, per
label and mean; folding: % of non-positive Jacobian determinants of ddmr's field.nii.gz;
for ddmr also its phases as its results.json times them (read, preprocess, predict, apply)
and its minor page faults.
Then one ``ddmr register --pairs`` process over all pairs of a grid (start-up and model
load paid once): its wall time per pair. Prints a table with the ratios and writes
``results.json`` to ``--work``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
LABELS = (1, 2, 3)


#: a small launcher: a child forked from this (large) benchmark process would count the
#: benchmark's pages in its peak memory until it execs; the launcher's are a few MB
LAUNCHER = """
import json, os, subprocess, sys, time
with open(sys.argv[1], "w") as log:
    t = time.perf_counter()
    proc = subprocess.Popen(sys.argv[2:], stdout=log, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
print(json.dumps({"wall_s": wall, "peak_mb": usage.ru_maxrss / 1024.0, "page_faults": usage.ru_minflt,
                  "rc": os.waitstatus_to_exitcode(status)}))
"""


def process_env() -> dict:
    """The environment both methods' processes run in: this one's, with Python's bytecode
    caches written and used, as in a user's shell. A container or CI environment may set
    ``PYTHONDONTWRITEBYTECODE=1`` (this project's machine does); every process then
    compiles again the modules that came without caches: those of an editable install,
    ddmr's own here (~0.1 s), while ANTs' came compiled by pip."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def run_process(cmd: list[str], log: Path) -> dict:
    """Run ``cmd`` (through :data:`LAUNCHER`, in :func:`process_env`), return ``{"wall_s",
    "peak_mb", "rc"}``: its wall time from start to exit and its peak resident memory
    (``ru_maxrss``), and its minor page faults (``ru_minflt``: memory touched anew, in 4 kB
    or 2 MB pages). Its output goes to ``log``."""
    out = subprocess.run([sys.executable, "-S", "-c", LAUNCHER, str(log), *cmd], capture_output=True, text=True,
                         check=True, env=process_env())
    return json.loads(out.stdout.strip().splitlines()[-1])


def ddmr_command() -> list[str]:
    exe = Path(sys.executable).with_name("ddmr")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "ddmr_core"]


def score(fixed_seg: str, warped_seg: str) -> dict:
    from ddmr_core.data.io import load_label_map
    from ddmr_core.registration.register import dice_tre

    f, aff = load_label_map(fixed_seg)
    w, _ = load_label_map(warped_seg)
    d = dice_tre(f, w, aff, LABELS)
    return {"dice": d["dice_mean"], "dice_labels": [d["dice"].get(str(k)) for k in LABELS]}


def folding(field_path: str) -> float:
    import torch

    from ddmr_core.data.field_io import load_field
    from ddmr_core.spatial.fields import folding_percentage, jacobian_determinant

    disp = load_field(field_path)[0]
    return float(folding_percentage(jacobian_determinant(torch.from_numpy(np.ascontiguousarray(disp))[None])))


def make_pairs(work: Path, spacing: float, n: int, seed: int) -> list[dict]:
    from brain_pairs import template, write_pair

    data = None
    pairs = []
    for i in range(n):
        folder = work / f"{spacing:g}mm" / f"pair_{i}"
        names = {k: str(folder / f"{k}.nii.gz") for k in ("fixed", "moving", "fixed_seg", "moving_seg")}
        if not all(Path(p).is_file() for p in names.values()):
            data = data if data is not None else template(spacing)
            names = write_pair(folder, spacing, np.random.default_rng([seed, int(spacing * 10), i]), data)
        pairs.append({"pair": f"pair_{i}", **names})
    return pairs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="brain-mr", help="registered model name or checkpoint (default brain-mr)")
    ap.add_argument("--grids", nargs="+", type=float, default=[2.0, 1.0], help="grid spacings, mm (default 2 1)")
    ap.add_argument("--pairs", type=int, default=8, help="pairs per grid (default 8)")
    ap.add_argument("--seed", type=int, default=32)
    ap.add_argument("--no-ants", action="store_true")
    ap.add_argument("--no-batch", action="store_true", help="skip the --pairs batch run")
    ap.add_argument("--rerun-ants", action="store_true",
                    help="run ANTs again even where --work holds its result for a pair (its outputs and timing)")
    ap.add_argument("--ddmr-arg", action="append", default=[], help="extra argument for ddmr register (repeatable)")
    ap.add_argument("--work", default="bench_out/end_to_end")
    args = ap.parse_args(argv)

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}; model {args.model}; "
          f"ddmr args {args.ddmr_arg}; bytecode caches written"
          + (" (PYTHONDONTWRITEBYTECODE unset for both)" if "PYTHONDONTWRITEBYTECODE" in os.environ else ""))
    summary = {}
    for spacing in args.grids:
        pairs = make_pairs(work, spacing, args.pairs, args.seed)
        rows = []
        for p in pairs:
            row = {"pair": p["pair"]}
            out = work / "out" / f"{spacing:g}mm" / p["pair"]
            d_out = out / "ddmr"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            cmd = ddmr_command() + ["register", "--fixed", p["fixed"], "--moving", p["moving"], "--moving-seg",
                                    p["moving_seg"], "--model", args.model, "--out", str(d_out),
                                    "--original-resolution", *args.ddmr_arg]
            r = run_process(cmd, out / "ddmr.log")
            if r["rc"]:
                print((out / "ddmr.log").read_text())
                raise SystemExit(f"ddmr register failed on {p['pair']}")
            row["ddmr"] = {**r, **score(p["fixed_seg"], str(d_out / "warped_seg.nii.gz"))}
            # the process's own account of its phases (results.json), for where the time went
            if (d_out / "results.json").is_file():
                row["ddmr"]["phases_s"] = json.loads((d_out / "results.json").read_text()).get("timings_s", {})
            if (d_out / "field.nii.gz").is_file():
                row["ddmr"]["folding_pct"] = folding(str(d_out / "field.nii.gz"))
            if not args.no_ants:
                a_out = work / "ants" / f"{spacing:g}mm" / p["pair"]
                timing = a_out / "timing.json"
                if args.rerun_ants or not timing.is_file():
                    shutil.rmtree(a_out, ignore_errors=True)
                    a_out.mkdir(parents=True)
                    cmd = [sys.executable, str(HERE / "ants_register.py"), p["fixed"], p["moving"], p["moving_seg"],
                           str(a_out)]
                    r = run_process(cmd, a_out / "ants.log")
                    if r["rc"]:
                        print((a_out / "ants.log").read_text())
                        raise SystemExit(f"ANTs failed on {p['pair']}")
                    timing.write_text(json.dumps(r))
                r = json.loads(timing.read_text())
                row["ants_syn"] = {**r, **score(p["fixed_seg"], str(a_out / "warped_seg.nii.gz"))}
            rows.append(row)
            print(f"{spacing:g} mm {p['pair']}: " + ", ".join(
                f"{m} Dice {v['dice']:.3f} wall {v['wall_s']:.1f} s peak {v['peak_mb']:.0f} MB"
                for m, v in row.items() if m != "pair"), flush=True)
        grid = {"pairs": rows}
        for m in ("ddmr", "ants_syn"):
            got = [r[m] for r in rows if m in r]
            if got:
                grid[m] = {"dice": statistics.mean(g["dice"] for g in got),
                           "dice_sd": statistics.pstdev(g["dice"] for g in got),
                           "wall_s": statistics.median(g["wall_s"] for g in got),
                           "peak_mb": max(g["peak_mb"] for g in got)}
                if m == "ddmr" and all("folding_pct" in g for g in got):
                    grid[m]["folding_pct"] = statistics.mean(g["folding_pct"] for g in got)
                if m == "ddmr":
                    grid[m]["page_faults"] = statistics.median(g["page_faults"] for g in got)
                    phases = [g.get("phases_s", {}) for g in got]
                    grid[m]["phases_s"] = {k: statistics.median(ph[k] for ph in phases)
                                           for k in phases[0] if all(k in ph for ph in phases)}
        if not args.no_batch:
            csv_path = work / f"pairs_{spacing:g}mm.csv"
            with open(csv_path, "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=["pair", "fixed", "moving", "moving_seg"])
                w.writeheader()
                w.writerows({k: p[k] for k in ("pair", "fixed", "moving", "moving_seg")} for p in pairs)
            b_out = work / "out" / f"{spacing:g}mm" / "batch"
            shutil.rmtree(b_out, ignore_errors=True)
            cmd = ddmr_command() + ["register", "--pairs", str(csv_path), "--model", args.model, "--out", str(b_out),
                                    "--original-resolution", *args.ddmr_arg]
            r = run_process(cmd, work / f"batch_{spacing:g}mm.log")
            if r["rc"]:
                raise SystemExit(f"ddmr register --pairs failed: {(work / f'batch_{spacing:g}mm.log').read_text()}")
            grid["ddmr_batch"] = {"wall_s": r["wall_s"], "per_pair_s": r["wall_s"] / len(pairs), "peak_mb": r["peak_mb"]}
        summary[f"{spacing:g}mm"] = grid

    print(f"\n{'grid':<6} {'method':<11} {'Dice':>13} {'wall s':>8} {'peak MB':>8} {'folding %':>9}")
    for key, grid in summary.items():
        for m in ("ddmr", "ants_syn"):
            if m in grid:
                g = grid[m]
                fold = f"{g['folding_pct']:>9.3f}" if "folding_pct" in g else ""
                print(f"{key:<6} {m:<11} {g['dice']:>6.3f}±{g['dice_sd']:.3f} {g['wall_s']:>8.2f} {g['peak_mb']:>8.0f} {fold}")
        if "ddmr" in grid:
            g = grid["ddmr"]
            print(f"{key:<6} ddmr phases (median s): " + ", ".join(f"{k} {v:.2f}" for k, v in g["phases_s"].items())
                  + f"; minor page faults {g['page_faults']:.0f}")
        if "ddmr_batch" in grid:
            b = grid["ddmr_batch"]
            print(f"{key:<6} {'ddmr batch':<11} {'':>13} {b['per_pair_s']:>8.2f} {b['peak_mb']:>8.0f}   (per pair, "
                  f"{args.pairs} pairs in one process)")
        if "ddmr" in grid and "ants_syn" in grid:
            d, a = grid["ddmr"], grid["ants_syn"]
            grid["ratios"] = {"speed": a["wall_s"] / d["wall_s"], "dice_gap": d["dice"] - a["dice"]}
            print(f"{key:<6} ANTs/ddmr wall time {a['wall_s'] / d['wall_s']:.1f}x; Dice ddmr - ANTs "
                  f"{d['dice'] - a['dice']:+.3f}")
    (work / "results.json").write_text(json.dumps({"model": args.model, "ddmr_args": args.ddmr_arg,
                                                   "machine": platform.platform(), "cpus": os.cpu_count(),
                                                   "summary": summary}, indent=2))
    print(f"wrote {work / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
