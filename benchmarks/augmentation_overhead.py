"""Cost of the on-the-fly augmentation (paper section 2.2 / Fig. S1): the time of one
training step of the backbone with and without the augmentation pipeline, the overhead
in percent, and the extra peak memory.

    .venv/bin/python benchmarks/augmentation_overhead.py                 # 64^3, CPU, paper backbone
    .venv/bin/python benchmarks/augmentation_overhead.py --size 128 --device cuda
    .venv/bin/python benchmarks/augmentation_overhead.py --backbone small

A step is: (pipeline, if on) -> backbone forward -> warp -> NCC + grad_l2 -> backward ->
Adam step, on a batch of synthetic phantoms (``ddmr_plugins.datasets.synthetic``) at
3.5 mm spacing (a 224 mm field of view at 64^3, brain-like, so the 6 mm TPS is at paper
scale). The augmentation is ``configs/mixins/augment/paper.gin``. "Without" trains on a
pair made once beforehand. The two variants alternate, step by step, so a machine whose
load changes affects both alike; the figures are medians. The pipeline is also timed on
its own, which is the more robust estimate of its share on a busy machine.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` per variant; on the CPU, each
variant runs in a fresh subprocess and the peak resident set size (``ru_maxrss``) of the
two is compared (the allocator reuses the memory freed between the pipeline and the
backward pass, so this can be ~0); a third subprocess runs the pipeline alone and reports its peak resident memory above
what was resident before it (``VmHWM`` reset through ``/proc/self/clear_refs``): for the
first call, which builds the TPS operator cache (kept: ~70 MB at 64^3), and for the
following calls, an upper bound on what it adds to a training step.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

BACKBONES = {"paper": "mixins/backbone/vxm_paper.gin", "small": "mixins/backbone/vxm_small.gin"}


def build(args):
    from ddmr_core.data import datasets as experiment
    from ddmr_core.model.build import build_model
    from ddmr_core.config.parsing import parse_config
    from ddmr_core.spatial.fields import one_hot
    from ddmr_plugins.datasets.synthetic import make_phantom

    size = (args.size,) * 3
    parse_config(
        [BACKBONES[args.backbone], "mixins/losses/n.gin", "mixins/augment/paper.gin"],
        bindings=[f"SIZE = {size}"],
    )
    dev = torch.device(args.device)
    model = build_model().to(dev)
    pipeline = experiment.build_augmentation().to(dev)
    imgs, segs = zip(*[make_phantom(size, 3, seed=i) for i in range(args.batch)])
    image = torch.as_tensor(np.stack(imgs))[:, None].to(dev)
    seg = one_hot(torch.as_tensor(np.stack(segs))[:, None], (1, 2, 3)).to(dev)
    spacing = torch.full((args.batch, 3), 3.5, device=dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    fixed_pair = pipeline(image, seg, spacing, index=torch.arange(args.batch))
    return model, pipeline, opt, image, seg, spacing, fixed_pair


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def train_step(model, opt, batch):
    opt.zero_grad(set_to_none=True)
    loss, _, _ = model.compute_loss(batch)
    loss.backward()
    opt.step()


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets the peak resident set size (VmHWM)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def run_pipeline_only(args) -> dict:
    """Peak memory the pipeline itself adds over what was resident before it ran
    (a subprocess without the model; CPU only)."""
    from ddmr_core.data import datasets as experiment
    from ddmr_core.model.build import build_model
    from ddmr_core.config.parsing import parse_config
    from ddmr_core.spatial.fields import one_hot
    from ddmr_plugins.datasets.synthetic import make_phantom

    size = (args.size,) * 3
    parse_config(["mixins/augment/paper.gin"], bindings=[f"SIZE = {size}"])
    pipeline = experiment.build_augmentation()
    imgs, segs = zip(*[make_phantom(size, 3, seed=i) for i in range(args.batch)])
    image = torch.as_tensor(np.stack(imgs))[:, None]
    seg = one_hot(torch.as_tensor(np.stack(segs))[:, None], (1, 2, 3))
    spacing = torch.full((args.batch, 3), 3.5)
    before = _rss_bytes()
    _reset_peak_rss()
    out = pipeline(image, seg, spacing, index=torch.arange(args.batch))  # builds the TPS cache
    first = _peak_rss_bytes() - before
    _reset_peak_rss()
    for i in range(3):
        out = pipeline(image, seg, spacing, index=torch.arange(args.batch) + i + 1)
    del out
    return {"peak_bytes": _peak_rss_bytes() - before, "first_call_peak_bytes": first}


def run_variant(args, variant: str) -> dict:
    """One variant only (used in a subprocess for the CPU memory figure)."""
    if variant == "pipeline":
        return run_pipeline_only(args)
    model, pipeline, opt, image, seg, spacing, pair = build(args)
    dev = image.device
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(args.warmup + args.steps):
        sync(dev)
        t = time.perf_counter()
        batch = pair if variant == "without" else pipeline(image, seg, spacing, index=torch.arange(args.batch) + i * args.batch)
        train_step(model, opt, batch)
        sync(dev)
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated() if dev.type == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"median_s": statistics.median(times), "peak_bytes": peak}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--backbone", choices=sorted(BACKBONES), default="paper")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--variant", choices=["with", "without", "pipeline"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.variant:  # subprocess mode
        print(json.dumps(run_variant(args, args.variant)))
        return

    model, pipeline, opt, image, seg, spacing, pair = build(args)
    dev = image.device
    with_t, without_t, aug_t = [], [], []
    for i in range(args.warmup + args.steps):
        for variant in ("without", "with"):
            sync(dev)
            t0 = time.perf_counter()
            if variant == "with":
                batch = pipeline(image, seg, spacing, index=torch.arange(args.batch) + i * args.batch)
                sync(dev)
                t1 = time.perf_counter()
            else:
                batch = pair
            train_step(model, opt, batch)
            sync(dev)
            t2 = time.perf_counter()
            if i >= args.warmup:
                if variant == "with":
                    with_t.append(t2 - t0)
                    aug_t.append(t1 - t0)
                else:
                    without_t.append(t2 - t0)
    m_with, m_without, m_aug = (statistics.median(x) for x in (with_t, without_t, aug_t))

    if dev.type == "cuda":
        mem = {v: run_variant(args, v)["peak_bytes"] for v in ("without", "with")}
    else:
        mem = {}
        for v in ("without", "with", "pipeline"):
            cmd = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--variant", v,
                   "--steps", "2", "--warmup", "1"]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            res = json.loads(out.strip().splitlines()[-1])
            mem[v] = res["peak_bytes"]
            if "first_call_peak_bytes" in res:
                mem["first"] = res["first_call_peak_bytes"]
    nparams = sum(p.numel() for p in model.parameters())
    print(f"device: {dev} ({torch.get_num_threads()} threads)  size: {args.size}^3  batch: {args.batch}  "
          f"backbone: vxm_unet '{args.backbone}' ({nparams / 1e6:.1f} M parameters)  steps: {args.steps}")
    print(f"training step without augmentation: {m_without * 1e3:9.1f} ms (median)")
    print(f"training step with augmentation:    {m_with * 1e3:9.1f} ms (median)")
    print(f"  of which the pipeline:             {m_aug * 1e3:9.1f} ms (median)")
    print(f"overhead (step with / without - 1):  {100 * (m_with / m_without - 1):9.2f} %")
    print(f"overhead (pipeline / step without):  {100 * m_aug / m_without:9.2f} %")
    what = "max_memory_allocated" if dev.type == "cuda" else "peak RSS, separate processes"
    print(f"peak memory without: {mem['without'] / 2**20:9.1f} MiB, with: {mem['with'] / 2**20:9.1f} MiB, "
          f"extra: {(mem['with'] - mem['without']) / 2**20:+.1f} MiB "
          f"({100 * (mem['with'] - mem['without']) / mem['without']:+.2f} %) [{what}]")
    if "pipeline" in mem:
        print(f"pipeline alone, peak above resident before it: first call (builds the TPS cache) "
              f"{mem['first'] / 2**20:.1f} MiB, later calls {mem['pipeline'] / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
