"""Trainer overhead: ``ddmr.Trainer`` against a bare PyTorch loop doing the same work.

Both variants train the same model (``vxm_unet``), with the same losses, the same
augmentation pipeline (``tps``) and the same samples in the same order (synthetic
phantoms at 64^3 by default), batch 1 and gradients accumulated over 8 micro-batches:

* bare: DataLoader -> one-hot -> augmentation -> ``compute_loss`` -> ``backward`` (scaled by
  1/8) -> every 8th micro-batch ``Adam.step()``; nothing else;
* trainer: ``Trainer.fit()`` with its bookkeeping (gradient norm, non-finite checks,
  TensorBoard scalars every step, progress bar off), stopped by ``max_steps`` before the
  epoch's end so no validation is timed.

Each variant runs in its own process (so peak memory is its own). The time of an
optimiser step is the wall time between two consecutive step ends; the first
``--warmup`` steps are dropped; the median is reported, of wall time and of the
process's CPU time (the latter is the fairer figure on a machine shared with other
work; ``--threads 1``, the default, keeps it comparable). Peak memory: the process's
peak resident set on CPU, ``torch.cuda.max_memory_allocated`` per step on CUDA.

    python benchmarks/trainer_overhead.py                      # CPU, 64^3, light vxm_unet
    python benchmarks/trainer_overhead.py --device cuda --size 128 --paper   # GPU, paper model
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time

LIGHT = ([16, 32, 32, 32], [16, 16])
PAPER = ([32, 64, 128, 256, 512, 1024], [16, 16])


def config(args) -> list[str]:
    widths, head = PAPER if args.paper else LIGHT
    n_train = args.accumulate * (args.warmup + args.steps + 1)  # the epoch outlasts the run
    return [
        f"SIZE = ({args.size}, {args.size}, {args.size})",
        "ddmr.input_size.size = %SIZE",
        "ddmr.build_dataset.dataset = @ddmr.datasets.synthetic()",
        "ddmr.datasets.synthetic.shape = %SIZE",
        f"ddmr.datasets.synthetic.subjects = ({n_train}, 1, 1)",
        "ddmr.build_model.backbone = @ddmr.backbones.vxm_unet()",
        f"ddmr.backbones.vxm_unet.widths = {widths}",
        f"ddmr.backbones.vxm_unet.head = {head}",
        "ddmr.build_model.losses = {'ncc': @ddmr.losses.ncc(), 'dice': @ddmr.losses.dice(), "
        "'grad_l2': @ddmr.losses.grad_l2()}",
        "ddmr.build_augmentation.steps = [@ddmr.augmenters.tps()]",
        f"ddmr.Trainer.accumulate = {args.accumulate}",
        "ddmr.Trainer.progress = False",
        "ddmr.Trainer.log_images = False",
    ]


def peak_memory_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_bare(args, device) -> tuple[list, list]:
    import torch
    from torch.utils.data import DataLoader

    from ddmr_core.data.datasets import build_augmentation, build_dataset
    from ddmr_core.model.build import build_model
    from ddmr_core.spatial.fields import one_hot

    torch.manual_seed(0)
    model = build_model().to(device).train()
    dataset = build_dataset()
    aug = build_augmentation().to(device)
    train = dataset.split("train")
    g = torch.Generator()
    g.manual_seed(0)  # the order DistributedSampler(seed=0) gives epoch 0
    order = torch.randperm(len(train), generator=g).tolist()
    loader = DataLoader(train, batch_size=1, sampler=order)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ends, mems = [], []
    n_steps = args.warmup + args.steps
    for i, s in enumerate(loader):
        image = s["image"].to(device)
        segs = one_hot(s["seg"].to(device), dataset.labels)
        with torch.no_grad():
            batch = aug(image, segs=segs, spacing=s["spacing"].to(device), affine=s["affine"].to(device),
                        index=s["index"].to(device) + 1_000_003)
        total, _, _ = model.compute_loss(batch)
        (total / args.accumulate).backward()
        if (i + 1) % args.accumulate == 0:
            opt.step()
            opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            ends.append((time.perf_counter(), time.process_time()))
            mems.append(peak_memory_mb(device))
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            if len(ends) == n_steps:
                break
    return ends, mems


def run_trainer(args, device) -> tuple[list, list]:
    import torch

    from ddmr_core.training.trainer import Trainer

    ends, mems = [], []
    with tempfile.TemporaryDirectory() as run_dir:
        t = Trainer(run_dir=run_dir, device=device.type, max_steps=args.warmup + args.steps)
        step = t._optimizer_step

        def timed(*a, **k):
            out = step(*a, **k)
            if device.type == "cuda":
                torch.cuda.synchronize()
            ends.append((time.perf_counter(), time.process_time()))
            mems.append(peak_memory_mb(device))
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            return out

        t._optimizer_step = timed
        t.fit()
    return ends, mems


def child(args) -> None:
    import torch

    from ddmr_core.config.parsing import parse_config

    torch.set_num_threads(args.threads) if args.threads else None
    parse_config([], config(args))
    device = torch.device(args.device)
    ends, mems = (run_bare if args.variant == "bare" else run_trainer)(args, device)
    # step k's time: from the end of step k-1 (the warm-up steps are dropped)
    wall = [b[0] - a[0] for a, b in zip(ends[:-1], ends[1:])][args.warmup - 1:]
    cpu = [b[1] - a[1] for a, b in zip(ends[:-1], ends[1:])][args.warmup - 1:]
    print(json.dumps({"wall": wall, "cpu": cpu, "peak_mb": max(mems[args.warmup:])}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--paper", action="store_true", help="the paper's 6-level U-Net (GPU)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--accumulate", type=int, default=8)
    p.add_argument("--steps", type=int, default=3, help="timed optimiser steps per run")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2, help="alternating runs of each variant")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--variant", choices=("bare", "trainer"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:
        child(args)
        return
    results = {"bare": {"wall": [], "cpu": []}, "trainer": {"wall": [], "cpu": []}}
    peaks = {"bare": 0.0, "trainer": 0.0}
    for _ in range(args.repeats):
        for variant in ("bare", "trainer"):
            cmd = [sys.executable, __file__, "--variant", variant] + [
                a for a in sys.argv[1:] if not a.startswith("--variant")]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit(f"{variant} run failed:\n{r.stderr[-3000:]}")
            out = json.loads(r.stdout.strip().splitlines()[-1])
            for kind in ("wall", "cpu"):
                results[variant][kind] += out[kind]
            peaks[variant] = max(peaks[variant], out["peak_mb"])
    model = "paper vxm_unet" if args.paper else "light vxm_unet [16,32,32,32]"
    print(f"{args.size}^3, {model}, {args.device}, {args.threads or 'default'} thread(s), batch 1 x "
          f"{args.accumulate} accumulated; {len(results['bare']['wall'])} timed steps each")
    med = {v: {k: statistics.median(r[k]) for k in r} for v, r in results.items()}
    for v in ("bare", "trainer"):
        w = results[v]["wall"]
        print(f"  {v:8s} step wall {med[v]['wall']:.3f} s (min {min(w):.3f}, max {max(w):.3f}), "
              f"CPU {med[v]['cpu']:.3f} s; per micro-batch {med[v]['wall'] / args.accumulate * 1000:.0f} ms; "
              f"peak memory {peaks[v]:.0f} MB{' (process RSS)' if args.device == 'cpu' else ' (CUDA allocated)'}")
    for k in ("wall", "cpu"):
        print(f"  ratio trainer/bare ({k}): {med['trainer'][k] / med['bare'][k]:.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()
