"""Shared fixtures: an isolated install of the example third-party plugin, gin hygiene."""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import gin
import pytest

ROOT = Path(__file__).resolve().parents[1]

#: A complete, tiny training config (16^3 synthetic data, a 2-level U-Net, TPS pairs);
#: trainer tests append their own losses, data counts and schedules.
TINY_TRAINING = """
SIZE = (16, 16, 16)
include 'mixins/data/synthetic.gin'
include 'mixins/trainer/cpu_small.gin'
ddmr.input_size.size = %SIZE
ddmr.build_model.backbone = @ddmr.backbones.vxm_unet()
ddmr.backbones.vxm_unet.widths = (4, 8)
ddmr.backbones.vxm_unet.head = (4,)
ddmr.build_augmentation.steps = [@ddmr.augmenters.tps()]
ddmr.augmenters.tps.grid = 4
ddmr.Trainer.progress = False
"""


@pytest.fixture(autouse=True)
def _clear_gin():
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.fixture(scope="session")
def third_party_site(tmp_path_factory):
    """``examples/third_party_plugin`` installed with pip into a private folder.

    Returns the folder; putting it on ``sys.path``/``PYTHONPATH`` makes its entry-point
    metadata visible, exactly as a real install would."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(ROOT / "examples" / "third_party_plugin")],
        check=True,
    )
    return target


@pytest.fixture
def with_third_party(third_party_site, monkeypatch):
    monkeypatch.syspath_prepend(str(third_party_site))
    importlib.invalidate_caches()
    monkeypatch.delenv("DDMR_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    yield third_party_site


@pytest.fixture(scope="session")
def tiny_workspace(tmp_path_factory):
    """16^3 inputs, a light checkpoint and broken/hostile ones (``tests/tiny_workspace.py``),
    built once; tests only read them (outputs go to their own ``tmp_path``)."""
    from tiny_workspace import build_workspace

    return build_workspace(tmp_path_factory.mktemp("tiny") / "ws")


def run_cli(*args, env_extra=None):
    env = dict(os.environ)
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "ddmr_core", *args], capture_output=True, text=True, env=env
    )
