"""The one factory that builds ddmr's pluggy plugin manager.

Nothing is registered at import time: every caller asks :func:`get_plugin_manager`
for a fresh manager, so tests and library users can build one with or without
third-party plugins.

Plugins are found through the ``ddmr`` entry-point group. ddmr's own built-in plugins
are listed there too (see ``setup.cfg``), so they take exactly the path a third party's
plugin takes. Setting the environment variable ``DDMR_DISABLE_PLUGIN_AUTOLOAD`` to a
non-empty value other than ``0`` loads only the built-ins.
"""

from __future__ import annotations

import importlib.metadata as md
import os
from typing import Iterable

import pluggy

from . import hookspecs
from ..errors import PluginError

#: Environment variable that switches off autoloading of third-party plugins.
DISABLE_AUTOLOAD_ENV = "DDMR_DISABLE_PLUGIN_AUTOLOAD"
#: Name of the distribution whose plugins are the built-ins.
BUILTIN_DIST = "ddmr"
ENTRY_POINT_GROUP = "ddmr"


class PluginManager(pluggy.PluginManager):
    """A pluggy manager that also remembers which distribution each plugin came from."""

    def __init__(self):
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)
        #: plugin name -> distribution name ("ddmr" for built-ins, "<local>" if registered by hand)
        self.distributions: dict[str, str] = {}

    def register_plugin(self, plugin, name: str, dist: str = "<local>"):
        """Register ``plugin`` under ``name``, remembering its distribution."""
        self.register(plugin, name=name)
        self.distributions[name] = dist
        return plugin


def autoload_disabled() -> bool:
    value = os.environ.get(DISABLE_AUTOLOAD_ENV, "")
    return value not in ("", "0")


def _entry_points() -> list[md.EntryPoint]:
    eps = md.entry_points(group=ENTRY_POINT_GROUP)
    # Deduplicate: the same distribution can be visible twice (e.g. an editable
    # install plus a build folder on sys.path).
    seen, out = set(), []
    for ep in eps:
        key = (ep.name, ep.value)
        if key not in seen:
            seen.add(key)
            out.append(ep)
    return out


def get_plugin_manager(
    autoload: bool | None = None, extra_plugins: Iterable[tuple[str, object]] = ()
) -> PluginManager:
    """Build a plugin manager with the built-in and (unless disabled) third-party plugins.

    Args:
        autoload: load third-party plugins from the ``ddmr`` entry points. ``None``
            (default) follows the ``DDMR_DISABLE_PLUGIN_AUTOLOAD`` environment variable.
        extra_plugins: ``(name, plugin)`` pairs to register by hand, e.g. in tests.

    Raises:
        PluginError: a plugin's module fails to import; the message names the entry
            point, its distribution and the import error.
    """
    if autoload is None:
        autoload = not autoload_disabled()
    pm = PluginManager()
    for ep in _entry_points():
        dist = ep.dist.name if ep.dist is not None else "<unknown>"
        if not autoload and dist != BUILTIN_DIST:
            continue
        if pm.has_plugin(ep.name):
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # any import failure is the plugin's, report it as such
            raise PluginError(
                f"plugin {ep.name!r} from distribution {dist!r} ({ep.value}) failed to load: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        pm.register_plugin(plugin, name=ep.name, dist=dist)
    for name, plugin in extra_plugins:
        pm.register_plugin(plugin, name=name)
    return pm
