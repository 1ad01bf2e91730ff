"""gin wiring: finding shipped configs, parsing files and bindings, clear errors.

Shipped ``.gin`` files live in ``configs/`` (installed as the package ``ddmr_configs``);
they compose experiments from small mix-ins with ``include``. Include paths are
resolved relative to the config root, so they work from a source tree and from an
installed package alike.
"""

from __future__ import annotations

import importlib
import importlib.util  # noqa: F401  gin's include error path needs it imported
import inspect
import logging
import pkgutil
import re
import tokenize
import types
import typing
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

import gin
from gin import config_parser

from .trust import safe_syntax_message, vet_configs
from ..errors import ConfigError, UnknownNameError
from ..plugins.registry import Registry, unknown_name_message

#: parts of ``ddmr_core`` that are the command line or the web application, not the
#: library (no configurables)
_NOT_LIBRARY = ("cli", "__main__", "commands", "serve")

_MACRO_RE = re.compile(r"%([A-Za-z_][\w.]*)")
_SEARCH_PATHS: set = set()  # gin appends duplicates; remember what was added


class _GinPathProbeFilter(logging.Filter):
    """Drop gin's "Path not found" errors: gin logs one (to the root logger) for every
    search-path prefix it probes while looking for an included file, found or not."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.ERROR and record.getMessage().startswith("Path not found:")
                    and record.pathname.replace("\\", "/").endswith("gin/resource_reader.py"))


logging.getLogger().addFilter(_GinPathProbeFilter())


def _add_search_path(path: str) -> None:
    if path not in _SEARCH_PATHS:
        gin.add_config_file_search_path(path)
        _SEARCH_PATHS.add(path)


_UNKNOWN_RE = re.compile(r"No configurable matching (?:reference )?'@?(ddmr\.(\w+)\.(\w+))")


def config_root() -> Path:
    """Folder of the shipped gin configs (``configs/`` in the source tree)."""
    import ddmr_configs

    return Path(ddmr_configs.__file__).resolve().parent


def shipped_configs() -> list[Path]:
    """Every ``.gin`` file shipped with ddmr, relative to :func:`config_root`."""
    root = config_root()
    return sorted(p.relative_to(root) for p in root.rglob("*.gin"))


def resolve_config(name: str | Path) -> Path:
    """Find a config: a path as given, else relative to the shipped config root.

    ``designs/bl_n.gin``, ``designs/bl_n`` and an absolute path all work.
    """
    p = Path(name)
    candidates = [p, p.with_suffix(".gin") if p.suffix != ".gin" else p]
    root = config_root()
    candidates += [root / c for c in list(candidates)]
    for c in candidates:
        if c.is_file():
            return c.resolve()
    shipped = ", ".join(str(s) for s in shipped_configs()) or "(none)"
    raise ConfigError(f"config file {str(name)!r} not found; shipped configs: {shipped}")


def parse_config(
    files: Iterable[str | Path] = (),
    bindings: Sequence[str] = (),
    registry: Registry | None = None,
    text: str | None = None,
    check_macros: bool = False,
    trusted: bool | None = None,
) -> Registry:
    """Clear gin, register plugins, and parse config files, a config text and bindings.

    Returns the registry used, so callers can build components from it. With
    ``check_macros`` (for complete experiment configs, not mix-ins), a macro used but never
    bound is an error naming it.

    Configs are data: before gin acts on anything, files, text and bindings are vetted by
    :func:`ddmr_core.config.trust.vet_configs` (imports of ddmr's and its plugins' modules
    only, includes only of .gin files in the shipped configs and the configs' own folder
    trees, no include cycles) unless ``trusted`` (None: :func:`~ddmr_core.config.trust.
    trusted_configs`, what ``--trust-config`` sets).

    Raises:
        ConfigError: a file is missing or malformed, a binding is malformed, or a
            configurable parameter does not exist.
        UnknownNameError: a config names a plugin that is not registered; the message
            lists the names available for that kind.
    """
    import_gin_modules()
    registry = registry if registry is not None else Registry()
    registry.bind_gin()
    paths = [resolve_config(f) for f in files]
    gin.clear_config()
    _add_search_path(str(config_root()))
    for p in paths:
        # includes may be written relative to the including file too
        _add_search_path(str(p.parent))
    where = ", ".join(str(p) for p in paths) or "bindings"
    part = where  # what is being parsed, for the error message
    try:
        texts = ([("config text", text)] if text else []) + ([("gin bindings", "\n".join(bindings))] if bindings else [])
        vet_configs(paths, texts, trusted)
        for p in paths:
            gin.parse_config_file(str(p))
        if text:
            part = "config text" if not paths else f"{where} + config text"
            gin.parse_config(text)
        if bindings:
            part = "gin bindings" if not paths else f"gin bindings (after {where})"
            gin.parse_config(list(bindings))
        check_value_types()
    except (ValueError, SyntaxError, IOError, TypeError, AttributeError, tokenize.TokenError) as exc:
        gin.clear_config()
        raise translate_gin_error(exc, registry, part) from exc
    except ConfigError:
        gin.clear_config()
        raise
    if check_macros:
        missing = unbound_macros()
        if missing:
            gin.clear_config()
            names = ", ".join(missing)
            raise ConfigError(
                f"{where}: the config uses the macro(s) {names} but never sets them; bind them in an "
                f"experiment config or with --gin, e.g. --gin \"SIZE = (64, 64, 64)\""
            )
    return registry


_UNBOUND = object()


def query_macro(name: str, default=None):
    """The value the current config gives the macro ``%name`` (e.g. ``SIZE``), or
    ``default`` when it sets none (gin's public ``query_parameter('%NAME')``)."""
    try:
        return gin.query_parameter(f"%{name}")
    except ValueError:
        return default


def unbound_macros() -> list[str]:
    """Macros (``%NAME``) the current config refers to without binding a value."""
    return [name for name in sorted(set(_MACRO_RE.findall(gin.config_str())))
            if query_macro(name, _UNBOUND) is _UNBOUND]


def gin_modules() -> list[str]:
    """The library's modules: every module of the ``ddmr_core`` package and its
    subpackages but the command line (``cli``, ``__main__``, the ``commands`` package) and
    ``serve``. Found on disk, without importing the packages."""
    import ddmr_core

    def walk(paths, prefix):
        for m in pkgutil.iter_modules(paths):
            if m.name in _NOT_LIBRARY and prefix == "ddmr_core.":
                continue
            if m.ispkg:
                yield from walk([str(Path(p) / m.name) for p in paths], f"{prefix}{m.name}.")
            else:
                yield f"{prefix}{m.name}"

    return sorted(walk(list(ddmr_core.__path__), "ddmr_core."))


def import_gin_modules() -> None:
    """Import every library module (:func:`gin_modules`) before parsing: gin only knows a
    configurable once its module is imported, and configs may bind any of them (plugins'
    configurables come through the :class:`~ddmr_core.plugins.registry.Registry`). Found, not
    listed, so a new configurable needs no registration here."""
    for name in gin_modules():
        importlib.import_module(name)


def translate_gin_error(exc: Exception, registry: Registry, where: str) -> Exception:
    """Turn a gin exception into a one-line :class:`ConfigError`."""
    if isinstance(exc, tokenize.TokenError):  # ("EOF in multi-line statement", (line, col))
        what = exc.args[0] if exc.args else "unbalanced brackets or quotes"
        return ConfigError(f"{where}: invalid gin config: {what} (an unclosed bracket or quote?)")
    msg = str(exc).strip()
    m = _UNKNOWN_RE.search(msg)
    if m:
        kind, name = m.group(2), m.group(3)
        try:
            available = registry.names(kind)
        except UnknownNameError:
            return ConfigError(f"{where}: unknown configurable {m.group(1)!r}")
        return UnknownNameError(f"{where}: " + unknown_name_message(kind, name, available))
    if isinstance(exc, SyntaxError):  # name the file and line, never quote its content
        at = f" ({exc.filename or 'bindings'}, line {exc.lineno})" if exc.lineno else ""
        return ConfigError(f"{where}: invalid gin config: {safe_syntax_message(exc)}{at}")
    first = msg.splitlines()[0] if msg else type(exc).__name__
    # gin appends "In file ..., line N" and then the line itself: keep the location only
    detail = " ".join(line.strip() for line in msg.splitlines()[1:2])
    text = f"{where}: invalid gin config: {first}"
    if detail:
        text += f" [{detail}]"
    return ConfigError(text)


def config_text() -> str:
    """The full current gin config (every binding), for saving with a run or checkpoint."""
    return gin.config_str()


# ------------------------------------------------------------------ statements
class _Ref(NamedTuple):
    """A configurable reference (``@name`` or ``@name()``) as written in a config."""

    name: str
    evaluate: bool


class _Macro(NamedTuple):
    """A macro (``%NAME``) as written in a config."""

    name: str


class _RecordingDelegate(config_parser.ParserDelegate):
    """Parses references and macros into plain records: looks nothing up, runs nothing."""

    def configurable_reference(self, scoped_configurable_name, evaluate):
        return _Ref(scoped_configurable_name, bool(evaluate))

    def macro(self, macro_name):
        return _Macro(macro_name)


def config_statements(text: str) -> list:
    """The statements of a gin config text, parsed by gin's own parser without acting on
    any of them (no binding, import or include takes effect).

    Raises:
        SyntaxError, ValueError, tokenize.TokenError: malformed text.
    """
    return list(config_parser.ConfigParser(text, _RecordingDelegate()))


def _flatten(value):
    if isinstance(value, (_Ref, _Macro)):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _flatten(k)
            yield from _flatten(v)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for v in value:
            yield from _flatten(v)


def _numeric_hint(fn, arg: str):
    """The numeric types a parameter accepts (e.g. ``(float,)`` or ``(int, NoneType)``), or
    None when its annotation is missing or not purely numeric."""
    try:
        param = inspect.signature(fn, eval_str=True).parameters.get(arg)
    except Exception:  # unresolvable annotations: no check
        return None
    if param is None or param.annotation is inspect.Parameter.empty:
        return None
    hint = param.annotation
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if not args or any(a not in (int, float, bool, type(None)) for a in args):
        return None
    return args if any(a in (int, float) for a in args) else None


def check_value_types() -> None:
    """Refuse a binding whose value cannot be what a numeric parameter takes (a string,
    list or ``None`` where its annotation says ``float``/``int``), naming the binding.

    Without this, ``ddmr.Trainer.lr = 'abc'`` would only fail deep inside the component
    with a ``TypeError`` traceback. Only parameters annotated with numeric types alone
    are checked; references and macros are left to gin."""
    try:
        statements = config_statements(gin.config_str())
    except (SyntaxError, ValueError, tokenize.TokenError):  # not expected: gin wrote it
        return
    for st in statements:
        if not isinstance(st, config_parser.BindingStatement) or not st.arg_name:
            continue
        value = st.value
        if isinstance(value, (_Ref, _Macro)):
            continue
        try:
            fn = gin.get_configurable(st.selector)
        except (ValueError, KeyError):
            continue
        kinds = _numeric_hint(fn, st.arg_name)
        if kinds is None:
            continue
        if not ((value is None and type(None) in kinds) or isinstance(value, (int, float))):
            want = " or ".join("None" if k is type(None) else k.__name__ for k in kinds)
            raise ConfigError(f"gin binding {st.selector}.{st.arg_name} = {value!r}: expects a number "
                              f"({want}), not {type(value).__name__}")
