"""The plugin contract as ``docs/plugin_hooks.md`` shows it, generated from
:mod:`ddmr_core.plugins.hookspecs` (the one source): a section per hook, its docstring in
Markdown, between :data:`BEGIN` and :data:`END`. ``python -m ddmr_core.plugins.contract``
rewrites the block; a test checks that the file holds what this module generates."""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

from . import hookspecs

BEGIN = ("<!-- BEGIN GENERATED from ddmr_core/plugins/hookspecs.py by `python -m ddmr_core.plugins.contract`: "
         "do not edit by hand -->")
END = "<!-- END GENERATED -->"

_ROLE = re.compile(r":(?:func|class|mod|data|meth|attr):`~?([^`]+)`")


def to_markdown(doc: str) -> str:
    """reStructuredText of a docstring -> Markdown: ``x`` -> `x`, :func:`a.b` -> `a.b`."""
    return _ROLE.sub(r"`\1`", doc).replace("``", "`")


def markdown_block() -> str:
    """One ``## ddmr_<kind>`` section per hook, in :data:`~ddmr_core.plugins.hookspecs.KINDS`
    order, with the loss inputs (:data:`~ddmr_core.plugins.hookspecs.LOSS_INPUTS`)."""
    parts = [BEGIN]
    for kind in hookspecs.KINDS:
        hook = f"ddmr_{kind}"
        doc = inspect.getdoc(getattr(hookspecs, hook))
        doc = doc.replace(":data:`LOSS_INPUTS`", ", ".join(f"`{i}`" for i in hookspecs.LOSS_INPUTS))
        parts.append(f"## {hook}\n{to_markdown(doc)}")
    parts.append(END)
    return "\n\n".join(parts) + "\n"


def replace_block(text: str, block: str) -> str:
    """``text`` with its generated block (markers included) replaced by ``block``."""
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[:start] + block.rstrip("\n") + text[end:]


def main(argv=None) -> int:
    path = Path(argv[0] if argv else "docs/plugin_hooks.md")
    path.write_text(replace_block(path.read_text(), markdown_block()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
