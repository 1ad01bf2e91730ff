"""The Hausdorff loss (UW-NSDH's fourth term): time per call of MONAI's and of ddmr's.

    python benchmarks/hausdorff_loss.py [--sizes 64 128] [--labels 3] [--batch 1] [--device cuda]

MONAI's ``HausdorffDTLoss`` computes two distance maps per label and sample, for the
prediction and for the target (foreground and background side each), with SciPy on the CPU,
copying CUDA tensors there and back unless cuCIM is installed. ddmr's loss plugin computes
each map in one pass of the ``edt`` package on the CPU and with its exact torch transform
(``distance_transform``) on CUDA tensors. This prints, per grid size, the median time of one
forward + backward of each on box-shaped label maps, the ratio of MONAI's to ddmr's, and
the largest relative difference of the loss values (all are exact, so it stays at rounding).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def _maps(size: int, labels: int, batch: int, device: str):
    target = torch.zeros(batch, labels, size, size, size, device=device)
    for l in range(labels):  # boxes of about a third of the grid, shifted per label
        a, b = size // 6 + l * size // 16, size // 2 + l * size // 16
        target[:, l, a:b, a:b + size // 8, a:b] = 1
    gen = torch.Generator(device="cpu").manual_seed(0)
    noise = torch.rand(target.shape, generator=gen).to(device)
    pred = (torch.roll(target, 2, dims=2) * 0.8 + 0.2 * noise).clamp(0, 1)
    return pred, target


def _time(loss, pred, target, repeats: int) -> tuple[float, float]:
    times, value = [], None
    for i in range(repeats + 1):
        p = pred.clone().requires_grad_(True)
        if p.is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        v = loss(p, target)
        v.backward()
        if p.is_cuda:
            torch.cuda.synchronize()
        if i:  # the first call warms up
            times.append(time.perf_counter() - t0)
        value = v.item()
    return statistics.median(times), value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", type=int, default=[64, 128])
    ap.add_argument("--labels", type=int, default=3, help="brain: CSF, grey and white matter")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    from monai.losses import HausdorffDTLoss

    from ddmr_core.plugins.registry import Registry

    reg = Registry()
    path = "torch" if args.device.startswith("cuda") else "edt"
    print(f"device {args.device} (ddmr's distance maps: {path}), {args.labels} labels, batch {args.batch}, "
          f"torch threads {torch.get_num_threads()}, median of {args.repeats} calls (forward + backward)")
    print(f"{'grid':>6} {'MONAI (s)':>10} {'ddmr (s)':>10} {'ratio':>7} {'rel. diff':>10}")
    for size in args.sizes:
        pred, target = _maps(size, args.labels, args.batch, args.device)
        t_monai, v_monai = _time(HausdorffDTLoss(alpha=2.0, include_background=True), pred, target, args.repeats)
        t_ddmr, v_ddmr = _time(reg.create("losses", "hausdorff"), pred, target, args.repeats)
        print(f"{size:>5}^3 {t_monai:>10.3f} {t_ddmr:>10.3f} {t_monai / t_ddmr:>6.1f}x "
              f"{abs(v_ddmr - v_monai) / abs(v_monai):>10.1e}")


if __name__ == "__main__":
    main()
