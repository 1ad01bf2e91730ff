"""GPU check: the paper's designs trained side by side on one GPU, learning curves and step times.

    python benchmarks/gpu_check.py --out gpu_out                 # six designs, 128^3, 4 min each, + bf16
    python benchmarks/gpu_check.py --minutes 2 --designs BL-N UW-NSD --no-profile
    python benchmarks/gpu_check.py --run "UW-NSD+recipe=experiments/brain/uw_nsd.gin;include 'mixins/recipe/learnt.gin'"
    python benchmarks/gpu_check.py --device cpu --size 32 --minutes 0.5 --designs BL-N   # dry run

Sized to fit one ten-minute call on a lent GPU (``../shared/device/README.md``):

1. **Step time, fp32 against bf16** (``--profile``, on by default): the paper-size U-Net
   (UW-NSD) alone on the GPU, ``--profile-steps`` micro-batches each way after a warm-up,
   micro-batches per second; then the ten CUDA kernels that take the most time in a bf16
   step, from ``torch.profiler``, to say where bf16 loses.
2. **Learning curves**: one ``ddmr train`` per design (``experiments/brain/<design>.gin``,
   the paper's protocol at ``--size``) plus ``--run`` extras, all at once on the one GPU
   (several paper-size trainings fit), each stopped by ``--max-time``. Every validation
   line is collected; the table gives per run the optimiser steps, micro-batches per
   second (shared GPU), Dice, end-point error (voxels) and folding at the first, best and
   last validation, and whether it blew up (non-finite loss, or end-point error above
   three times its first value).

Everything is written under ``--out`` (a ``runs/`` folder per training, ``report.txt``),
and ``--archive`` packs the logs and the report into one ``.tar.gz`` (no checkpoints).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from ddmr_core.experiments.catalogue import design_config, design_files

DESIGNS = design_files()  # {"BL-N": "bl_n", ...}: the design catalogue, from configs/designs/
EPOCH = re.compile(r"^epoch (\d+): validation loss (\S+)(.*)$")


def profile(args, say) -> None:
    """Micro-batches per second of the paper network, fp32 against bf16, and bf16's top kernels."""
    import torch
    from torch.utils.data import default_collate

    from ddmr_core.config.parsing import parse_config
    from ddmr_core.training.trainer import Trainer

    s = args.size
    parse_config(["experiments/brain/uw_nsd.gin"], [f"SIZE = ({s}, {s}, {s})", "ddmr.Trainer.progress = False",
                                                     "ddmr.datasets.mni_brain.subjects = (8, 1, 1)"])
    trainer = Trainer(run_dir=Path(args.out) / "profile", device=args.device)
    trainer.setup()
    model, dev = trainer.model, trainer.device
    batch = trainer.prepare(default_collate([trainer.train_set[0]]), train=True)

    def step(bf16: bool):
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 and dev.type == "cuda" else torch.enable_grad()
        with ctx:
            total, _, _ = model.compute_loss(batch)
        total.float().backward()
        model.zero_grad(set_to_none=True)

    rates = {}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        for _ in range(3):
            step(bf16)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(args.profile_steps):
            step(bf16)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        rates[name] = args.profile_steps / (time.perf_counter() - t)
    say(f"paper U-Net (UW-NSD) at {s}^3, forward + backward of one micro-batch: fp32 {rates['fp32']:.2f}/s, "
        f"bf16 {rates['bf16']:.2f}/s (bf16/fp32 = {rates['bf16'] / rates['fp32']:.2f})")
    if dev.type == "cuda":
        from torch.profiler import ProfilerActivity, profile as tprofile

        with tprofile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(2):
                step(True)
            torch.cuda.synchronize()
        say("bf16 step, top CUDA kernels:")
        for line in prof.key_averages().table(sort_by="cuda_time_total", row_limit=10).splitlines():
            say("  " + line)
    del trainer, model, batch
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def launch(name: str, config: str, bindings: list, args, runs: Path) -> tuple:
    run_dir = runs / re.sub(r"[^A-Za-z0-9_.+-]", "_", name)
    log = open(str(run_dir) + ".log", "w")
    cmd = [sys.executable, "-m", "ddmr_core", "train", config, "--out", str(run_dir), "--device", args.device,
           "--max-time", f"{args.minutes * 60:.0f}"]
    s = args.size
    for b in [f"SIZE = ({s}, {s}, {s})", "ddmr.Trainer.log_images = False",
              *args.gin, *bindings]:
        cmd += ["--gin", b]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED="1")
    return name, run_dir, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log


def parse_log(path: Path) -> list[dict]:
    rows = []
    for line in Path(path).read_text(errors="replace").splitlines():
        m = EPOCH.match(line.strip())
        if not m:
            continue
        row = {"epoch": int(m.group(1)), "loss": float(m.group(2).rstrip(","))}
        for part in m.group(3).split(","):
            kv = part.replace("(best)", "").strip().split(" ")
            if len(kv) == 2:
                try:
                    row[kv[0]] = float(kv[1])
                except ValueError:
                    pass
        rows.append(row)
    return rows


