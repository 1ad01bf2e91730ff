"""``ddmr build-testset``: write fixed evaluation pairs once, so every method sees the same.

    ddmr build-testset --dataset abdomen_phantom --pairs 11 --size 128 --seed 0 --out testsets/abdomen

Pair ``k`` takes subject ``k mod n`` of the split (``test`` by default), resized to
``S^3`` if its grid differs, and runs it through the augmentation pipeline (built from
``--augment``, default the shipped ``mixins/augment/paper.gin``, with ``seed = K`` and
sample index ``k``): the augmented fixed image, the generated moving image, both label
maps and the ground-truth pull field are written with the fixed image's affine (see
:mod:`ddmr_core.data.testset` for the layout), by
:func:`ddmr_core.data.build_testset.build_testset_named`.
"""

from __future__ import annotations

from . import add_trust_config_argument
from ..data.build_testset import DEFAULT_AUGMENT, build_testset_named



def add_arguments(parser):
    parser.add_argument("--dataset", required=True, metavar="NAME", help="dataset plugin name")
    parser.add_argument("--pairs", required=True, type=int, metavar="N", help="number of pairs")
    parser.add_argument("--size", required=True, type=int, metavar="S", help="grid S^3 of the pairs")
    parser.add_argument("--seed", required=True, type=int, metavar="K", help="augmentation seed")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--split", default="test", choices=["train", "validation", "test"],
                        help="split the fixed images come from (default: test)")
    parser.add_argument("--augment", default=DEFAULT_AUGMENT, metavar="FILE",
                        help=f"gin file of the augmentation pipeline (default: {DEFAULT_AUGMENT})")
    parser.add_argument("--config", action="append", default=[], metavar="FILE", help="extra gin file (repeatable)")
    parser.add_argument("--gin", action="append", default=[], metavar="BINDING", help="gin binding (repeatable)")
    add_trust_config_argument(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing test set in DIR")
    parser.add_argument("--original-grid", action="store_true",
                        help="also write each pair on the subject's isotropic 1 mm grid (manifest columns "
                             "*_original, for `ddmr evaluate --original-resolution`)")


def run(args) -> int:
    from ..data.locks import output_lock

    # held before the --overwrite check: a second run at once stops instead of passing it too
    with output_lock(args.out, "build-testset"):
        build_testset_named(args.dataset, args.pairs, args.size, args.seed, args.out, args.split, args.augment,
                            args.config, args.gin, overwrite=args.overwrite, original_grid=args.original_grid)
    return 0
