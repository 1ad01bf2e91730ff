"""``ddmr reproduce EXPERIMENT``: the paper's experiments as resumable protocols.

    ddmr reproduce brain             --out paper_runs   # (i)   Table 2: six designs on brain MR
    ddmr reproduce abdomen           --out paper_runs   # (i)   Table 3: six designs on abdominal CT
    ddmr reproduce finetune_full     --out paper_runs   # (ii)  Table 4: brain -> abdomen, whole model
    ddmr reproduce finetune_two_step --out paper_runs   # (ii)  Table 5: decoder first, then all,
                                                        #       beside ANTs SyN and SyNCC
    ddmr reproduce baselines         --out paper_runs   # (iii) Table 5's ANTs rows alone
    ddmr reproduce brain --seeds 0 1 --out paper_runs   # every design twice, rows side by side
    ddmr reproduce finetune_two_step --designs BL-N --train-only --out paper_runs
                                                        # train one design now, score all later
    python benchmarks/augmentation_overhead.py          # (iv)  training-runtime cost of augmentation

All experiments share ``OUT/data/<dataset>`` (prepared caches) and
``OUT/testsets/<dataset>`` (fixed test pairs: every method is scored on the same pairs),
and write ``OUT/<experiment>/report/summary.md`` in the paper's table format. The
finetuning experiments start from the brain runs in ``OUT/brain/runs``.

Defaults are the paper's (128^3, the paper-size U-Net) and need a GPU; ``--size 64
--light --steps 300`` runs on a CPU (see the README for times). The abdominal data is
the SYNTHETIC phantom (``abdomen_phantom``), not OSLO-COMET.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DdmrError
from . import duration
from ..experiments.protocol import (DESIGN_FILES, data_bindings, evaluate_step, prepare_step, run_protocol,
                        testset_step, train_step)

NAME = "reproduce"
HELP = "run one of the paper's experiments (six designs, finetuning, ANTs baselines) and write its table"
ORDER = 60

EXPERIMENTS = {
    # name: (dataset, config folder, baselines)
    "brain": ("mni_brain", "brain", ()),
    "abdomen": ("abdomen_phantom", "abdomen", ()),
    "finetune_full": ("abdomen_phantom", "finetune_full", ()),
    # Table 5: the networks and ANTs on the same pairs, runtimes measured in the same run
    "finetune_two_step": ("abdomen_phantom", "finetune_two_step", ("ants_syn", "ants_syncc")),
    "baselines": ("abdomen_phantom", None, ("ants_syn", "ants_syncc", "identity")),
}


def add_arguments(parser):
    parser.add_argument("experiment", choices=sorted(EXPERIMENTS), help="which experiment")
    parser.add_argument("--out", default="paper_runs", metavar="DIR", help="root folder of all experiments")
    parser.add_argument("--size", type=int, default=128, metavar="S", help="grid S^3 (paper: 128)")
    parser.add_argument("--steps", type=int, default=None, metavar="N",
                        help="optimiser steps per model (default: until early stopping)")
    parser.add_argument("--max-time", type=duration, default=None, metavar="DURATION",
                        help="training time per model, e.g. 20m (counted over the whole run: a rerun continues)")
    parser.add_argument("--recipe", action="store_true",
                        help="ddmr's training recipe (mixins/recipe/learnt.gin: affine start, coarse "
                             "diffeomorphic field, supervision by the ground-truth field, warm-up); not the "
                             "paper's")
    parser.add_argument("--pairs", type=int, default=None, metavar="N",
                        help="test pairs (default: the test split size, 11 for abdomen as OSLO-COMET)")
    parser.add_argument("--designs", nargs="+", default=list(DESIGN_FILES), choices=list(DESIGN_FILES),
                        metavar="DESIGN", help="subset of the six designs")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], metavar="SEED",
                        help="training seeds (weights, sample order, augmentation): one run per design and "
                             "seed, scored side by side (default: 0; seed 0 runs in runs/DESIGN, seed k in "
                             "runs/DESIGN-seedk)")
    parser.add_argument("--light", action="store_true", help="the light CPU U-Net instead of the paper's")
    parser.add_argument("--hybrid", action="store_true",
                        help="ddmr's hybrid model (mixins/model/hybrid.gin: affine initialisation, diffeomorphic "
                             "field, instance optimisation at inference); the report also scores the models "
                             "without refinement. Not the paper's method")
    parser.add_argument("--train-only", action="store_true",
                        help="train the runs and stop before the test set and the evaluation: train design "
                             "by design, then score them all in one evaluation (so the runtimes compare) by "
                             "running the command again without it")
    parser.add_argument("--device", default=None, help="device: cpu, cuda, cuda:N or mps (default: cuda if available)")


def build_steps(args) -> list:
    for option, value, low in (("--size", args.size, 2), ("--steps", args.steps, 1), ("--pairs", args.pairs, 1)):
        if value is not None and value < low:  # before any work
            raise DdmrError(f"{option} must be at least {low}, got {value}")
    if any(int(seed) < 0 for seed in getattr(args, "seeds", None) or [0]):
        raise DdmrError(f"--seeds must be non-negative integers, got {' '.join(map(str, args.seeds))}")
    dataset, folder, baselines = EXPERIMENTS[args.experiment]
    train_only = getattr(args, "train_only", False)
    if folder is None and train_only:
        raise DdmrError(f"--train-only: the {args.experiment} experiment trains nothing")
    root = Path(args.out)
    exp_dir = root / args.experiment
    size = int(args.size)
    cache = root / "data" / f"{dataset}_{size}"
    testset = root / "testsets" / f"{dataset}_{size}"
    pairs = args.pairs or (8 if dataset == "mni_brain" else 11)
    steps = [prepare_step(dataset, size, cache)]
    runs = {}
    if folder is not None:
        bindings = data_bindings(cache, size, args.light)
        if getattr(args, "recipe", False):
            bindings.append("include 'mixins/recipe/learnt.gin'")
        if getattr(args, "hybrid", False):
            bindings.append("include 'mixins/model/hybrid.gin'")
        max_steps = args.steps
        seeds = list(dict.fromkeys(getattr(args, "seeds", None) or [0]))
        for design in args.designs:
            f = DESIGN_FILES[design]
            for seed in seeds:
                name, folder_name = (design, design) if seed == 0 else (f"{design} (seed {seed})",
                                                                        f"{design}-seed{seed}")
                extra = list(bindings) + ([f"ddmr.Trainer.seed = {int(seed)}"] if seed != 0 else [])
                if folder.startswith("finetune"):
                    # each seed finetunes the brain model of the same seed
                    source = root / "brain" / "runs" / folder_name
                    ckpt = source / "best.pt"
                    extra.append(f"ddmr.finetune.checkpoint = '{ckpt.as_posix()}'")
                    if not source.exists():
                        raise DdmrError(f"{args.experiment}: needs the brain run of {name} in {source}; "
                                        f"run `ddmr reproduce brain --out {root}"
                                        f"{' --seeds ' + str(seed) if seed else ''}` first")
                runs[name] = exp_dir / "runs" / folder_name
                steps.append(train_step(name, f"experiments/{folder}/{f}.gin", runs[name], max_steps,
                                        extra, args.device, max_time=getattr(args, "max_time", None)))
    if train_only:
        # the markers of the train steps stay: a later run without the flag skips them
        return steps
    steps.append(testset_step(dataset, pairs, size, 2023, testset))
    steps.append(evaluate_step(testset, runs, baselines, exp_dir / "report", args.device,
                               unrefined=bool(runs) and getattr(args, "hybrid", False)))
    return steps


def run(args) -> int:
    out = Path(args.out) / args.experiment
    run_protocol(out, build_steps(args), title=args.experiment)
    if getattr(args, "train_only", False):
        print(f"trained (--train-only); run the command again without it to score the runs in {out / 'report'}")
        return 0
    summary = out / "report" / "summary.md"
    print(summary.read_text() if summary.exists() else "(no summary table was written)")
    return 0
