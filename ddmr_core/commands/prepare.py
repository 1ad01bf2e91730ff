"""``ddmr prepare``: preprocess a dataset once and cache the samples on disk.

    ddmr prepare --dataset abdomen_phantom --out cache/abdomen [--gin BINDING]... [--config FILE]...

The dataset is built from the registry with the shipped data mix-in
``mixins/data/<NAME>.gin`` (when there is one), then ``--config`` files, then ``--gin``
bindings; ``SIZE`` defaults to ``--size`` (128). The samples are cached by
:func:`ddmr_core.data.prepare.prepare_named` (resumable, entries written atomically,
``OUT/index.json`` last); the ``prepared`` dataset plugin reads the cache::

    ddmr.build_dataset.dataset = @ddmr.datasets.prepared()
    ddmr.datasets.prepared.path = 'cache/abdomen'
"""

from __future__ import annotations

from . import add_trust_config_argument
from ..data.prepare import SPLITS, prepare_named



def add_arguments(parser):
    parser.add_argument("--dataset", required=True, metavar="NAME", help="dataset plugin name (see `ddmr plugins`)")
    parser.add_argument("--out", required=True, metavar="DIR", help="cache folder")
    parser.add_argument("--config", action="append", default=[], metavar="FILE",
                        help="extra gin file (repeatable)")
    parser.add_argument("--gin", action="append", default=[], metavar="BINDING",
                        help="gin binding, e.g. \"ddmr.datasets.abdomen_phantom.patients = 10\" (repeatable)")
    parser.add_argument("--size", type=int, default=None, metavar="S",
                        help="network grid S^3 (binds SIZE; default 128 unless a config sets SIZE)")
    add_trust_config_argument(parser)
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS, help="splits to cache")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="worker processes (default: CPU count, at most 4)")


def run(args) -> int:
    from ..data.locks import output_lock

    with output_lock(args.out, "prepare"):
        prepare_named(args.dataset, args.out, args.size, args.config, args.gin, args.splits, args.workers)
    return 0
