"""gin wiring: finding shipped configs, parsing files and bindings, clear errors.

Shipped ``.gin`` files live in ``configs/`` (installed as the package ``ddmr_configs``);
they compose experiments from small mix-ins with ``include``. Include paths are
resolved relative to the config root, so they work from a source tree and from an
installed package alike.
"""

from __future__ import annotations

import importlib
import logging
import importlib.util  # noqa: F401  gin's include error path needs it imported
import re
from pathlib import Path
from typing import Iterable, Sequence

import gin

from .errors import ConfigError, UnknownNameError
from .registry import Registry, unknown_name_message

#: Modules defining gin configurables outside the plugin registry; imported before parsing
#: so that configs can bind them (gin only knows a configurable once its module is imported).
GIN_MODULES = (
    "ddmr_core.experiment",
    "ddmr_core.augment",
    "ddmr_core.trainer",
    "ddmr_core.transfer",
    "ddmr_core.preprocess",
)

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
) -> Registry:
    """Clear gin, register plugins, and parse config files, a config text and bindings.

    Returns the registry used, so callers can build components from it. With
    ``check_macros`` (for complete experiment configs, not mix-ins), a macro used but never
    bound is an error naming it.

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
    try:
        for p in paths:
            gin.parse_config_file(str(p))
        if text:
            gin.parse_config(text)
        if bindings:
            gin.parse_config(list(bindings))
    except (ValueError, SyntaxError, IOError, TypeError, AttributeError) as exc:
        gin.clear_config()
        raise translate_gin_error(exc, registry, where) from exc
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


def unbound_macros() -> list[str]:
    """Macros (``%NAME``) the current config refers to without binding a value."""
    missing = []
    for name in sorted(set(_MACRO_RE.findall(gin.config_str()))):
        try:
            gin.query_parameter(f"%{name}")
        except ValueError:
            missing.append(name)
    return missing


def import_gin_modules() -> None:
    """Import every module in :data:`GIN_MODULES` that exists in this installation."""
    for name in GIN_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a missing dependency inside it is a real error
                raise


def translate_gin_error(exc: Exception, registry: Registry, where: str) -> Exception:
    """Turn a gin exception into a one-line :class:`ConfigError`."""
    msg = str(exc).strip()
    m = _UNKNOWN_RE.search(msg)
    if m:
        kind, name = m.group(2), m.group(3)
        try:
            available = registry.names(kind)
        except UnknownNameError:
            return ConfigError(f"{where}: unknown configurable {m.group(1)!r}")
        return UnknownNameError(f"{where}: " + unknown_name_message(kind, name, available))
    first = msg.splitlines()[0] if msg else type(exc).__name__
    detail = " ".join(line.strip() for line in msg.splitlines()[1:3])
    text = f"{where}: invalid gin config: {first}"
    if detail:
        text += f" [{detail}]"
    return ConfigError(text)


def config_text() -> str:
    """The full current gin config (every binding), for saving with a run or checkpoint."""
    return gin.config_str()
