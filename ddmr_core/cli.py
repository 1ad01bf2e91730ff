"""The ``ddmr`` command line.

Sub-commands live one per module in :mod:`ddmr_core.commands`; each module defines
``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``. User errors
(:class:`ddmr_core.errors.DdmrError`) print one line and exit non-zero; so do errors the
system reports (``OSError``: disk full, permission refused; ``MemoryError``), status 1;
``--debug`` shows the traceback. Ctrl-C and SIGTERM stop a command the same way (temporary outputs
removed): one line, exit status 130 and 143.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib
import os
import re
import signal
import sys
import threading
import traceback
import warnings

from . import __version__
from .config.trust import trusted_configs
from .errors import DdmrError
from .errors import DdmrWarning


def _selected(argv) -> str | None:
    """The command ``argv`` names: its first word that is not an option (``ddmr``'s own
    options, ``--debug`` and ``--version``, take no value)."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The ``ddmr`` parser. Every command is listed (:data:`ddmr_core.commands.COMMANDS`),
    but only the command that ``argv`` selects gets its module imported and its arguments
    added (``None``: every command's, for documentation and tests): ``ddmr --help`` and
    ``ddmr register`` do not pay for the imports of ``train`` or ``serve``."""
    from .commands import COMMANDS

    parser = argparse.ArgumentParser(
        prog="ddmr",
        description="Deep deformable medical image registration (DDMR re-implementation).",
    )
    parser.add_argument("--version", action="version", version=f"ddmr {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (they are drawn on stderr, only on a terminal)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = None if argv is None else _selected(argv)
    for name, module, text in COMMANDS:
        p = sub.add_parser(name, help=text, description=text)
        if argv is None or name == chosen:
            mod = importlib.import_module(f"{__package__}.commands.{module}")
            mod.add_arguments(p)
            p.set_defaults(_run=mod.run)
    return parser


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line: gin appends "In call to configurable ..." lines
    to errors raised while it builds a component; they are dropped, other lines joined."""
    lines = [line.strip() for line in str(exc).splitlines()]
    if lines and lines[0].startswith("Caught ") and "Original Traceback (most recent call last):" in lines:
        # a DataLoader worker's error, re-raised by torch with the worker's traceback as
        # its message: the original message is the last line, after "module.Class: "
        last = next((line for line in reversed(lines) if line), "")
        return re.sub(r"^[\w.]+(Error|Exception): ", "", last)
    return " ".join(line for line in lines if line and not line.startswith("In call to configurable"))


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so that the same clean-up runs
    (temporary outputs removed, nothing half-written left under a final name)."""


def _on_sigterm(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """Handle SIGTERM like Ctrl-C while a command runs (main thread only), then restore
    the previous handler (``main`` is also called in-process, by protocols and tests)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _warnings_as_lines():
    """Show each :class:`DdmrWarning` (every time, not once per place) as one line,
    ``ddmr: warning: ...``, on stderr; other warnings as Python shows them."""
    with warnings.catch_warnings():
        default = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, DdmrWarning):
                print(f"ddmr: warning: {one_line(message)}", file=sys.stderr)
            else:
                default(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        warnings.simplefilter("always", DdmrWarning)
        yield


@contextlib.contextmanager
def _progress_off(off: bool):
    """``--no-progress``: :data:`ddmr_core.progress.ENV` set to 0 while the command runs."""
    from .progress import ENV

    if not off:
        yield
        return
    before = os.environ.get(ENV)
    os.environ[ENV] = "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = before


#: environment set for a ``ddmr`` process before anything imports torch (a variable the
#: user set wins): PyTorch's CPU allocator backs its blocks of 2 MB and more with
#: transparent huge pages. A 1 mm registration allocates and frees volumes of ~100 MB
#: (each mapped anew, :func:`ddmr_core.data.guards.release_large_blocks`); touching one
#: in 4 kB pages cost ~45 ms on this project's machine, in 2 MB pages ~8 ms, and the whole
#: ``ddmr register --original-resolution`` process at 1 mm went from ~10 s to ~8.5 s
#: (``benchmarks/register_end_to_end.py``). Linux only; elsewhere PyTorch ignores it.
PROCESS_ENVIRONMENT = {"THP_MEM_ALLOC_ENABLE": "1"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "torch" not in sys.modules:  # read once, when torch's allocator starts
        for key, value in PROCESS_ENVIRONMENT.items():
            os.environ.setdefault(key, value)
    debug = "--debug" in argv
    try:
        with _sigterm_as_interrupt(), _warnings_as_lines():
            parser = build_parser(argv)
            args = parser.parse_args(argv)
            if not getattr(args, "_run", None):
                parser.print_help()
                return 0
            with trusted_configs(getattr(args, "trust_config", False)), _progress_off(args.no_progress):
                return int(args._run(args) or 0)
    except DdmrError as exc:
        if debug:
            traceback.print_exc()
        print(f"ddmr: error: {one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        # the system refused a file operation (disk full, permission, a name too long):
        # not a ddmr bug, so one line like a user error (temporary outputs are removed)
        if debug:
            traceback.print_exc()
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        why = exc.strerror or (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        print(f"ddmr: error: {why}{where}", file=sys.stderr)
        return 1
    except MemoryError:
        if debug:
            traceback.print_exc()
        print("ddmr: error: out of memory (use smaller images or grids)", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        # torch's allocators report running out of memory as RuntimeError (CPU) or its
        # subclass OutOfMemoryError (CUDA): the same one line; anything else is a bug
        text = str(exc)
        if type(exc).__name__ != "OutOfMemoryError" and "can't allocate memory" not in text:
            raise
        if debug:
            traceback.print_exc()
        print("ddmr: error: out of memory (use smaller images, grids or networks; the device ran out)",
              file=sys.stderr)
        return 1
    except Terminated:
        print("ddmr: terminated (SIGTERM)", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("ddmr: interrupted", file=sys.stderr)
        return 130


def run(*argv) -> None:
    """Run a ``ddmr`` command line in-process (for scripts such as the benchmarks); raise
    :class:`DdmrError` if it exits non-zero. The library itself never calls the CLI."""
    code = main([str(a) for a in argv])
    if code:
        raise DdmrError(f"`ddmr {' '.join(str(a) for a in argv)}` exited with status {code}")


def entry() -> None:
    """The ``ddmr`` console script: :func:`main`, then the process ends without Python's
    teardown of every module it imported (torch's alone took ~0.5 s on this project's
    2-core machine, longer than reading a 1 mm image pair). The exit handlers
    (:mod:`atexit`, which also runs :class:`weakref.finalize` callbacks such as temporary
    folders' removal) run and the standard streams are flushed first; every output file is
    closed by then. While a thread that a normal exit waits for (not a daemon) runs, or
    when flushing fails (a closed pipe), the process exits the normal way."""
    code = main()
    if all(t.daemon or t is threading.main_thread() for t in threading.enumerate()):
        try:
            atexit._run_exitfuncs()  # they run once: the call clears them
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:  # noqa: BLE001 - whatever it is, the normal exit reports it
            sys.exit(code)
        os._exit(code if 0 <= code <= 255 else 1)
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
