"""Inference time of one registration: prediction plus warp, as the paper times it (section 2.6).

For each backbone (the paper-size ``vxm_unet``, 6 levels of 32..1024 filters, and the
light default of ``configs/mixins/backbone/vxm_small.gin``, also with its field at half
resolution) and each grid size, one pair
of synthetic phantoms is registered: ``disp = backbone(fixed, moving)`` then
``warp(moving, disp)`` (linear) and the label map (nearest). Each (model, size) runs in
its own process, so the peak memory is its own: the process's peak resident set on CPU
(weights, activations and the Python/torch baseline, about 0.3 GB of it), or
``torch.cuda.max_memory_allocated`` on a GPU. One warm-up run, then the median of
``--repeats`` timed runs under ``torch.inference_mode``.

    python benchmarks/inference.py                        # CPU, 64^3 and 128^3, both models
    python benchmarks/inference.py --device cuda --repeats 20
    python benchmarks/inference.py --sizes 64 --models light --threads 2
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

MODELS = {
    # name: (widths, head, half_res) -- keep in step with configs/mixins/backbone/*.gin
    "paper": ([32, 64, 128, 256, 512, 1024], [16, 16], False),  # vxm_paper.gin
    "light": ([16, 32, 32, 32], [16, 16], False),  # vxm_small.gin (the default)
    "light_half": ([16, 32, 32, 32], [16, 16], True),  # vxm_small.gin + half_res = True
}


def worker(args) -> None:
    import torch

    from ddmr_core.spatial.fields import warp
    from ddmr_plugins.backbones.vxm_unet import vxm_unet
    from ddmr_plugins.datasets.synthetic import make_phantom

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    widths, head, half_res = MODELS[args.model]
    size = (args.size,) * 3
    net = vxm_unet(widths=widths, head=head, size=size, half_res=half_res).to(device).eval()
    params = sum(p.numel() for p in net.parameters())
    pair = []
    for seed in (1, 2):
        image, labels = make_phantom(size, 3, seed)
        pair.append((torch.from_numpy(image)[None, None].to(device), torch.from_numpy(labels)[None, None].to(device)))
    (fixed, _), (moving, moving_lab) = pair

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    times = []
    with torch.inference_mode():
        for i in range(1 + args.repeats):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            sync()
            t = time.perf_counter()
            disp = net(fixed, moving)
            warp(moving, disp, mode="linear", padding="border")
            warp(moving_lab, disp, mode="nearest")
            sync()
            if i:  # the first run warms up allocators and kernels
                times.append(time.perf_counter() - t)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"params": params, "median_s": statistics.median(times), "min_s": min(times),
                      "peak_mb": peak, "threads": torch.get_num_threads()}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["paper", "light", "light_half"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    print(f"# ddmr inference benchmark: prediction + warp (image linear, labels nearest), one pair, "
          f"device={args.device}, median of {args.repeats} after 1 warm-up")
    print(f"{'model':<10} {'size':>6} {'params':>8} {'median s':>9} {'min s':>8} {'peak MB':>8} {'threads':>7}")
    for model in args.models:
        for size in args.sizes:
            cmd = [sys.executable, __file__, "--worker", "--model", model, "--size", str(size),
                   "--device", args.device, "--repeats", str(args.repeats), "--threads", str(args.threads)]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                tail = (r.stderr.strip().splitlines() or ["?"])[-1]
                print(f"{model:<10} {size:>5}^3 failed: {tail}")
                continue
            out = json.loads(r.stdout.strip().splitlines()[-1])
            print(f"{model:<10} {size:>5}^3 {out['params'] / 1e6:>7.2f}M {out['median_s']:>9.3f} "
                  f"{out['min_s']:>8.3f} {out['peak_mb']:>8.0f} {out['threads']:>7}")


if __name__ == "__main__":
    main()
