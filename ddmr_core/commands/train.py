"""``ddmr train CONFIG.gin --out RUN_DIR``: train (or resume, or finetune) one model.

Everything about the run comes from the gin config (``ddmr.Trainer.*``, the model,
data and augmentation builders); the command line only says where the run lives, how
far to go and on which device. Under ``torchrun --nproc_per_node N`` the same command
trains with DistributedDataParallel.
"""

from __future__ import annotations

from . import add_trust_config_argument, duration



def add_arguments(parser):
    parser.add_argument("config", help="experiment gin file (a path or a shipped config, e.g. "
                        "experiments/brain/uw_nsd.gin)")
    parser.add_argument("--gin", action="append", default=[], metavar="BINDING",
                        help="extra gin binding, e.g. --gin 'ddmr.Trainer.max_epochs = 5' (repeatable)")
    parser.add_argument("--out", required=True, metavar="RUN_DIR",
                        help="run folder: config.gin, last.pt, best.pt, TensorBoard logs/")
    parser.add_argument("--max-steps", type=int, default=None, metavar="N",
                        help="stop after N optimiser steps (a resumable checkpoint is kept)")
    parser.add_argument("--max-time", type=duration, default=None, metavar="DURATION",
                        help="stop at the first optimiser step after this much training time, counted over "
                             "the whole run across resumes, e.g. 45m, 1h30m, 900s (a resumable checkpoint is kept)")
    parser.add_argument("--device", default=None,
                        help="training device: cpu, cuda, cuda:N or mps (default: cuda when available)")
    add_trust_config_argument(parser)
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in RUN_DIR from its last.pt")
    parser.add_argument("--no-memory-check", action="store_true",
                        help="train even when the estimated memory of a step exceeds what is available")


def run(args) -> int:
    import contextlib

    from ..training import distributed
    from ..data.locks import output_lock
    from ..training.trainer import train

    # one run per folder; under torchrun only rank 0 holds the lock (it alone writes)
    lock = output_lock(args.out, "train") if distributed.ranks()[1] == 0 else contextlib.nullcontext()
    with lock:
        trainer = train(args.config, args.gin, run_dir=args.out, max_steps=args.max_steps,
                        max_time=args.max_time, device=args.device, resume=args.resume,
                        memory_check=not args.no_memory_check)
    c = trainer.counters
    if trainer.is_main:
        best = c["best_val"]
        print(f"ddmr train: {c['epoch']} epochs, {c['optimizer_steps']} optimiser steps"
              f"{', ' + str(c['nonfinite_total']) + ' skipped (non-finite)' if c['nonfinite_total'] else ''}; "
              f"best validation loss {best:.6g}; run in {args.out}")
    return 0
