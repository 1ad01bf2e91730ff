"""ddmr's two CPU kernel fixes against PyTorch's own calls, one pair (batch 1).

    python benchmarks/cpu_kernels.py [--repeats 10]

* 3-D convolution: ``torch.nn.Conv3d`` against ``ddmr_core.spatial.layers.Conv3d`` (oneDNN always)
  for every distinct layer shape of the light default U-Net at 64^3
  (``mixins/backbone/default.gin``, read from the built network), forward only (inference)
  and forward + backward (training), and the whole light and paper-size networks' forward
  pass and forward + backward (timed in alternation);
* volume sampling: ``F.grid_sample`` against ``ddmr_core.spatial.fields.grid_sample`` (a batch of one
  cut into slabs), 64^3 points in a 128^3 volume as one refinement step samples them, forward
  and forward + backward; and a refinement step's sub-lattice (1.7e5 scattered points in a
  1 mm brain's working grid, forward + backward): ``grid_sample`` against
  ``ddmr_core.spatial.fields.sample_linear_border`` (eight gathers).

Prints the median time of each, after one warm-up, and the ratio PyTorch / ddmr. The results
of both pairs of calls are checked equal before timing.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def report(name: str, ref_ms: float, ddmr_ms: float) -> None:
    print(f"{name:44s} torch {ref_ms:8.1f} ms   ddmr {ddmr_ms:8.1f} ms   ratio {ref_ms / ddmr_ms:5.1f}x")


def backbone_at_64(gin: str) -> torch.nn.Module:
    """The backbone of a ``mixins/backbone/*.gin`` file, built for 64^3."""
    from ddmr_core.config.parsing import parse_config
    from ddmr_core.model.build import build_model

    parse_config([gin], ["SIZE = (64, 64, 64)"])
    return build_model().backbone


def whole_network(name: str, net: torch.nn.Module, repeats: int) -> None:
    """One pair through a whole backbone at 64^3, forward (inference) and forward +
    backward, with its convolutions as ddmr's Conv3d and swapped back to nn.Conv3d;
    the two are timed in alternation, so drifts of a noisy machine hit both alike."""
    from ddmr_core.spatial.layers import Conv3d

    convs = [m for m in net.modules() if isinstance(m, Conv3d)]
    pair = torch.rand(1, 1, 64, 64, 64), torch.rand(1, 1, 64, 64, 64)

    def forward():
        with torch.inference_mode():
            net(*pair)

    def train_step():
        net.zero_grad(set_to_none=True)
        net(*pair).square().mean().backward()

    times = {(k, impl): [] for k in ("fwd", "train") for impl in ("torch", "ddmr")}
    impls = [("torch", torch.nn.Conv3d), ("ddmr", Conv3d)]
    for r in range(repeats + 1):  # the first round warms up
        for impl, cls in impls if r % 2 else impls[::-1]:
            for m in convs:
                m.__class__ = cls
            for k, fn in (("fwd", forward), ("train", train_step)):
                t = time.perf_counter()
                fn()
                if r:
                    times[(k, impl)].append(1000 * (time.perf_counter() - t))
    for m in convs:
        m.__class__ = Conv3d
    med = {key: statistics.median(v) for key, v in times.items()}
    report(f"{name} at 64^3 (whole network), forward", med[("fwd", "torch")], med[("fwd", "ddmr")])
    report(f"{name} at 64^3, forward + backward", med[("train", "torch")], med[("train", "ddmr")])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args(argv)

    from ddmr_core.spatial.layers import Conv3d
    from ddmr_core.spatial.fields import grid_sample, sample_linear_border
    from ddmr_core.spatial.grids import to_normalised

    torch.manual_seed(0)
    print(f"# CPU, torch {torch.__version__}, {torch.get_num_threads()} threads, batch 1, median of {args.repeats}")
    net = backbone_at_64("mixins/backbone/default.gin")
    shapes = []  # (in, out, grid) of every convolution, in call order
    hooks = [m.register_forward_hook(lambda m, i, o: shapes.append((m.in_channels, m.out_channels, i[0].shape[2])))
             for m in net.modules() if isinstance(m, torch.nn.Conv3d)]
    pair = torch.rand(1, 1, 64, 64, 64), torch.rand(1, 1, 64, 64, 64)
    with torch.inference_mode():
        net(*pair)
    for h in hooks:
        h.remove()
    for cin, cout, n in dict.fromkeys(shapes):
        plain = torch.nn.Conv3d(cin, cout, 3, padding=1)
        mine = Conv3d(cin, cout, 3, padding=1)
        mine.load_state_dict(plain.state_dict())
        x = torch.randn(1, cin, n, n, n)
        with torch.inference_mode():
            torch.testing.assert_close(mine(x), plain(x), atol=1e-3, rtol=1e-3)
            fwd = (median_ms(lambda: plain(x), args.repeats), median_ms(lambda: mine(x), args.repeats))
        report(f"conv {cin:>2}->{cout:<2} at {n}^3, forward", *fwd)
        xg = x.clone().requires_grad_()
        both = (median_ms(lambda: plain(xg).sum().backward(), args.repeats),
                median_ms(lambda: mine(xg).sum().backward(), args.repeats))
        report(f"conv {cin:>2}->{cout:<2} at {n}^3, forward + backward", *both)
    whole_network("light U-Net", net, args.repeats)
    whole_network("paper U-Net", backbone_at_64("mixins/backbone/vxm_paper.gin"), min(args.repeats, 5))

    volume = torch.rand(1, 1, 128, 128, 128)
    grid = (torch.rand(1, 64, 64, 64, 3) * 2 - 1).requires_grad_()
    kw = dict(mode="bilinear", padding_mode="border", align_corners=True)
    torch.testing.assert_close(grid_sample(volume, grid, **kw), F.grid_sample(volume, grid, **kw))
    with torch.inference_mode():
        fwd = (median_ms(lambda: F.grid_sample(volume, grid, **kw), args.repeats),
               median_ms(lambda: grid_sample(volume, grid, **kw), args.repeats))
    report("grid_sample 64^3 points in 128^3, forward", *fwd)
    both = (median_ms(lambda: F.grid_sample(volume, grid, **kw).sum().backward(), args.repeats),
            median_ms(lambda: grid_sample(volume, grid, **kw).sum().backward(), args.repeats))
    report("grid_sample 64^3 points in 128^3, fwd + bwd", *both)

    # a refinement step: a sub-lattice of every 3rd voxel of a 1 mm brain's working grid,
    # displaced, sampled with border padding, and the gradient to its coordinates
    shape = (153, 189, 159)
    volume = torch.rand(1, 1, *shape)
    lattice = torch.stack(torch.meshgrid(*[torch.arange(0, n, 3.0) for n in shape], indexing="ij"))[None]
    coords = (lattice + torch.randn_like(lattice) * 2).flatten(2).requires_grad_()
    grid = to_normalised(coords[..., None, None].detach(), shape).movedim(1, -1).requires_grad_()
    torch.testing.assert_close(sample_linear_border(volume, coords).detach(),
                               grid_sample(volume, grid, **kw)[..., 0, 0].detach(), atol=1e-4, rtol=0)
    both = (median_ms(lambda: grid_sample(volume, grid, **kw).sum().backward(), args.repeats),
            median_ms(lambda: sample_linear_border(volume, coords).sum().backward(), args.repeats))
    report(f"refinement step, {coords.shape[-1]} points, fwd + bwd", *both)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
