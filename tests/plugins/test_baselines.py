"""ANTs and identity baselines: their fields follow the toolkit's convention.

The ANTs runs use few iterations on 32x28x24 volumes to stay fast."""

import shutil
import tempfile

import numpy as np
import pytest
import torch
from scipy import ndimage

from ddmr_core.plugins.registry import Registry
from ddmr_core.spatial.fields import warp

ants = pytest.importorskip("ants")

from ddmr_plugins.baselines.ants import (  # noqa: E402
    AntsSyN,
    ants_syn,
    ants_syncc,
    compose_to_field,
    ants_field_to_voxels,
    to_ants,
)

SHAPE = (32, 28, 24)
# anisotropic on purpose: a units or axis-order mistake shows up as a wrong vector
SPACING = (1.5, 1.0, 2.0)
FAST = dict(reg_iterations=(20, 10, 0), threads=2)


def _blobs():
    g = np.meshgrid(*[np.arange(n, dtype=float) for n in SHAPE], indexing="ij")
    c = np.array(SHAPE) / 2
    img = np.exp(-sum(((gg - cc) / r) ** 2 for gg, cc, r in zip(g, c, (7, 6, 5))))
    c2 = c + np.array([5, -4, 2])
    img += 0.5 * np.exp(-sum(((gg - cc) / 3.0) ** 2 for gg, cc in zip(g, c2)))
    return img.astype(np.float32)


def _warp(image, disp, mode="linear"):
    return warp(torch.from_numpy(image)[None, None], torch.from_numpy(disp)[None], mode=mode).numpy()[0, 0]


@pytest.mark.parametrize("factory", [ants_syn, ants_syncc], ids=["syn", "syncc"])
def test_ants_recovers_known_translation(factory):
    fixed = _blobs()
    t = np.array([2.0, -1.5, 1.0])  # voxels along array axes 0, 1, 2
    # moving(x) = fixed(x - t), so the pull field that registers it is u = +t
    moving = ndimage.shift(fixed, t, order=3, mode="constant").astype(np.float32)
    disp = factory(**FAST).register(fixed, moving, SPACING)
    assert disp.shape == (3,) + SHAPE and disp.dtype == np.float32
    inner = (slice(8, -8),) * 3  # where the image has structure
    # ANTs' result varies from run to run (its affine stage samples points at random and
    # ITK's threads do not reduce in a fixed order): about +-0.25 voxel with these few
    # iterations. A sign, unit or axis-order error would be off by 2 t or a permutation.
    for axis in range(3):
        assert disp[axis][inner].mean() == pytest.approx(t[axis], abs=0.35)
    # (that the converted field resamples exactly as ANTs' own apply_transforms does is
    # tested below, deterministically, from one registration's transform files)


def test_converted_field_warps_like_ants_apply_transforms():
    fixed = _blobs()
    # a smooth non-rigid deformation of the fixed image plus a shift
    g = np.meshgrid(*[np.arange(n, dtype=float) for n in SHAPE], indexing="ij")
    u_true = np.stack([1.0 + 1.5 * np.sin(g[1] / 6.0), -1.0 + np.cos(g[0] / 7.0), 0.8 * np.sin(g[2] / 5.0)])
    moving = _warp(fixed, (-u_true).astype(np.float32))
    method = AntsSyN(metric="mattes", reg_iterations=(20, 10, 0), threads=2)
    f_img, m_img = to_ants(fixed, SPACING), to_ants(moving, SPACING)
    workdir = tempfile.mkdtemp()
    try:
        transforms = method.run(f_img, m_img, workdir)
        assert any(t.endswith(".mat") for t in transforms)  # affine and warp are both composed
        field = compose_to_field(f_img, m_img, transforms, workdir)
        by_ants = ants.apply_transforms(f_img, m_img, transforms, interpolator="linear").numpy()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    disp = ants_field_to_voxels(field, SPACING)
    ours = _warp(moving, disp)
    inner = (slice(3, -3),) * 3  # zero padding at the border is handled alike, but keep off it
    assert np.abs(ours - by_ants)[inner].max() < 1e-3
    assert np.abs(disp).max() > 0.5  # the test is not vacuous


def test_identity_and_registry():
    reg = Registry(bind_gin=False)
    for name in ("identity", "ants_syn", "ants_syncc"):
        assert name in reg.names("baselines")
    ident = reg.get("baselines", "identity")()
    assert ident.available()
    disp = ident.register(np.zeros(SHAPE), np.ones(SHAPE), SPACING)
    assert disp.shape == (3,) + SHAPE and not disp.any()
    assert reg.get("baselines", "ants_syn")().available() is True


def test_unavailable_ants_gives_clear_message(monkeypatch):
    import builtins

    from ddmr_core.errors import DdmrError
    from ddmr_plugins.baselines import ants as mod

    real_import = builtins.__import__

    def no_ants(name, *args, **kwargs):
        if name == "ants" or name.startswith("ants."):
            raise ImportError("No module named 'ants'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ants)
    method = mod.ants_syn()
    assert method.available() is False
    with pytest.raises(DdmrError, match="antspyx"):
        method.register(_blobs(), _blobs(), SPACING)
