"""Inference (prediction + warp) of ddmr's default model against ANTs SyN at 128^3.

    python benchmarks/inference_vs_ants.py [--size 128] [--model CKPT] [--repeats 5] [--device cpu]
    python benchmarks/inference_vs_ants.py --model demo_out/runs/UW-NSD/best.pt --dice-pairs 8

The pair is the MNI152 brain template (shipped in nilearn) and a moving image made from it by
the paper's augmentation (``mixins/augment/paper.gin``). The model is ddmr's light default
U-Net (``mixins/backbone/default.gin``: widths 16-32-32-32, field at half resolution), with
random weights unless ``--model`` gives a checkpoint (the time does not depend on them). Timed: the network's prediction plus warping the
moving image (device synchronised), median of ``--repeats`` after one warm-up; for ANTs, one
``ants_syn`` registration (affine + SyN with mutual information) plus applying its field.
Prints both times, the ratio, and the process's peak resident memory after each phase.
The paper reports 0.78 s (GPU) against 9.2 s for SyN, i.e. ~12x.

A checkpoint trained on a smaller grid (the demo's 64^3) runs as ``ddmr evaluate`` and
``ddmr register`` run it: inputs resized to its grid, field resized back, the moving image
warped at full size; prealignment and instance optimisation, when its config has them,
are part of the timed prediction.

``--dice-pairs N`` (needs ``--model``) then scores accuracy in the same run: it writes N
brain test pairs at ``--size`` (``ddmr build-testset``, seed 2023, cached in
``--work``) and evaluates the model and ``ants_syn`` on them with ``ddmr evaluate``
(metrics dsc and runtime), printing both mean Dice values and the runtime ratio.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--model", default=None, help="checkpoint (default: light U-Net, random weights)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-ants", action="store_true", help="time the model only")
    ap.add_argument("--dice-pairs", type=int, default=0, metavar="N",
                    help="also compare Dice and runtime with ants_syn on N brain test pairs (needs --model)")
    ap.add_argument("--work", default="bench_out/inference_vs_ants", help="folder for the test set and scores")
    args = ap.parse_args(argv)

    from ddmr_core.model.checkpoint import load_model
    from ddmr_core.config.parsing import parse_config
    from ddmr_core.data.datasets import build_augmentation
    from ddmr_core.model.build import build_model
    from ddmr_core.plugins.registry import Registry
    from ddmr_core.spatial.fields import warp

    device = torch.device(args.device)
    s = args.size
    registry = parse_config(["mixins/augment/paper.gin", "mixins/data/mni_brain.gin"],
                            [f"SIZE = ({s}, {s}, {s})", "ddmr.build_augmentation.seed = 7"])
    data = registry.create("datasets", "mni_brain", size=(s, s, s))
    sample = data.split("test")[0]
    out = build_augmentation()(sample["image"][None], spacing=sample["spacing"][None],
                               affine=sample["affine"][None], index=torch.tensor([0]))
    fixed, moving = out["fixed"].to(device), out["moving"].to(device)
    spacing = tuple(float(v) for v in sample["spacing"])

    if args.model:
        model, ckpt = load_model(args.model, device=device)
        what = args.model
        grid = tuple(int(v) for v in ckpt.get("input_size") or (s, s, s))
    else:
        grid = (s, s, s)
        parse_config(["mixins/backbone/default.gin"], [f"SIZE = ({s}, {s}, {s})"])
        model = build_model().to(device).eval()
        what = "light default vxm_unet (mixins/backbone/default.gin), random weights"
    n_params = sum(p.numel() for p in model.backbone.parameters())

    def predict_and_warp():
        with torch.inference_mode():
            # as ddmr evaluate runs a model trained on another grid
            disp = model.predict_on_grid(fixed, moving, grid)
            warped = warp(moving, disp)
        sync(device)
        return warped

    predict_and_warp()  # warm-up (allocator, kernels)
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        predict_and_warp()
        times.append(time.perf_counter() - t)
    t_model = statistics.median(times)
    print(f"grid {s}^3 (model grid {'x'.join(map(str, grid))}), device {device}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"ddmr model ({what}, {n_params / 1e6:.2f} M parameters): prediction + warp "
          f"{t_model:.3f} s (median of {args.repeats}; min {min(times):.3f}); peak RSS {peak_rss_mb():.0f} MB")
    if args.no_ants:
        return 0
    ants_syn = Registry().create("baselines", "ants_syn")
    if not ants_syn.available():
        print("ants_syn: antspyx is not installed; skipped")
        return 0
    f_np, m_np = fixed[0, 0].cpu().numpy(), moving[0, 0].cpu().numpy()
    t = time.perf_counter()
    disp = ants_syn.register(f_np, m_np, spacing)
    warp(moving[:1].cpu(), torch.from_numpy(disp)[None])
    t_ants = time.perf_counter() - t
    print(f"ants_syn (affine + SyN, mutual information): registration + warp {t_ants:.2f} s; "
          f"peak RSS {peak_rss_mb():.0f} MB")
    print(f"speed-up of ddmr over ants_syn at {s}^3: {t_ants / t_model:.1f}x (target >= 10x)")
    if args.dice_pairs:
        if not args.model:
            print("--dice-pairs needs --model CKPT (a trained checkpoint); skipped")
        else:
            dice_comparison(args, s)
    return 0


def dice_comparison(args, s: int) -> None:
    """Mean Dice and runtime of the model and ants_syn on the same brain test pairs."""
    import csv
    from pathlib import Path

    from ddmr_core.data.build_testset import build_testset_named
    from ddmr_core.evaluation.evaluate import evaluate

    work = Path(args.work)
    testset = work / f"testset_{s}"
    if not (testset / "testset.json").exists():
        build_testset_named("mni_brain", args.dice_pairs, s, 2023, testset, overwrite=True, log=lambda *a: None)
    out = work / f"scores_{s}"
    evaluate(testset, models=[f"ddmr={args.model}"], baselines=["ants_syn"], out=out, metrics=["dsc", "runtime"],
             device=args.device, figures=False, progress=lambda line: None)
    with open(out / "per_pair.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("dsc")]
    stats = {}
    for m in ("ddmr", "ants_syn"):
        mine = [r for r in rows if r["method"] == m]
        dsc = sum(float(r["dsc"]) for r in mine) / max(len(mine), 1)
        rt = statistics.median(float(r["runtime"]) for r in mine) if mine else float("nan")
        stats[m] = (dsc, rt, len(mine))
        print(f"{m}: mean DSC {dsc:.3f}, median runtime {rt:.2f} s over {len(mine)} brain pairs at {s}^3")
    (d_m, t_m, _), (d_a, t_a, _) = stats["ddmr"], stats["ants_syn"]
    verdict = "matches or beats" if d_m >= d_a else "is below"
    print(f"Dice: ddmr {d_m:.3f} {verdict} ants_syn {d_a:.3f}; runtime ratio ants_syn/ddmr {t_a / t_m:.1f}x "
          f"(targets: Dice at least ants_syn's, >= 10x faster); per-pair scores in {out}")


if __name__ == "__main__":
    raise SystemExit(main())
