"""``ddmr evaluate``: score trained models and baselines on a fixed test set."""

from __future__ import annotations

from . import add_trust_config_argument



def add_arguments(parser):
    parser.add_argument("--testset", required=True, metavar="DIR",
                        help="test set folder written by `ddmr build-testset` (manifest.csv, testset.json)")
    parser.add_argument("--model", action="append", default=[], metavar="CKPT",
                        help="checkpoint, or registered model name (`ddmr plugins --kind models`), to "
                             "evaluate, optionally NAME=CKPT to name its rows; repeatable")
    parser.add_argument("--baseline", action="append", default=[], metavar="NAME",
                        help="baseline plugin to evaluate (identity, ants_syn, ants_syncc, ...); repeatable")
    parser.add_argument("--out", required=True, metavar="OUT", help="output folder")
    parser.add_argument("--original-resolution", action="store_true",
                        help="resample each field back to the fixed image's original grid before scoring "
                             "(when the test set records it)")
    parser.add_argument("--metric", action="append", default=None, metavar="NAME",
                        help="metric to compute (default: every registered metric); repeatable")
    parser.add_argument("--config", action="append", default=[], metavar="FILE",
                        help="gin file configuring baselines and metrics (repeatable)")
    parser.add_argument("--gin", action="append", default=[], metavar="BINDING",
                        help="gin binding, e.g. 'ddmr.baselines.ants_syn.reg_iterations = (100, 70, 50, 20)' (repeatable)")
    add_trust_config_argument(parser)
    parser.add_argument("--device", default=None,
                        help="torch device for the models: cpu, cuda, cuda:N or mps (default: cuda if available)")
    parser.add_argument("--unrefined", action="store_true",
                        help="also score each model with its instance optimisation (refine_iterations) "
                             "off, as 'NAME (no refinement)'")
    parser.add_argument("--no-figures", action="store_true", help="skip box plots and median-pair figures")


def run(args) -> int:
    from ..evaluation.evaluate import evaluate
    from ..data.locks import output_lock

    with output_lock(args.out, "evaluate"):
        return _run(args, evaluate)


def _run(args, evaluate) -> int:
    result = evaluate(
        args.testset,
        models=args.model,
        baselines=args.baseline,
        out=args.out,
        original_resolution=args.original_resolution,
        metrics=args.metric,
        device=args.device,
        figures=not args.no_figures,
        gin_files=args.config,
        gin_bindings=args.gin,
        unrefined=args.unrefined,
    )
    # files are complete either way; a non-zero status tells scripts that some runs failed
    return 1 if result.failures else 0
