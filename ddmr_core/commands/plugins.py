"""``ddmr plugins``: list every registered component, its kind and its distribution.

Models (``--kind models``) are the trained models ``ddmr register --model NAME`` accepts;
their ``gin`` entry in ``--json`` is ``null`` (a model is a file, not a gin configurable)."""

from __future__ import annotations

import json

from ..plugins.hookspecs import KINDS
from ..plugins.registry import Registry



def add_arguments(parser):
    parser.add_argument("--kind", choices=KINDS, help="only this kind")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args) -> int:
    registry = Registry(bind_gin=False)
    rows = [
        {
            "kind": e.kind,
            "name": e.name,
            "gin": e.gin_name,
            "plugin": e.plugin,
            "distribution": e.distribution,
        }
        for e in registry.entries(args.kind)
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no {args.kind} registered" if args.kind else "no plugins registered")
        return 0
    widths = [max(len(r[k]) for r in rows + [dict(kind="KIND", name="NAME", distribution="DISTRIBUTION", plugin="PLUGIN")]) for k in ("kind", "name", "distribution")]
    print(f"{'KIND':<{widths[0]}}  {'NAME':<{widths[1]}}  {'DISTRIBUTION':<{widths[2]}}  PLUGIN")
    for r in rows:
        print(f"{r['kind']:<{widths[0]}}  {r['name']:<{widths[1]}}  {r['distribution']:<{widths[2]}}  {r['plugin']}")
    return 0
