"""Registry: turns plugin hook results into ``name -> factory`` maps, one per kind.

Every factory is also made available to gin under a name namespaced by its kind,
``ddmr.<kind>.<name>``, so configs can write ``@ddmr.losses.ncc()`` and bind its
parameters with ``ddmr.losses.ncc.win = 9``. Models (``ddmr_models``) are the exception:
a model is a checkpoint file, not a component a config builds, so its names (which may
hold hyphens, ``brain-mr``) are not bound in gin.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Callable, Mapping

import gin

from ..errors import PluginError, UnknownNameError
from .hookspecs import KINDS
from .manager import PluginManager, get_plugin_manager


#: kinds whose names are not gin configurables (a model names a checkpoint file)
NOT_IN_GIN = ("models",)
#: what a model name may be: no ``.`` or path separator, so it never reads as a file name
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*\Z")


def valid_name(kind: str, name) -> bool:
    """Whether ``name`` may name a component of ``kind`` (identifiers; model names may
    also hold ``-``)."""
    if not isinstance(name, str):
        return False
    return bool(MODEL_NAME.match(name)) if kind == "models" else name.isidentifier()


@dataclass(frozen=True)
class Entry:
    """One registered component: its kind, name, factory and where it came from."""

    kind: str
    name: str
    factory: Callable
    plugin: str
    distribution: str

    @property
    def gin_name(self) -> str | None:
        """``ddmr.<kind>.<name>``; ``None`` for kinds not bound in gin (models)."""
        return None if self.kind in NOT_IN_GIN else f"ddmr.{self.kind}.{self.name}"


def gin_module(kind: str) -> str:
    return f"ddmr.{kind}"


class Registry:
    """Name -> factory maps per kind, built from a plugin manager.

    Args:
        pm: a plugin manager; by default :func:`get_plugin_manager` builds one.
        bind_gin: register every factory with gin (default ``True``).

    Raises:
        PluginError: two plugins give the same name for one kind (both are named), or
            a hook returns something that is not a mapping of names to callables.
    """

    def __init__(self, pm: PluginManager | None = None, bind_gin: bool = True):
        self.pm = pm if pm is not None else get_plugin_manager()
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        self._gin_wrappers: dict = {}
        for kind in KINDS:
            self._collect(kind)
        if bind_gin:
            self.bind_gin()

    def _collect(self, kind: str) -> None:
        caller = getattr(self.pm.hook, f"ddmr_{kind}")
        table = self._entries[kind]
        for impl in caller.get_hookimpls():
            plugin = impl.plugin_name
            dist = self.pm.distributions.get(plugin, "<local>")
            result = impl.function()
            if result is None:
                continue
            if not isinstance(result, Mapping):
                raise PluginError(
                    f"plugin {plugin!r} ({dist}): hook ddmr_{kind} must return a mapping "
                    f"name -> factory, got {type(result).__name__}"
                )
            for name, factory in result.items():
                if not valid_name(kind, name):
                    what = ("a valid model name (letters, digits, '-' and '_')" if kind == "models"
                            else "a valid identifier")
                    raise PluginError(f"plugin {plugin!r} ({dist}): {kind} name {name!r} is not {what}")
                if not callable(factory):
                    raise PluginError(
                        f"plugin {plugin!r} ({dist}): {kind} {name!r} is not callable"
                    )
                if name in table:
                    other = table[name]
                    raise PluginError(
                        f"{kind} name {name!r} is given by two plugins: {other.plugin!r} "
                        f"({other.distribution}) and {plugin!r} ({dist})"
                    )
                table[name] = Entry(kind, name, factory, plugin, dist)

    # ----------------------------------------------------------------- lookup
    def _check_kind(self, kind: str) -> None:
        if kind not in self._entries:
            raise UnknownNameError(f"unknown plugin kind {kind!r}; kinds are: {', '.join(KINDS)}")

    def names(self, kind: str) -> list[str]:
        """Sorted names registered for ``kind``."""
        self._check_kind(kind)
        return sorted(self._entries[kind])

    def entries(self, kind: str | None = None) -> list[Entry]:
        """All entries, or those of one kind, in kind order then name order."""
        kinds = KINDS if kind is None else (kind,)
        out = []
        for k in kinds:
            self._check_kind(k)
            out.extend(self._entries[k][n] for n in sorted(self._entries[k]))
        return out

    def entry(self, kind: str, name: str) -> Entry:
        self._check_kind(kind)
        try:
            return self._entries[kind][name]
        except KeyError:
            raise UnknownNameError(unknown_name_message(kind, name, self.names(kind))) from None

    def get(self, kind: str, name: str) -> Callable:
        """The factory registered as ``name`` for ``kind``."""
        return self.entry(kind, name).factory

    def create(self, kind: str, name: str, /, *args, **kwargs):
        """Build a component: ``registry.create("losses", "ncc")``.

        Goes through gin's wrapper when gin is bound, so gin bindings apply."""
        entry = self.entry(kind, name)
        factory = self._gin_wrappers.get((kind, name), entry.factory)
        return factory(*args, **kwargs)

    # ------------------------------------------------------------------- gin
    def bind_gin(self) -> None:
        """Register every factory with gin as ``ddmr.<kind>.<name>``.

        Registering is idempotent. A name that now maps to a different factory (a
        plugin installed or removed since the last registry in this process) replaces
        the old registration.
        """
        self._gin_wrappers = {}
        for entry in self.entries():
            if entry.kind in NOT_IN_GIN:
                continue
            module = gin_module(entry.kind)
            try:
                wrapper = gin.external_configurable(entry.factory, name=entry.name, module=module)
            except ValueError:
                # gin refuses to re-point a name at another object outside its
                # interactive mode; a fresh registry must win over a stale one.
                with gin.config.interactive_mode():
                    wrapper = gin.external_configurable(
                        entry.factory, name=entry.name, module=module
                    )
            self._gin_wrappers[(entry.kind, entry.name)] = wrapper

    def gin_wrapper(self, kind: str, name: str) -> Callable:
        """The gin-configured version of a factory (bindings applied when called)."""
        entry = self.entry(kind, name)
        return self._gin_wrappers.get((kind, name), entry.factory)


def unknown_name_message(kind: str, name: str, available: list[str], intro: str | None = None) -> str:
    """``unknown <kind> name 'x' (did you mean 'y'?); available <kind>: ...`` (``intro``
    replaces the first part)."""
    msg = intro or f"unknown {kind} name {name!r}"
    close = difflib.get_close_matches(name, available, n=1)
    if close:
        msg += f" (did you mean {close[0]!r}?)"
    avail = ", ".join(available) if available else "(none registered)"
    return f"{msg}; available {kind}: {avail}"
