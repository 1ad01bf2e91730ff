"""Configs are data: what a gin file or binding may do before gin acts on it.

Experiment configs are shared like checkpoints are, and gin can do more than bind
values: ``import`` runs a module (``import this`` prints; a package's ``__init__`` can do
anything), ``from __gin__ import dynamic_registration`` makes any function of an
imported module callable from the config (``os.system``), and ``include`` reads any file
and copies what parses of it into the run's ``config.gin`` and checkpoints.

So every config file and binding given to :func:`ddmr_core.config.parsing.parse_config` is read
statement by statement with gin's own parser (nothing acted on) and, unless the configs
are trusted (``--trust-config``, :func:`trusted_configs`), refused with one line naming
the file and line when it

* imports a module outside ddmr's own packages and the installed ddmr plugin
  distributions (:func:`allowed_import_roots`), or uses ``from __gin__ import ...``;
* includes a file that, resolved as gin resolves it and after symlinks, is not a
  ``.gin`` file inside the shipped config root, the folder tree of a config file given
  on the command line, or the folder tree of the including file (for bindings typed on
  the command line: also the current folder's tree).

Whether trusted or not, an include cycle (a file including itself, directly or not) is
one line instead of gin's unbounded recursion. Messages name files and lines, never the
content of a file.
"""

from __future__ import annotations

import contextlib
import os
import tokenize
from importlib import metadata
from pathlib import Path
from typing import Iterator, Sequence

from gin import config_parser

from ..errors import ConfigError

#: ddmr's own top-level packages (the library, the built-in plugins, the shipped configs)
OWN_PACKAGES = ("ddmr_core", "ddmr_plugins", "ddmr_configs")
#: deepest include nesting followed (the shipped configs need 3)
MAX_INCLUDE_DEPTH = 32
TRUST_HINT = "pass --trust-config to allow it if you trust this config"

_TRUSTED = False


@contextlib.contextmanager
def trusted_configs(trusted: bool = True) -> Iterator[None]:
    """Within the block, :func:`ddmr_core.config.parsing.parse_config` lets configs import and
    include anything (what ``--trust-config`` does); restored on exit."""
    global _TRUSTED
    before, _TRUSTED = _TRUSTED, bool(trusted)
    try:
        yield
    finally:
        _TRUSTED = before


def configs_trusted() -> bool:
    return _TRUSTED


def allowed_import_roots() -> set[str]:
    """Top-level packages a config may import: ddmr's own and those of every installed
    distribution announcing a plugin in the ``ddmr`` entry-point group."""
    from ..plugins.manager import ENTRY_POINT_GROUP

    roots = set(OWN_PACKAGES)
    try:
        eps = metadata.entry_points(group=ENTRY_POINT_GROUP)
    except Exception:  # broken metadata: ddmr's own packages only
        eps = ()
    for ep in eps:
        module = ep.value.split(":", 1)[0].strip()
        if module:
            roots.add(module.split(".", 1)[0])
    return roots


def _search_prefixes() -> list[str]:
    """Where gin looks for a relative include, in its order (the current folder first,
    then the search paths :func:`ddmr_core.config.parsing.parse_config` added)."""
    import gin.config

    return list(getattr(gin.config, "_LOCATION_PREFIXES", [""]))


def resolve_include(name: str) -> Path | None:
    """The file gin's default reader opens for ``include 'name'`` (None: none found)."""
    prefixes = [""] if os.path.isabs(name) else _search_prefixes()
    for prefix in prefixes:
        candidate = os.path.join(prefix, name)
        if os.path.isfile(candidate):
            return Path(candidate)
    return None


def _within(path: Path, roots: Sequence[Path]) -> bool:
    return any(path == r or r in path.parents for r in roots)


def _where(source: str, line: int | None) -> str:
    return f"{source} line {line}" if line else source


