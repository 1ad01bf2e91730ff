"""``ddmr export``: a training checkpoint as a model to ship or share.

    ddmr export runs/brain/uw_nsd/best.pt --out brain-mr.pt [--card card.json]
    ddmr export runs/brain/uw_nsd/best.pt --out plugins/models/weights/brain-mr@2.pt --card card.json

Keeps what inference needs (weights, config, grid, labels, preprocessing) and the
validation history, drops the optimiser, scheduler and RNG states
(:func:`ddmr_core.model.checkpoint.export_model`), and stores an optional model card (a JSON
object: data, training command, budget, measured figures). A plugin ships models by
returning such files from its ``ddmr_models`` hook (``docs/plugin_hooks.md``).

An ``--out`` named ``<name>@<version>.pt`` is a release of a zoo folder
(:mod:`ddmr_core.model.zoo`): the card is then required and checked against the schema
(:mod:`ddmr_core.model.card`) first, and written beside the weights as
``<name>@<version>.json``, with the weights' sha256 in the folder's ``SHA256SUMS``.
"""

from __future__ import annotations

#: largest model card read (``--card``)
MAX_CARD_BYTES = 2 ** 20



def add_arguments(parser):
    parser.add_argument("checkpoint", help="a ddmr checkpoint (best.pt of a run) or a registered model name")
    parser.add_argument("--out", required=True, metavar="MODEL.pt", help="the model file to write")
    parser.add_argument("--card", metavar="JSON", help="a JSON file describing the model, stored with it")


def run(args) -> int:
    import json

    from ..model.checkpoint import export_model
    from ..errors import DataError
    from ..data.guards import check_not_input
    from ..data.files import check_output_file
    from ..model.card import validate_card
    from ..model.publish import add_release
    from ..model.zoo import SUMS, WEIGHT_FILE

    out = check_output_file(args.out, suffixes=(".pt",))  # before any work
    check_not_input(out, {"checkpoint": args.checkpoint, "card": args.card})
    card = None
    if args.card:
        try:
            with open(args.card, "rb") as fh:  # bounded: /dev/zero is a file name too
                raw = fh.read(MAX_CARD_BYTES + 1)
            if len(raw) > MAX_CARD_BYTES:
                raise DataError(f"--card {args.card!r} is larger than {MAX_CARD_BYTES // 2 ** 20} MiB; a model card "
                                "describes a model in a few kilobytes")
            card = json.loads(raw.decode("utf-8"))
        except RecursionError:  # json nests by recursion: a crafted card is deep
            raise DataError(f"--card {args.card!r} is nested too deeply to be a model card") from None
        except (OSError, ValueError) as exc:
            raise DataError(f"--card {args.card!r} is not a readable JSON file: {exc}") from exc
        if not isinstance(card, dict):
            raise DataError(f"--card {args.card!r} must hold a JSON object")
    release = WEIGHT_FILE.match(out.name)
    if release:  # a release of a zoo folder: its card must follow the schema, before any work
        if card is None:
            raise DataError(f"--out {args.out!r} names a release (<name>@<version>.pt): give its model card, --card JSON")
        validate_card(card, repr(args.card), name=release["name"], version=release["version"], folder=out.parent)
    path = export_model(args.checkpoint, out, card)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    if release:
        sha = add_release(path, card)
        print(f"wrote {path.with_suffix('.json').name} and its sha256 {sha[:12]}... in {path.parent / SUMS}")
    return 0
