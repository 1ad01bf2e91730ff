"""Does a config learn, and how fast? Learning curve plus the network alone against ANTs.

    python benchmarks/convergence.py                                  # ddmr's recipe, UW-NSD, 64^3, 60 min
    python benchmarks/convergence.py experiments/brain/bl_n.gin --max-time 20m
    python benchmarks/convergence.py experiments/brain/uw_nsd.gin --paper --steps 100   # paper network
    python benchmarks/convergence.py --device cuda --size 128 --paper --max-time 5m
    python benchmarks/convergence.py experiments/finetune_two_step/uw_nsd.gin --data abdomen_phantom \
        --gin "ddmr.finetune.checkpoint = 'brain-mr'" --max-time 20m     # transfer, from the shipped model

Trains CONFIG (default ``experiments/brain/uw_nsd.gin``, on the brain template with the
paper's augmentation; the config names its data) from a clean start in ``--work``, for a wall-clock (``--max-time``)
or step (``--steps``) budget, and prints one row per validation: optimiser step, training
wall time, validation Dice, mean end-point error against the augmentation's ground-truth
field (voxels), folding (% of voxels with a non-positive Jacobian determinant) and the
validation loss; the first row, step 0, is the network as initialised. After training, the
time to quality: the optimiser steps and minutes of training until validation Dice first
reached the affine start's + 0.05 and ``ants_syn``'s Dice, both measured on the same
validation pairs with the same Dice (``ants_syn`` left out with ``--no-ants``). Unless ``--paper`` is given, ddmr's training recipe is included
(``mixins/recipe/learnt.gin``: affine start, light GroupNorm U-Net with a coarse
diffeomorphic field, supervision by the ground-truth field, warm-up); ``--paper`` trains the config as the
paper does (its own backbone: the paper-size U-Net for ``experiments/*``).

Then it scores the best checkpoint, the network alone (no instance optimisation), on
fixed test pairs of ``--data`` (default the brain template; ``ddmr build-testset --seed
2023``: for the brain, the demo's 8 pairs at 64^3,
and 4 pairs at 128^3 registered as ``ddmr evaluate`` does, resized to the model's grid
and the field back) with ``ants_syn`` and ``identity`` on the same pairs, and prints a
final line per grid: mean Dice, end-point error (mm), folding and median runtime of
each, and the runtime ratio (runtime: prediction and warp, as ``ddmr evaluate`` times it).

A rerun with ``--resume`` continues the same run (the budget counts over the whole run).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

import torch


def main(argv=None) -> int:
    from ddmr_core.commands import duration

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", default="experiments/brain/uw_nsd.gin")
    ap.add_argument("--gin", action="append", default=[], metavar="BINDING", help="extra gin binding (repeatable)")
    ap.add_argument("--size", type=int, default=64, help="grid S^3 (default 64)")
    ap.add_argument("--paper", action="store_true", help="train the config as the paper does (no ddmr recipe, "
                    "the config's own backbone)")
    ap.add_argument("--light", action="store_true", help="with --paper: the light U-Net instead of the config's")
    ap.add_argument("--max-time", type=duration, default=None, metavar="DURATION",
                    help="training budget (default 60m unless --steps is given)")
    ap.add_argument("--steps", type=int, default=None, help="optimiser-step budget")
    ap.add_argument("--pairs", type=int, default=8, help="test pairs (default 8, the demo's)")
    ap.add_argument("--test-sizes", type=int, nargs="+", default=None, metavar="S",
                    help="grids of the final comparison (default: the training grid and 128; pairs at a "
                         "grid other than the training one are registered as ddmr evaluate does, resized "
                         "to the model's grid and the field back)")
    ap.add_argument("--pairs-128", type=int, default=4, help="test pairs at grids above 64^3 (default 4)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--work", default="bench_out/convergence", help="run folder and test set")
    ap.add_argument("--resume", action="store_true", help="continue the run in --work")
    ap.add_argument("--no-ants", action="store_true", help="skip ants_syn in the final comparison")
    ap.add_argument("--no-test", action="store_true", help="learning curve only")
    ap.add_argument("--data", default="mni_brain", metavar="DATASET",
                    help="built-in dataset of the test pairs (default mni_brain; abdomen_phantom for CT)")
    args = ap.parse_args(argv)
    if args.max_time is None and args.steps is None:
        args.max_time = 3600.0

    from ddmr_core.config.parsing import parse_config
    from ddmr_core.training.trainer import Trainer

    s = args.size
    work = Path(args.work)
    run_dir = work / "run"
    bindings = [f"SIZE = ({s}, {s}, {s})"]
    if args.light or not args.paper:
        bindings.append("include 'mixins/backbone/default.gin'")
    if not args.paper:
        bindings.append("include 'mixins/recipe/learnt.gin'")
    bindings += ["ddmr.Trainer.progress = False", "ddmr.Trainer.log_images = False"] + list(args.gin)
    parse_config([args.config], bindings, check_macros=True)
    trainer = Trainer(run_dir=run_dir, device=args.device, max_steps=args.steps, max_time=args.max_time,
                      resume=args.resume)
    trainer.progress = False

    header = f"{'step':>6} {'minutes':>8} {'dice':>6} {'epe_vox':>8} {'fold_%':>7} {'loss':>10}"

    def row(h):
        print(f"{h['step']:>6} {h['seconds'] / 60:>8.2f} {h.get('dice', float('nan')):>6.3f} "
              f"{h.get('field_error', float('nan')):>8.3f} {100 * h.get('negative_jacobian', float('nan')):>7.3f} "
              f"{h['loss']:>10.4g}", flush=True)

    print(f"config {args.config} + {'paper protocol' if args.paper else 'mixins/recipe/learnt.gin'}, "
          f"{s}^3, device {args.device}, torch threads {torch.get_num_threads()}, "
          f"budget {'%d steps' % args.steps if args.steps else ''}{' / ' if args.steps and args.max_time else ''}"
          f"{'%.0f min' % (args.max_time / 60) if args.max_time else ''}", flush=True)
    trainer.setup()
    print(f"backbone {type(trainer.model.backbone).__name__}, "
          f"{sum(p.numel() for p in trainer.model.backbone.parameters()) / 1e6:.2f} M parameters", flush=True)
    print(header, flush=True)
    if not trainer.history:  # step 0: the network as initialised (the affine start's Dice)
        m = trainer.validate()
        row({"step": 0, "seconds": 0.0, **{k: float(v) for k, v in m.items()}})
    for h in trainer.history:
        row(h)
    trainer.on_validation = row
    summary = trainer.fit()
    print(f"stopped: {summary['stopped']} after {summary['optimizer_steps']} optimiser steps, "
          f"{trainer.elapsed() / 60:.1f} min of training", flush=True)
    time_to_quality(trainer, work, ants=not args.no_ants)
    if args.no_test:
        return 0
    for size in args.test_sizes or sorted({s, 128}):
        compare(args, run_dir, work, size, args.pairs if size <= 64 else args.pairs_128)
    return 0


def reference_dice(trainer, work: Path, ants: bool) -> dict:
    """Validation Dice (the curve's measure, on the same validation pairs) of the affine
    start alone and of ``ants_syn``; kept in ``work/reference_dice.json`` (a rerun reuses it)."""
    import json

    from ddmr_core.spatial.prealign import prealign_field
    from ddmr_core.plugins.registry import Registry
    from ddmr_core.training.validation import validation_metrics

    path = work / "reference_dice.json"
    ref = json.loads(path.read_text()) if path.exists() else {}
    want = ["affine"] + (["ants_syn"] if ants else [])
    if all(k in ref for k in want):
        return ref
    registry = Registry(bind_gin=False)
    syn = None
    if ants:
        syn = registry.get("baselines", "ants_syn")()
        if not getattr(syn, "available", lambda: True)():
            syn, want = None, ["affine"]
    sums = {k: 0.0 for k in want}
    n = 0
    for sample in trainer._loader(trainer.val_set, list(range(len(trainer.val_set)))):
        batch = trainer.prepare(sample, train=False)
        fixed, moving = batch["fixed"], batch["moving"]
        pre = prealign_field(trainer.model.prealign or "affine", fixed, moving, trainer.model.prealign_iterations)
        fields = {"affine": pre[0] if pre is not None else torch.zeros_like(batch["disp_true"])}
        if syn is not None:
            spacing = [float(v) for v in batch["spacing"][0]]
            disp = syn.register(fixed[0, 0].cpu().numpy(), moving[0, 0].cpu().numpy(), spacing)
            fields["ants_syn"] = torch.as_tensor(disp)[None].to(fixed.device)
        for k, disp in fields.items():
            sums[k] += float(validation_metrics(batch, {"disp": disp})["dice"])
        n += 1
    ref.update({k: v / max(n, 1) for k, v in sums.items()})
    path.write_text(json.dumps(ref, indent=1))
    return ref


def time_to_quality(trainer, work: Path, ants: bool) -> None:
    """Steps and minutes of training until validation Dice first reached the affine start
    + 0.05 and ``ants_syn``'s Dice on the same validation pairs (time to quality)."""
    history = [h for h in trainer.history if h.get("dice") == h.get("dice")]
    if not history:
        return
    ref = reference_dice(trainer, work, ants)
    targets = [("affine start + 0.05", ref["affine"] + 0.05)]
    if "ants_syn" in ref:
        targets.append(("ants_syn", ref["ants_syn"]))
    parts = []
    for name, target in targets:
        hit = next((h for h in history if h["dice"] >= target), None)
        parts.append(f"{name} ({target:.3f}): " + (f"step {hit['step']}, {hit['seconds'] / 60:.1f} min" if hit else
                                                   f"not reached in {history[-1]['step']} steps "
                                                   f"({history[-1]['seconds'] / 60:.1f} min; best {max(h['dice'] for h in history):.3f})"))
    print(f"time to quality (validation Dice, {len(trainer.val_set)} pairs; affine start alone {ref['affine']:.3f}"
          + (f", ants_syn {ref['ants_syn']:.3f}" if "ants_syn" in ref else "") + "): " + "; ".join(parts), flush=True)


def compare(args, run_dir: Path, work: Path, s: int, pairs: int) -> None:
    """The best checkpoint, network alone, against ants_syn and identity on fixed pairs."""
    from ddmr_core.evaluation.evaluate import evaluate
    from ddmr_core.data.build_testset import build_testset_named
    from ddmr_core.experiments.protocol import best_checkpoint

    testset = work / f"testset_{args.data}_{s}_{pairs}"
    if not (testset / "testset.json").exists():
        # the test pairs are preprocessed as the run's data: --gin bindings of that dataset
        # (e.g. ddmr.datasets.abdomen_phantom.preprocess) apply to them too
        own = [b for b in args.gin if b.strip().startswith(f"ddmr.datasets.{args.data}.")]
        build_testset_named(args.data, pairs, s, 2023, testset, bindings=own, overwrite=True,
                            log=lambda *a: None)
    out = work / f"scores_{s}"
    if out.exists():  # a rerun scores the current checkpoint afresh
        import shutil

        shutil.rmtree(out)
    baselines = ["identity"] + ([] if args.no_ants else ["ants_syn"])
    evaluate(testset, models=[f"network={best_checkpoint(run_dir)}"], baselines=baselines, out=out,
             metrics=["dsc", "epe", "folding", "runtime"], device=args.device, figures=False,
             progress=lambda line: None, unrefined=True)
    with open(out / "per_pair.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("dsc")]
    methods = {}
    for r in rows:
        methods.setdefault(r["method"], []).append(r)
    # the network alone: the unrefined row when the config refines at inference
    net = "network (no refinement)" if "network (no refinement)" in methods else "network"

    def mean(name, key):
        vals = [float(r[key]) for r in methods.get(name, []) if r.get(key) not in (None, "", "nan")]
        return sum(vals) / len(vals) if vals else float("nan")

    def median_runtime(name):
        vals = [float(r["runtime"]) for r in methods.get(name, []) if r.get("runtime")]
        return statistics.median(vals) if vals else float("nan")

    parts = []
    for name in [net] + baselines:
        parts.append(f"{name}: Dice {mean(name, 'dsc'):.3f}, EPE {mean(name, 'epe'):.2f} mm, "
                     f"folding {mean(name, 'folding'):.3f} %, runtime {median_runtime(name):.3f} s")
    ratio = ""
    if "ants_syn" in methods:
        ratio = f"; ants_syn/network runtime {median_runtime('ants_syn') / median_runtime(net):.1f}x"
    print(f"final ({len(methods.get(net, []))} test pairs at {s}^3): " + " | ".join(parts) + ratio, flush=True)


if __name__ == "__main__":
    sys.exit(main())