def steps_and_rate(run_dir: Path) -> tuple:
    """(optimiser steps, micro-batches per second) from the run's last checkpoint."""
    import torch

    last = run_dir / "last.pt"
    if not last.exists():
        return 0, math.nan
    ck = torch.load(last, map_location="cpu", weights_only=True)
    c = ck.get("counters", {})
    secs = float(c.get("train_seconds", 0.0)) or math.nan
    acc = re.search(r"^ddmr\.Trainer\.accumulate\s*=\s*(\d+)", ck.get("gin_config", ""), re.M)
    micro = int(c.get("global_step", 0)) * (int(acc.group(1)) if acc else 8)
    return int(c.get("optimizer_steps", 0)), micro / secs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="gpu_out")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--minutes", type=float, default=4.0, help="training time of each run")
    ap.add_argument("--designs", nargs="*", default=list(DESIGNS), choices=list(DESIGNS))
    ap.add_argument("--bf16-design", default="UW-NSD", help="also train this design with bf16 ('' for none)")
    ap.add_argument("--run", action="append", default=[], metavar="NAME=CONFIG[;BINDING...]",
                    help="an extra run: a name, a config and gin bindings separated by ';'")
    ap.add_argument("--gin", action="append", default=[], metavar="BINDING", help="binding for every run")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads per training process")
    ap.add_argument("--no-profile", dest="profile_on", action="store_false")
    ap.add_argument("--profile-steps", type=int, default=20)
    ap.add_argument("--archive", default=None, help="write logs + report to this .tar.gz")
    args = ap.parse_args(argv)

    out = Path(args.out)
    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    report = open(out / "report.txt", "w")

    def say(line=""):
        print(line, flush=True)
        report.write(line + "\n")
        report.flush()

    t0 = time.perf_counter()
    if args.profile_on:
        try:
            profile(args, say)
        except Exception as exc:  # the curves matter more than the profile
            say(f"profile failed: {type(exc).__name__}: {exc}")
    plan = [(d, design_config("brain", d), []) for d in args.designs]
    if args.bf16_design:
        plan.append((f"{args.bf16_design}-bf16", design_config("brain", args.bf16_design),
                     ["ddmr.Trainer.bf16 = True"]))
    for spec in args.run:
        name, _, rest = spec.partition("=")
        config, *bindings = [p.strip() for p in rest.split(";") if p.strip()]
        plan.append((name.strip(), config, bindings))
    if not plan:
        report.close()
        return 0
    say(f"{len(plan)} trainings at once at {args.size}^3 on {args.device}, {args.minutes:g} min each: "
        + ", ".join(p[0] for p in plan))
    procs = [launch(name, config, bindings, args, runs) for name, config, bindings in plan]
    for name, run_dir, proc, log in procs:
        proc.wait()
        log.close()
    say(f"all trainings finished after {(time.perf_counter() - t0) / 60:.1f} min")
    say()
    say(f"{'run':<22} {'exit':>4} {'steps':>5} {'mb/s':>5}  {'dice first/best/last':>22}  "
        f"{'epe first/min/last (vox)':>26}  {'fold% last':>10}  verdict")
    for name, run_dir, proc, log in procs:
        rows = parse_log(str(run_dir) + ".log")
        steps, rate = steps_and_rate(run_dir)
        if not rows:
            tail = Path(str(run_dir) + ".log").read_text(errors="replace").strip().splitlines()[-1:] or ["?"]
            say(f"{name:<22} {proc.returncode:>4} {steps:>5} {rate:>5.1f}  no validation: {tail[0][:120]}")
            continue
        dice = [r.get("dice", math.nan) for r in rows]
        epe = [r.get("field_error", math.nan) for r in rows]
        fold = 100 * rows[-1].get("negative_jacobian", math.nan)
        blew = any(not math.isfinite(r["loss"]) for r in rows) or max(epe) > 3 * epe[0]
        say(f"{name:<22} {proc.returncode:>4} {steps:>5} {rate:>5.1f}  "
            f"{dice[0]:>6.3f} {max(dice):>6.3f} {dice[-1]:>6.3f}    {epe[0]:>7.2f} {min(epe):>7.2f} {epe[-1]:>8.2f}  "
            f"{fold:>10.2f}  {'BLEW UP' if blew else 'stable'}")
    say()
    say("learning curves (epoch: dice / epe voxels / fold %):")
    for name, run_dir, proc, log in procs:
        rows = parse_log(str(run_dir) + ".log")
        say(f"  {name}: " + "; ".join(f"{r['epoch']}: {r.get('dice', math.nan):.3f}/{r.get('field_error', math.nan):.2f}/"
                                      f"{100 * r.get('negative_jacobian', math.nan):.1f}" for r in rows))
    report.close()
    if args.archive:
        with tarfile.open(args.archive, "w:gz") as tar:
            tar.add(out / "report.txt", arcname="report.txt")
            for name, run_dir, proc, log in procs:
                tar.add(str(run_dir) + ".log", arcname=f"logs/{run_dir.name}.log")
                events = run_dir / "logs"
                if events.exists():
                    tar.add(events, arcname=f"tensorboard/{run_dir.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
