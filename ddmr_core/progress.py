"""Progress bars for the long steps (``prepare``, ``build-testset``, ``evaluate``, and so the
ANTs baselines, which ``evaluate`` runs): one tqdm bar on stderr with a rate and an ETA
instead of a line per file or pair.

A bar is drawn only on a terminal: with stderr redirected (a log file, a pipe, pytest's
capture) it is off, and so is it with ``DDMR_PROGRESS=0`` in the environment (what the
CLI's ``--no-progress`` sets). The callers print their one-line summaries either way.
"""

from __future__ import annotations

import os
import sys

#: environment variable: ``0`` (or ``off``, ``false``, ``no``) turns every bar off
ENV = "DDMR_PROGRESS"


def enabled(flag: bool | None = None) -> bool:
    """Whether to draw a bar: ``flag`` when given, else not when :data:`ENV` says off,
    else when stderr is a terminal."""
    if flag is not None:
        return bool(flag)
    if os.environ.get(ENV, "").strip().lower() in ("0", "off", "false", "no"):
        return False
    stream = sys.stderr
    return bool(stream is not None and hasattr(stream, "isatty") and stream.isatty())


def bar(total: int, desc: str, unit: str, enable: bool | None = None, initial: int = 0):
    """A tqdm bar over ``total`` items of ``unit`` (``enable``: see :func:`enabled`); a
    disabled bar accepts the same calls and draws nothing."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr,
                disable=not enabled(enable), dynamic_ncols=True, leave=True, mininterval=0.5,
                smoothing=0.1)


def write(line: str, progress_bar=None) -> None:
    """Print ``line`` to stdout without breaking the bar drawn on the terminal."""
    if progress_bar is not None and not progress_bar.disable:
        progress_bar.clear()
        print(line, flush=True)
        progress_bar.refresh()
    else:
        print(line, flush=True)
