"""ddmr_core.prealign: global initialisation before the network (hand-made cases)."""


import numpy as np
import pytest
import torch
from scipy import ndimage

from ddmr_core import prealign
from ddmr_core.errors import ConfigError
from ddmr_core.model import RegistrationModel
from ddmr_core.spatial import compose, warp
from conftest import rotation_theta


def blob_image(shape=(32, 32, 32), seed=0):
    """A smooth, asymmetric head-like volume on a zero background."""
    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.random(shape), 2.0)
    img = (img - img.min()) / (img.max() - img.min())
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    mask = (zz / 0.7) ** 2 + (yy / 0.55) ** 2 + ((xx - 0.1) / 0.6) ** 2 < 1
    return torch.from_numpy((img * mask + 0.5 * mask).astype(np.float32))[None, None]


def test_affine_field_of_identity_and_translation():
    shape = (8, 10, 12)
    ident = rotation_theta(0, [0, 0, 0])
    assert prealign.affine_field(ident, shape).abs().max() < 1e-5
    # normalised xyz shift (0.5, 0, 0) is half the grid's half-width along the last axis
    field = prealign.affine_field(rotation_theta(0, [0.5, 0, 0]), shape)
    np.testing.assert_allclose(field[0, :, 3, 4, 5].numpy(), [0, 0, 0.5 * (12 - 1) / 2], atol=1e-5)


def test_voxel_matrix_is_the_linear_part_of_the_field():
    shape = (16, 20, 24)
    theta = rotation_theta(12, [0.1, -0.2, 0.05])
    field = prealign.affine_field(theta, shape)[0]
    M = prealign.voxel_matrix(theta, shape)[0]
    # x + field(x) is affine: its difference quotient along axis j is column j of M
    for j, sl in enumerate([(slice(None), 1, 2, 3), (slice(None), 0, 3, 3), (slice(None), 0, 2, 4)]):
        base = field[(slice(None), 0, 2, 3)] + torch.eye(3)[:, j] * 0  # x = (0, 2, 3)
        step = field[sl] - base + torch.eye(3)[:, j]
        np.testing.assert_allclose(step.numpy(), M[:, j].numpy(), atol=1e-4)


def test_fit_affine_recovers_a_known_rotation_and_translation():
    fixed = blob_image()
    true = rotation_theta(8, [0.08, -0.05, 0.1])
    moving_field = prealign.affine_field(true, fixed.shape[2:])
    # moving such that warp(moving, true_field) ~= fixed: moving is fixed under the inverse
    inv = torch.linalg.inv(torch.cat([true[0], torch.tensor([[0, 0, 0, 1.0]])]))[:3][None]
    moving = warp(fixed, prealign.affine_field(inv, fixed.shape[2:]), padding="zeros")
    theta = prealign.fit_affine(fixed, moving, levels=(2, 1), iterations=(80, 40))
    err = (prealign.affine_field(theta, fixed.shape[2:]) - moving_field).norm(dim=1)
    inside = fixed[:, 0] > 0
    assert err[inside].mean() < 0.35  # voxels, on a 32^3 grid with up to ~3 voxels of motion
    before = moving_field.norm(dim=1)[inside].mean()
    assert before > 1.5


def test_prealigned_field_composes_exactly_with_the_residual():
    # total = field + M r must equal warping with the prealignment, then with r
    fixed = blob_image(seed=1)
    moving = warp(fixed, prealign.affine_field(rotation_theta(-6, [0.05, 0.1, 0]), fixed.shape[2:]))
    field, M = prealign.prealign_field("affine", fixed, moving)
    r = torch.zeros(1, 3, 32, 32, 32)
    r[:, 0] = 0.7
    r[:, 2] = torch.linspace(-1, 1, 32).view(1, 1, 32)
    total = field + torch.einsum("bij,bj...->bi...", M, r)
    expected = compose(field, r)
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4), slice(4, -4))
    torch.testing.assert_close(total[inner], expected[inner], atol=2e-4, rtol=0)


@pytest.mark.parametrize("method", ["centroid", "affine"])
def test_model_with_prealignment_and_zero_backbone_registers_a_moved_image(method):
    class Zero(torch.nn.Module):
        def forward(self, fixed, moving):
            return torch.zeros(fixed.shape[0], 3, *fixed.shape[2:])

    fixed = blob_image(seed=2)
    moving = torch.roll(fixed, shifts=(2, -3, 1), dims=(2, 3, 4))
    model = RegistrationModel(Zero(), prealign=method)
    out = model(fixed, moving)
    before = (moving - fixed).abs().mean()
    assert (out["warped"] - fixed).abs().mean() < 0.3 * before  # interpolation blurs the rest


def test_centroid_prealignment_recovers_a_translation_without_training():
    # an untrained backbone whose output is zero: with prealign="centroid" the model's
    # field is the centroid shift, which registers an integer-translated blob exactly
    class Zero(torch.nn.Module):
        def forward(self, fixed, moving):
            return torch.zeros(fixed.shape[0], 3, *fixed.shape[2:])

    fixed = torch.zeros(1, 1, 24, 24, 24)
    fixed[0, 0, 8:14, 6:12, 9:16] = 1.0
    moving = torch.roll(fixed, shifts=(3, -2, 4), dims=(2, 3, 4))
    model = RegistrationModel(Zero(), prealign="centroid")
    out = model(fixed, moving)
    np.testing.assert_allclose(out["disp"][0, :, 0, 0, 0].numpy(), [3, -2, 4], atol=1e-4)
    torch.testing.assert_close(out["warped"], fixed, atol=1e-4, rtol=0)


def test_unknown_prealignment_is_a_config_error():
    with pytest.raises(ConfigError, match="prealign"):
        RegistrationModel(torch.nn.Identity(), prealign="moments")


def test_clamp_scales_bounds_singular_values_and_keeps_their_vectors():
    rot = rotation_theta(20, [0, 0, 0])[:, :, :3]
    a = rot @ torch.diag(torch.tensor([3.0, 1.0, 0.01]))[None] @ rot.transpose(1, 2)
    out = prealign.clamp_scales(a, 2 / 3, 1.5)
    assert torch.allclose(torch.linalg.svdvals(out)[0], torch.tensor([1.5, 1.0, 2 / 3]), atol=1e-5)
    expected = rot @ torch.diag(torch.tensor([1.5, 1.0, 2 / 3]))[None] @ rot.transpose(1, 2)
    assert torch.allclose(out, expected, atol=1e-5)
    inside = rot @ torch.diag(torch.tensor([1.2, 0.9, 0.8]))[None]
    assert prealign.clamp_scales(inside, 2 / 3, 1.5) is inside


def test_the_scale_bound_leaves_an_ordinary_fit_exactly_as_it_was():
    # a rotated, shifted head: the fit's scalings stay near 1, so the bound (checked every
    # step, applied only beyond it) changes nothing, bit for bit
    fixed = blob_image()
    moving = warp(fixed, prealign.affine_field(rotation_theta(8, [0.1, 0, 0]), (32, 32, 32)))
    bounded = prealign.fit_affine(fixed, moving)
    assert torch.equal(bounded, prealign.fit_affine(fixed, moving, scale_bounds=None))
    sv = torch.linalg.svdvals(bounded[:, :, :3])
    assert sv.min() > 0.9 and sv.max() < 1.1
