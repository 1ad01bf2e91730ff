"""Every hook is documented and has a test; each hook's results reach the registry and gin."""

import inspect
import re
from pathlib import Path

import gin
import pytest
import torch

from ddmr_core.plugins import hookspecs
from ddmr_core.plugins.hookspecs import KINDS, hookimpl
from ddmr_core.plugins.manager import get_plugin_manager
from ddmr_core.plugins.registry import Registry

ROOT = Path(__file__).resolve().parents[2]
HOOKS = [name for name, obj in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("ddmr_")]


def test_one_hook_per_kind():
    assert sorted(HOOKS) == sorted(f"ddmr_{k}" for k in KINDS)


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented(hook):
    assert inspect.getdoc(getattr(hookspecs, hook)), f"{hook} has no docstring in hookspecs.py"
    doc = (ROOT / "docs" / "plugin_hooks.md").read_text()
    assert re.search(rf"^## {hook}$", doc, re.M), f"{hook} has no section in docs/plugin_hooks.md"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_test(hook):
    # every hook has a test function named test_hook_<hook> somewhere under tests/
    tests = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))
    assert re.search(rf"def test_hook_{hook}\b", tests), f"no test_hook_{hook} under tests/"


class _Thing(torch.nn.Module):
    inputs = "image"

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale


def _local_plugin(kind):
    """A plugin implementing the hook of ``kind`` with one factory named ``probe_<kind>``."""

    class Plugin:
        pass

    def impl():
        return {f"probe_{kind}": _Thing}

    impl.__name__ = f"ddmr_{kind}"
    setattr(Plugin, f"ddmr_{kind}", staticmethod(hookimpl(impl)))
    return Plugin()


def _check_hook(kind):
    pm = get_plugin_manager(extra_plugins=[("probe", _local_plugin(kind))])
    reg = Registry(pm)
    name = f"probe_{kind}"
    assert name in reg.names(kind)
    entry = reg.entry(kind, name)
    assert entry.plugin == "probe" and entry.distribution == "<local>"
    # reachable from gin under its kind's namespace, with bindings applied
    gin.clear_config()
    gin.parse_config(f"ddmr.{kind}.{name}.scale = 2.5")
    try:
        assert reg.create(kind, name).scale == 2.5
    finally:
        gin.clear_config()
    # built-in implementations of the hook are marked trylast
    for impl in getattr(pm.hook, f"ddmr_{kind}").get_hookimpls():
        if pm.distributions.get(impl.plugin_name) == "ddmr":
            assert impl.trylast


def test_hook_ddmr_augmenters():
    _check_hook("augmenters")


def test_hook_ddmr_backbones():
    _check_hook("backbones")


def test_hook_ddmr_losses():
    _check_hook("losses")


def test_hook_ddmr_loss_weightings():
    _check_hook("loss_weightings")


def test_hook_ddmr_baselines():
    _check_hook("baselines")


def test_hook_ddmr_datasets():
    _check_hook("datasets")


def test_hook_ddmr_metrics():
    _check_hook("metrics")


def test_hook_ddmr_models(tmp_path):
    # models are checkpoint files: names may hold '-', factories return paths, no gin
    ckpt = tmp_path / "probe.pt"
    ckpt.write_bytes(b"")

    class Plugin:
        @hookimpl
        def ddmr_models(self):
            return {"probe-model": lambda: ckpt}

    pm = get_plugin_manager(extra_plugins=[("probe", Plugin())])
    reg = Registry(pm)
    assert "probe-model" in reg.names("models")
    entry = reg.entry("models", "probe-model")
    assert entry.plugin == "probe" and entry.distribution == "<local>" and entry.gin_name is None
    assert entry.factory() == ckpt
    with pytest.raises(ValueError):
        gin.get_configurable("ddmr.models.probe-model")
    for impl in pm.hook.ddmr_models.get_hookimpls():
        if pm.distributions.get(impl.plugin_name) == "ddmr":
            assert impl.trylast
