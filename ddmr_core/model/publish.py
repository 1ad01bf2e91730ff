"""Adding a release to a zoo folder (what ``ddmr export --out NAME@VERSION.pt`` and ``ddmr
models hash`` do): the card beside the weights and the weights' line in ``SHA256SUMS``
(the layout: :mod:`ddmr_core.model.zoo`).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import DataError, PluginError
from .zoo import SUMS, WEIGHT_FILE, file_sha256, read_sums


def write_sums(path: Path, sums: dict[str, str]) -> Path:
    """Write ``{file name: sha256}`` as a ``SHA256SUMS`` file (sorted, atomically)."""
    from ..data.files import write_text_atomic

    return write_text_atomic(path, "".join(f"{sums[k]}  {k}\n" for k in sorted(sums)))



def record_sha256(weight_file: str | Path) -> str:
    """Compute ``weight_file``'s sha256 and write (or replace) its line in the
    ``SHA256SUMS`` of its folder; returns the digest. For maintainers adding a release by
    hand: it trusts the file as it is now."""
    weight_file = Path(weight_file)
    if not WEIGHT_FILE.match(weight_file.name):
        raise DataError(f"{str(weight_file)!r}: a zoo weight file is named <name>@<version>.pt (e.g. brain-mr@2.pt)")
    if not weight_file.is_file():
        raise DataError(f"weight file {str(weight_file)!r} not found")
    sums_file = weight_file.parent / SUMS
    try:
        sums = read_sums(sums_file)
    except PluginError as exc:
        raise DataError(str(exc)) from exc
    sums[weight_file.name] = file_sha256(weight_file)
    write_sums(sums_file, sums)
    return sums[weight_file.name]


def add_release(weight_file: str | Path, card: dict) -> str:
    """Make ``weight_file`` (``FOLDER/<name>@<version>.pt``, already written) a release of
    its zoo folder: check ``card`` against the schema and the file name
    (:func:`ddmr_core.model.card.validate_card`), write it as ``<name>@<version>.json``
    and record the weights' sha256 in ``SHA256SUMS``. Returns the digest."""
    from ..data.files import write_text_atomic
    from .card import validate_card

    weight_file = Path(weight_file)
    m = WEIGHT_FILE.match(weight_file.name)
    if not m:
        raise DataError(f"{str(weight_file)!r}: a zoo weight file is named <name>@<version>.pt (e.g. brain-mr@2.pt)")
    validate_card(card, f"for {weight_file.name}", name=m["name"], version=m["version"], folder=weight_file.parent)
    write_text_atomic(weight_file.with_suffix(".json"), json.dumps(card, indent=2, ensure_ascii=False) + "\n")
    return record_sha256(weight_file)


