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

The experiments are library code (:class:`ddmr_core.experiments.paper.Reproduction`); this
module turns arguments into one.

Defaults are the paper's (128^3, the paper-size U-Net) and need a GPU; ``--size 64
--light --steps 300`` runs on a CPU (see the README for times). The abdominal data is
the SYNTHETIC phantom (``abdomen_phantom``), not OSLO-COMET.
"""

from __future__ import annotations

from . import duration
from ..experiments.catalogue import EXPERIMENTS, design_files
from ..experiments.paper import Reproduction



def add_arguments(parser):
    designs = design_files()
    parser.add_argument("experiment", choices=sorted(EXPERIMENTS), help="which experiment")
    parser.add_argument("--out", default=Reproduction.out, metavar="DIR", help="root folder of all experiments")
    parser.add_argument("--size", type=int, default=Reproduction.size, metavar="S", help="grid S^3 (paper: 128)")
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
    parser.add_argument("--designs", nargs="+", default=list(designs), choices=list(designs),
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


def run(args) -> int:
    spec = Reproduction(args.experiment, out=args.out, size=args.size, steps=args.steps, max_time=args.max_time,
                        recipe=args.recipe, pairs=args.pairs, designs=args.designs, seeds=args.seeds,
                        light=args.light, hybrid=args.hybrid, train_only=args.train_only, device=args.device)
    summary = spec.run()
    if summary is None:
        print(f"trained (--train-only); run the command again without it to score the runs in "
              f"{spec.folder / 'report'}")
        return 0
    print(summary.read_text() if summary.exists() else "(no summary table was written)")
    return 0
