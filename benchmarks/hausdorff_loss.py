"""The Hausdorff loss (UW-NSDH's fourth term): time per call, SciPy distance maps against torch's.

    python benchmarks/hausdorff_loss.py [--sizes 64 128] [--labels 3] [--batch 1] [--device cuda]

MONAI's ``HausdorffDTLoss`` computes four distance maps per label and sample (foreground and
background of the prediction and of the target) with SciPy on the CPU, copying CUDA tensors
there and back unless cuCIM is installed. ddmr's loss plugin computes them with
``distance_transform`` (exact, brute-force separable passes) when the tensors are on CUDA.
This prints, per grid size, the median time of one forward + backward of the loss on
box-shaped label maps with each path, their ratio, and the relative difference of the two
loss values (they must agree: both are exact). On a CPU the SciPy path is the faster one and
is what the plugin uses there.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def _maps(size: int, labels: int, batch: int, device: str):
    target = torch.zeros(batch, labels, size, size, size, device=device)
    for l in range(labels):  # nested boxes, shifted per label, about a third of the grid each
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

    from ddmr_core.registry import Registry

    reg = Registry()
    print(f"device {args.device}, {args.labels} labels, batch {args.batch}, torch threads "
          f"{torch.get_num_threads()}, median of {args.repeats} calls (forward + backward)")
    print(f"{'grid':>6} {'scipy (s)':>10} {'torch (s)':>10} {'ratio':>7} {'rel. diff':>10}")
    for size in args.sizes:
        pred, target = _maps(size, args.labels, args.batch, args.device)
        loss = reg.create("losses", "hausdorff")
        loss.inner.torch_distance = False
        t_scipy, v_scipy = _time(loss, pred, target, args.repeats)
        loss.inner.torch_distance = True
        t_torch, v_torch = _time(loss, pred, target, args.repeats)
        print(f"{size:>5}^3 {t_scipy:>10.3f} {t_torch:>10.3f} {t_scipy / t_torch:>6.1f}x "
              f"{abs(v_torch - v_scipy) / abs(v_scipy):>10.1e}")


if __name__ == "__main__":
    main()
