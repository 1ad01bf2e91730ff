"""``affine_cascade``: learnt affine stage + deformable backbone, exact composition, learning."""

import math

import pytest
import torch

from ddmr_core.errors import ConfigError, DataError
from ddmr_core.prealign import affine_field, voxel_matrix
from ddmr_core.registry import Registry
from ddmr_core.spatial import compose, compose_affine, warp
from ddmr_plugins.backbones.affine import AffineCascade, AffineRegressor
from ddmr_plugins.backbones.vxm_unet import VxmUNet


def blob(shape=(32, 32, 32), centre=(16.0, 15.0, 17.0), sigma=(5.0, 4.0, 6.0)):
    axes = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij")
    r2 = sum(((a - c) / s) ** 2 for a, c, s in zip(axes, centre, sigma))
    return torch.exp(-0.5 * r2)[None, None]


def rotation_theta(degrees, shift_xyz):
    a = math.radians(degrees)
    t = torch.zeros(1, 3, 4)
    t[0, :, :3] = torch.tensor([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    t[0, :, 3] = torch.tensor(shift_xyz)
    return t


def test_compose_affine_is_warping_twice():
    """``compose_affine`` gives the field of warping by the affine map, then the residual,
    equal to the interpolating ``compose`` wherever neither samples outside."""
    shape = (24, 20, 28)
    theta = rotation_theta(7, [0.05, -0.08, 0.03])
    field, M = affine_field(theta, shape), voxel_matrix(theta, shape)
    g = torch.Generator().manual_seed(0)
    residual = torch.nn.functional.interpolate(torch.randn(1, 3, 3, 3, 3, generator=g), size=shape,
                                               mode="trilinear", align_corners=True)
    exact = compose_affine(field, M, residual)
    reference = compose(field, residual)  # trilinear sampling of the (linear) affine field
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4), slice(4, -4))
    assert torch.allclose(exact[inner], reference[inner], atol=1e-4)


def test_regressor_starts_at_the_identity_and_cascade_at_its_backbone():
    reg = AffineRegressor(widths=(4, 8))
    fixed, moving = blob(), blob(centre=(18.0, 15.0, 17.0))
    assert torch.equal(reg(fixed, moving), torch.eye(3, 4)[None])
    unet = VxmUNet(widths=(4, 8), head=(4,))
    casc = AffineCascade(unet, widths=(4, 8))
    assert torch.allclose(casc(fixed, moving), unet(fixed, moving), atol=1e-5)


def test_cascade_is_registered_and_nests_a_configured_backbone():
    reg = Registry()
    net = reg.create("backbones", "affine_cascade", deformable=VxmUNet(widths=(4, 8), head=(4,)), widths=(4, 4))
    assert isinstance(net.affine, AffineRegressor) and isinstance(net.deformable, VxmUNet)
    with pytest.raises(ConfigError, match="deformable"):
        reg.create("backbones", "affine_cascade")


def test_cascade_rejects_grids_its_strides_cannot_halve():
    casc = AffineCascade(VxmUNet(widths=(4,), head=(4,)), widths=(4, 4, 4))
    with pytest.raises(DataError, match="divisible by 8"):
        casc(torch.rand(1, 1, 12, 16, 16), torch.rand(1, 1, 12, 16, 16))


def test_parameter_groups_cover_every_parameter_once():
    casc = AffineCascade(VxmUNet(widths=(4, 8), head=(4,)), widths=(4, 8))
    groups = casc.parameter_groups()
    ids = [id(p) for g in groups.values() for p in g]
    assert len(ids) == len(set(ids)) == len(list(casc.parameters()))
    assert {id(p) for p in casc.affine.parameters()} <= {id(p) for p in groups["encoder"]}


def test_affine_stage_learns_translations_and_rotations():
    """Trained on random rigid moves of a blob (image loss only), the stage registers
    held-out moves: the pooled first moments of its features say where things are."""
    torch.manual_seed(0)
    shape = (32, 32, 32)
    fixed = blob(shape)
    casc = AffineCascade(VxmUNet(widths=(4,), head=(4,)), widths=(8, 8, 8))
    for p in casc.deformable.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam(casc.affine.parameters(), lr=3e-3)

    def draw(g):  # a rigidly moved copy: up to 10 degrees and 1/8 of the grid
        deg = float(torch.empty(1).uniform_(-10, 10, generator=g))
        shift = torch.empty(3).uniform_(-0.25, 0.25, generator=g).tolist()
        return warp(fixed, affine_field(rotation_theta(deg, shift), shape), padding="zeros")

    g = torch.Generator().manual_seed(1)
    for _ in range(150):
        moving = draw(g)
        loss = (warp(moving, casc(fixed, moving)) - fixed).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    test = torch.Generator().manual_seed(99)
    errors, before = [], []
    for _ in range(4):
        moving = draw(test)
        with torch.no_grad():
            errors.append((warp(moving, casc(fixed, moving)) - fixed).pow(2).mean().item())
        before.append((moving - fixed).pow(2).mean().item())
    assert sum(errors) < 0.3 * sum(before)
