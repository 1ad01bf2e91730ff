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


def make_trainer(tmp_path, config_text, *bindings, run="run", **kw):
    """A CPU :class:`~ddmr_core.training.trainer.Trainer` of ``config_text`` (written to
    ``tmp_path/exp.gin``) plus ``bindings``, run folder ``tmp_path/run``."""
    from ddmr_core.config.parsing import parse_config
    from ddmr_core.training.trainer import Trainer

    cfg = tmp_path / "exp.gin"
    cfg.write_text(config_text)
    parse_config([cfg], list(bindings))
    return Trainer(run_dir=tmp_path / run, device="cpu", **kw)


def smooth_field(shape, amplitude, seed=1):
    """A smooth random ``(3, *shape)`` float32 field whose largest component is ``amplitude``."""
    import numpy as np
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    f = np.stack([ndimage.gaussian_filter(rng.normal(size=shape), 3) for _ in range(3)])
    return (f / np.abs(f).max() * amplitude).astype(np.float32)


def save_nifti(path, data, affine) -> str:
    """``data`` as a plain NIfTI at ``path`` (nibabel, no ddmr code); returns the path."""
    import nibabel as nib

    nib.save(nib.Nifti1Image(data, affine), str(path))
    return str(path)


def rotation_theta(degrees, shift_xyz):
    """``(1, 3, 4)`` ``F.affine_grid`` map: a rotation by ``degrees`` in the x-y plane and a
    shift (normalised units, xyz)."""
    import math

    import torch

    a = math.radians(degrees)
    t = torch.zeros(1, 3, 4)
    t[0, :, :3] = torch.tensor([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    t[0, :, 3] = torch.tensor(shift_xyz)
    return t


def run_cli(*args, env_extra=None):
    env = dict(os.environ)
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "ddmr_core", *args], capture_output=True, text=True, env=env
    )


@pytest.fixture(scope="session")
def hostile_workspace(tiny_workspace, tmp_path_factory):
    """The second round's hostile inputs (``tests/hostile_workspace.py``), beside
    ``tiny_workspace``'s; built once, only read."""
    from hostile_workspace import build_hostile

    return build_hostile(tmp_path_factory.mktemp("hostile") / "hws", tiny_workspace)
