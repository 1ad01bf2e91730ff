"""One module per ``ddmr`` sub-command (see :mod:`ddmr_core.cli`), and the arguments
they share."""

from __future__ import annotations

import argparse
import re

_DURATION = re.compile(r"^(?:(\d+(?:\.\d*)?)h)?(?:(\d+(?:\.\d*)?)m)?(?:(\d+(?:\.\d*)?)s?)?$")


def duration(text: str) -> float:
    """Seconds of a wall-clock budget: ``"45m"``, ``"1h30m"``, ``"90s"`` or ``"2700"``
    (plain numbers are seconds). An ``argparse`` type: anything else is a usage error."""
    m = _DURATION.match(str(text).strip().lower())
    if not m or not any(m.groups()):
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: use e.g. 45m, 1h30m, 90s or 2700 (seconds)")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in m.groups())
    total = 3600 * hours + 60 * minutes + seconds
    if total <= 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: it must be positive")
    return total


def add_field_argument(parser) -> None:
    """``--field F``: a saved displacement field (:func:`ddmr_core.data.field_io.load_field`)."""
    parser.add_argument("--field", required=True, metavar="F",
                        help="displacement field: ITK/ANTs NIfTI (field.nii.gz) or ddmr's field.npz")


def add_trust_config_argument(parser) -> None:
    """``--trust-config``: let this command's configs import any module and include any
    file (:mod:`ddmr_core.config.trust`; by default configs are data)."""
    parser.add_argument("--trust-config", action="store_true",
                        help="let the gin configs and bindings import any Python module and include any file "
                             "(by default they may import only ddmr's modules and plugins, and include only "
                             ".gin files among the shipped configs and in the given config's folder tree)")