def _statements(text: str, source: str) -> list:
    from .parsing import config_statements

    try:
        return config_statements(text)
    except RecursionError:  # gin's parser recurses into nested brackets
        raise ConfigError(f"{source}: invalid gin config: a value nested too deeply") from None
    except (SyntaxError, ValueError, tokenize.TokenError) as exc:
        line = getattr(exc, "lineno", None)
        if isinstance(exc, tokenize.TokenError):
            line = exc.args[1][0] if len(exc.args) > 1 and exc.args[1] else None
            why = "an unclosed bracket or quote"
        else:
            why = safe_syntax_message(exc)
        raise ConfigError(f"{_where(source, line)}: invalid gin config: {why}") from None


def safe_syntax_message(exc: BaseException) -> str:
    """gin's reason for a syntax error without the tokens it quotes ("Got NAME = x"),
    which are the content of the file."""
    msg = getattr(exc, "msg", None) or (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    for cut in ("  Got ", " Got "):
        msg = msg.split(cut, 1)[0]
    return msg.strip() or "malformed statement"


def vet_configs(paths: Sequence[Path], texts: Sequence[tuple[str, str]] = (), trusted: bool | None = None) -> None:
    """Check config files ``paths`` (resolved) and config texts ``texts`` (``(source,
    text)``: bindings typed on the command line, a config text) before gin parses them,
    following their includes (see the module docstring).

    Raises:
        ConfigError: one line naming the file (or bindings) and line of a refused
            ``import`` or ``include``, an include cycle, a missing or unreadable included
            file, or a syntax error (never quoting the file's content).
    """
    from .parsing import config_root

    trusted = configs_trusted() if trusted is None else trusted
    roots = [config_root().resolve()] + [Path(os.path.realpath(p)).parent for p in paths]
    imports = None if trusted else allowed_import_roots()

    def check(text: str, source: str, folder: Path | None, chain: tuple, depth: int) -> None:
        for st in _statements(text, source):
            line = getattr(getattr(st, "location", None), "line_num", None)
            if isinstance(st, config_parser.ImportStatement) and imports is not None:
                top = st.module.split(".", 1)[0]
                if top == "__gin__":
                    raise ConfigError(f"{_where(source, line)}: `from __gin__ import ...` is refused: it lets a "
                                      f"config call any function of a module; {TRUST_HINT}")
                if top not in imports:
                    raise ConfigError(
                        f"{_where(source, line)}: `import {st.module}` is refused: a config may import only "
                        f"ddmr's modules and installed ddmr plugins ({', '.join(sorted(imports))}); nothing was "
                        f"imported; {TRUST_HINT}")
            elif isinstance(st, config_parser.IncludeStatement):
                target = resolve_include(st.filename)
                if target is None:
                    if trusted:
                        continue  # gin's other readers may know it; its error is one line too
                    raise ConfigError(f"{_where(source, line)}: included config {st.filename!r} not found")
                real = Path(os.path.realpath(target))
                if real in chain:
                    raise ConfigError(f"{_where(source, line)}: include of {st.filename!r} makes a cycle (the file "
                                      "includes itself, directly or through others)")
                if depth >= MAX_INCLUDE_DEPTH:
                    raise ConfigError(f"{_where(source, line)}: includes nested deeper than {MAX_INCLUDE_DEPTH}")
                if not trusted:
                    allowed = roots + ([folder] if folder is not None else [])
                    if not real.name.endswith(".gin") or not _within(real, allowed):
                        raise ConfigError(
                            f"{_where(source, line)}: `include {st.filename!r}` is refused: a config may include "
                            "only .gin files among the shipped configs and in the folder (or below) of the "
                            f"config given or of the including file; nothing was read; {TRUST_HINT}")
                check(_read(real, target), str(target), real.parent, chain + (real,), depth + 1)

    for p in paths:
        real = Path(os.path.realpath(p))
        check(_read(real, p), str(p), real.parent, (real,), 0)
    cwd = Path(os.path.realpath(os.getcwd()))
    for source, text in texts:
        check(text, source, cwd, (), 0)


def _read(real: Path, shown) -> str:
    try:
        with open(real, encoding="utf-8") as fh:
            return fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not a UTF-8 text file"
        raise ConfigError(f"config {str(shown)!r} cannot be read ({why})") from None
