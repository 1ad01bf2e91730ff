"""``affine_cascade``: learnt affine stage + deformable backbone, exact composition, learning."""


import pytest
import torch

from ddmr_core.errors import ConfigError, DataError
from ddmr_core.spatial.prealign import affine_field, voxel_matrix
from ddmr_core.plugins.registry import Registry
from ddmr_core.spatial.fields import compose, compose_affine, warp
from ddmr_plugins.backbones.affine import AffineCascade, KeypointAffine
from ddmr_plugins.backbones.vxm_unet import VxmUNet
from conftest import rotation_theta


def blob(shape=(32, 32, 32), centre=(16.0, 15.0, 17.0), sigma=(5.0, 4.0, 6.0)):
    axes = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij")
    r2 = sum(((a - c) / s) ** 2 for a, c, s in zip(axes, centre, sigma))
    return torch.exp(-0.5 * r2)[None, None]


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


def two_blobs(shape=(32, 32, 32)):
    return blob(shape) + 0.5 * blob(shape, centre=(10.0, 20.0, 12.0), sigma=(2.0, 3.0, 2.0))


@pytest.mark.parametrize("offset", [0.0, 0.2])
def test_untrained_keypoints_move_with_the_image(offset):
    """Convolutions commute with translations, and the first layer ignores constants:
    before any training, a shifted copy (also with a brighter background) gives the
    shift, and a nearly identity linear part."""
    torch.manual_seed(0)
    fixed = two_blobs()
    shift = torch.tensor([0.1, -0.15, 0.05])  # xyz, normalised
    theta = torch.eye(3, 4)[None].clone()
    theta[0, :, 3] = shift
    moving = warp(fixed, affine_field(theta, fixed.shape[2:]), padding="zeros") + offset
    with torch.no_grad():
        found = KeypointAffine(widths=(16, 32))(fixed, moving)[0]
    # moving(x) = fixed(x + shift): the pull map from fixed to moving shifts by -shift
    assert torch.allclose(found[:, 3], -shift, atol=0.025)
    assert torch.allclose(found[:, :3], torch.eye(3), atol=0.06)


def test_keypoint_fit_is_the_least_squares_affine_map():
    """With keypoints given, theta solves the ridge least-squares problem: an exact
    affine relation between keypoint sets is recovered."""
    ka = KeypointAffine(widths=(4,), keypoints=6, ridge=1e-6)
    g = torch.Generator().manual_seed(0)
    p = torch.rand(2, 6, 3, generator=g) * 2 - 1
    true = torch.eye(3, 4).repeat(2, 1, 1) + 0.1 * torch.randn(2, 3, 4, generator=g)
    q = torch.einsum("bij,bkj->bki", true[:, :, :3], p) + true[:, None, :, 3]
    ka.keypoints = lambda image: torch.cat([p, q])  # fixed first, moving second
    found = ka(torch.zeros(2, 1, 8, 8, 8), torch.zeros(2, 1, 8, 8, 8))
    assert torch.allclose(found, true, atol=1e-4)


def test_cascade_is_registered_and_nests_a_configured_backbone():
    reg = Registry()
    net = reg.create("backbones", "affine_cascade", deformable=VxmUNet(widths=(4, 8), head=(4,)), widths=(4, 4))
    assert isinstance(net.affine, KeypointAffine) and isinstance(net.deformable, VxmUNet)
    with pytest.raises(ConfigError, match="deformable"):
        reg.create("backbones", "affine_cascade")


def test_cascade_rejects_pairs_of_different_grids():
    casc = AffineCascade(VxmUNet(widths=(4,), head=(4,)), widths=(4, 4))
    with pytest.raises(DataError, match="same shape"):
        casc(torch.rand(1, 1, 12, 16, 16), torch.rand(1, 1, 16, 16, 16))


def test_parameter_groups_cover_every_parameter_once():
    casc = AffineCascade(VxmUNet(widths=(4, 8), head=(4,)), widths=(4, 8))
    groups = casc.parameter_groups()
    ids = [id(p) for g in groups.values() for p in g]
    assert len(ids) == len(set(ids)) == len(list(casc.parameters()))
    assert {id(p) for p in casc.affine.parameters()} <= {id(p) for p in groups["encoder"]}


def test_affine_stage_learns_translations_and_rotations():
    """Trained on random rigid moves (image loss only), the stage registers held-out
    moves, rotations included, far better than the identity."""
    torch.manual_seed(0)
    shape = (32, 32, 32)
    fixed = two_blobs(shape)
    casc = AffineCascade(VxmUNet(widths=(4,), head=(4,)), widths=(8, 8))
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


def test_compose_thetas_is_the_composition_of_the_fields():
    from ddmr_plugins.backbones.affine import compose_thetas

    g = torch.Generator().manual_seed(0)
    a = torch.eye(3, 4)[None] + 0.05 * torch.randn(1, 3, 4, generator=g)
    b = torch.eye(3, 4)[None] + 0.05 * torch.randn(1, 3, 4, generator=g)
    shape = (24, 20, 28)
    reference = compose(affine_field(a, shape), affine_field(b, shape))  # trilinear, exact for affine maps
    inner = (slice(None), slice(None), slice(5, -5), slice(5, -5), slice(5, -5))
    assert torch.allclose(affine_field(compose_thetas(a, b), shape)[inner], reference[inner], atol=1e-4)


def test_a_second_affine_pass_runs_on_the_pre_aligned_pair():
    torch.manual_seed(0)
    casc = AffineCascade(VxmUNet(widths=(4,), head=(4,)), widths=(8, 8), affine_passes=2)
    calls = []
    original = casc.affine.forward

    def spy(fixed, moving):
        calls.append(moving.clone())
        return original(fixed, moving)

    casc.affine.forward = spy
    fixed = two_blobs()
    moving = torch.roll(fixed, 3, dims=2)
    casc(fixed, moving)
    assert len(calls) == 2 and torch.equal(calls[0], moving) and not torch.equal(calls[1], moving)
    with pytest.raises(ConfigError, match="affine_passes"):
        AffineCascade(VxmUNet(widths=(4,), head=(4,)), affine_passes=0)
