"""``ddmr models``: the trained models ddmr and its plugins ship, and their cards.

    ddmr models [--json | --markdown]     # name, version, task, modalities, size, licence
    ddmr models show NAME[@VERSION] [--json]  # the model card, with the notices it names
    ddmr models hash FOLDER/NAME@VERSION.pt   # (maintainers) record a weight file's sha256

Every release of every registered model is listed (:mod:`ddmr_core.model.zoo`); a third-party
model whose plugin returns only a checkpoint path is listed with "unknown" fields and no
recorded sha256. ``--markdown`` prints the block that ``docs/models.md`` holds (the tests
check it against the shipped cards).
"""

from __future__ import annotations

import json



def add_arguments(parser):
    parser.add_argument("action", nargs="?", choices=("list", "show", "hash"), default="list",
                        help="list (default), show NAME[@VERSION], or hash WEIGHTS.pt (record its sha256)")
    parser.add_argument("target", nargs="*", metavar="NAME|FILE", help="the model to show, or the weight files to hash")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="machine-readable output")
    out.add_argument("--markdown", action="store_true",
                     help="(list) the generated block of docs/models.md, for the models with a valid card")


def _all_releases(registry):
    from ..model.zoo import entry_releases

    return [r for e in registry.entries("models") for r in entry_releases(e)]


def _card(release):
    from ..model.zoo import embedded_card

    return release.card if release.card is not None else embedded_card(release)


def _notices(release) -> dict:
    return {p.name: p.read_text() for p in release.notices if p.is_file()}


def run(args) -> int:
    from ..errors import DdmrError
    from ..plugins.registry import Registry

    if args.action == "hash":
        from ..model.publish import record_sha256

        if not args.target:
            raise DdmrError("ddmr models hash needs the weight file(s): FOLDER/<name>@<version>.pt")
        for path in args.target:
            print(f"{record_sha256(path)}  {path}")
        return 0
    registry = Registry(bind_gin=False)
    if args.action == "show":
        return _show(args, registry)
    if args.target:
        raise DdmrError(f"ddmr models list takes no argument (got {' '.join(args.target)}); "
                        "did you mean `ddmr models show NAME`?")
    return _list(args, registry)


def _list(args, registry) -> int:
    from ..model.card import CardError, markdown_block, summary_row, validate_card

    releases = _all_releases(registry)
    if args.markdown:
        items = []
        for r in releases:
            try:
                validate_card(r.card, r.ref, name=r.name, version=r.version)
            except CardError:
                continue
            items.append((r, r.card, _notices(r)))
        print(markdown_block(items), end="")
        return 0
    rows = [summary_row(r, _card(r)) for r in releases]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no models registered")
        return 0
    cols = [("NAME", lambda r: r["name"]), ("VERSION", lambda r: r["version"]),
            ("MODALITIES", lambda r: ",".join(r["modalities"]) or "unknown"),
            ("CONTRASTS", lambda r: ",".join(r["contrasts"]) or "unknown"),
            ("SIZE", lambda r: "unknown" if r["size_mb"] is None else f"{r['size_mb']:.2f} MB"),
            ("SHA256", lambda r: (r["sha256"] or "unverified")[:12]),
            ("LICENCE", lambda r: r["licence"].split(";")[0].split("(")[0].strip()),
            ("TASK", lambda r: r["task"])]
    table = [[name for name, _ in cols]] + [[f(r) for _, f in cols] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(cols) - 1)]
    for line in table:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths)) + "  " + line[-1])
    return 0


def _show(args, registry) -> int:
    from ..errors import DdmrError
    from ..model.card import render_text, validate_card
    from ..model.zoo import lookup

    if len(args.target) != 1:
        raise DdmrError("ddmr models show needs one model: NAME or NAME@VERSION")
    release = lookup(args.target[0], registry)
    if release is None:
        raise DdmrError(f"{args.target[0]!r} is a file, not a model name; `ddmr models` lists the models")
    if release.card is None and release.card_file is not None:
        raise DdmrError(f"model {release.ref}: {release.card_error}")
    card = _card(release)
    if release.card is not None:  # a card file is held to the schema; an embedded one is shown as it is
        validate_card(card, repr(str(release.card_file)), name=release.name, version=release.version,
                      folder=release.card_file.parent)
    if args.json:
        print(json.dumps({"model": release.describe(), "card": card, "notices": _notices(release)}, indent=2,
                         ensure_ascii=False))
        return 0
    print(render_text(release, card, _notices(release)), end="")
    return 0
