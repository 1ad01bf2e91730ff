"""ddmr_core.spatial.prealign: global initialisation before the network (hand-made cases)."""


import numpy as np
import pytest
import torch
from scipy import ndimage

from ddmr_core.spatial import prealign
from ddmr_core.errors import ConfigError
from ddmr_core.model.registration_model import RegistrationModel
from ddmr_core.spatial.fields import compose, warp
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
    theta = prealign.fit_affine(fixed, moving, levels=(2, 1), iterations=(10, 5))
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


def test_the_gauss_newton_system_has_the_ncc_and_its_gradient():
    # _ncc_system's NCC and gradient against global_ncc differentiated by autograd
    from ddmr_core.spatial.similarity import global_ncc
    from ddmr_core.spatial.fields import grid_sample

    fixed, moving = blob_image((16, 16, 16), seed=3), blob_image((16, 16, 16), seed=4)
    theta = rotation_theta(5, [0.05, -0.02, 0.03]).double().float()
    theta[0, 2, 2] = 1.04
    coords = torch.nn.functional.affine_grid(torch.eye(3, 4)[None], (1, 1, 16, 16, 16), align_corners=True)
    coords = torch.cat([coords.reshape(-1, 3), torch.ones(16 ** 3, 1)], 1)
    f = fixed.flatten(1) - fixed.mean()
    f = f / f.norm()
    ncc, grad, hess = prealign._ncc_system(f, moving, theta, coords)
    t = theta.clone().requires_grad_(True)
    grid = torch.nn.functional.affine_grid(t, (1, 1, 16, 16, 16), align_corners=True)
    ref = global_ncc(grid_sample(moving, grid, padding_mode="border", align_corners=True), fixed)
    (ref_grad,) = torch.autograd.grad(ref.sum(), t)
    assert float(ncc) == pytest.approx(float(ref.detach()), abs=1e-5)
    torch.testing.assert_close(grad.float(), ref_grad.reshape(1, 12), atol=2e-4, rtol=1e-3)
    assert torch.linalg.eigvalsh(hess).min() > -1e-6  # a Gauss-Newton matrix is positive semi-definite


def test_fit_affine_reaches_the_ncc_maximum_scipy_finds():
    # independent reference: global NCC of scipy.ndimage.affine_transform (linear, edge
    # values repeated as border padding does) maximised by scipy.optimize over the same
    # 12 parameters, converted to ndimage's voxel map input[M i + o]
    from scipy import optimize

    shape = (16, 16, 16)
    fixed = blob_image(shape, seed=5)
    moving = warp(fixed, prealign.affine_field(rotation_theta(-7, [0.06, 0.04, -0.05]), shape))
    fx, mv = fixed[0, 0].double().numpy(), moving[0, 0].double().numpy()
    s = np.array([2.0 / (n - 1) for n in shape])

    def ncc_of(theta):
        a = np.asarray(theta, dtype=float).reshape(3, 4)
        lin, t = a[::-1, :3][:, ::-1], a[::-1, 3]  # array-axis order
        m = lin * s[None, :] / s[:, None]
        o = (t + 1 - lin.sum(1)) / s
        w = ndimage.affine_transform(mv, m, offset=o, order=1, mode="nearest")
        return np.corrcoef(w.ravel(), fx.ravel())[0, 1]

    start = np.eye(3, 4).ravel()
    ref = optimize.minimize(lambda p: -ncc_of(p), start, method="Powell",
                            options={"xtol": 1e-5, "ftol": 1e-10, "maxfev": 20000})
    theta = prealign.fit_affine(fixed, moving, levels=(2, 1), iterations=(20, 20))
    assert ncc_of(theta[0].numpy().ravel()) >= -ref.fun - 1e-5
    assert -ref.fun > ncc_of(start) + 0.02  # the motion is not a trivial one
    # the same map: fields within a tenth of a voxel inside the head
    ours = prealign.affine_field(theta, shape)
    theirs = prealign.affine_field(torch.tensor(ref.x, dtype=torch.float32).view(1, 3, 4), shape)
    inside = fixed[:, 0] > 0
    assert (ours - theirs).norm(dim=1)[inside].mean() < 0.1


def test_fit_affine_of_a_blank_pair_is_the_identity():
    # a constant image has no gradient: the Gauss-Newton system is all zeros and the fit
    # must neither raise nor move
    blank = torch.zeros(1, 1, 16, 16, 16)
    theta = prealign.fit_affine(blank, blank.clone())
    torch.testing.assert_close(theta, torch.eye(3, 4)[None])


# ------------------------------------------------- pairs of different contrasts
def _template_2mm():
    """The MNI T1 template cropped to the brain and averaged to 2 mm voxels, and its brain
    mask: a real head outline and real tissue contrast."""
    from ddmr_plugins.datasets.mni_brain import load_template

    t1, labels, _ = load_template()
    idx = np.argwhere(labels > 0)
    lo, hi = np.maximum(idx.min(0) - 6, 0), idx.max(0) + 7
    crop = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
    img = torch.from_numpy(np.ascontiguousarray(t1[crop]))[None, None]
    brain = torch.from_numpy((labels[crop] > 0).astype(np.float32))[None, None]
    pool = torch.nn.functional.avg_pool3d
    return pool(img, 2), pool(brain, 2)[0, 0] > 0.5


def _rigid_pull_field(shape, degrees, axis, shift_vox):
    """Pull field (voxels) of ``x -> R (x - c) + c + t`` about the grid's centre ``c``, and R."""
    import math

    a = math.radians(degrees)
    i, j = [(1, 2), (0, 2), (0, 1)][axis]
    R = torch.eye(3)
    R[i, i] = R[j, j] = math.cos(a)
    R[i, j], R[j, i] = -math.sin(a), math.sin(a)
    x = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij"))
    c = torch.tensor([(n - 1) / 2 for n in shape]).view(3, 1, 1, 1)
    y = torch.einsum("ij,j...->i...", R, x - c) + c + torch.tensor(shift_vox, dtype=torch.float32).view(3, 1, 1, 1)
    return (y - x)[None], R


@pytest.mark.parametrize("background", ["dark", "bright"])
def test_affine_mi_recovers_a_rigid_motion_of_an_inverted_contrast_image(background):
    # moving = the 2 mm template with its contrast inverted (white matter dark, CSF bright)
    # and moved by 8 degrees and 11 mm: the MI start recovers the motion within 1 mm and
    # 1 degree, where the NCC start, which assumes one contrast, is far off
    fixed, brain = _template_2mm()
    shape = tuple(fixed.shape[2:])
    spacing = 2.0
    true, R = _rigid_pull_field(shape, 8.0, 1, [3.0, -3.5, 2.5])  # (6, -7, 5) mm
    inverted = torch.where(fixed > 0, 1.0 - fixed, torch.zeros_like(fixed)) if background == "dark" else 1.0 - fixed
    # fixed(x) = moving(x + true(x)): the moving image is the source pushed by that map
    inv, _ = _rigid_pull_field(shape, -8.0, 1, [0.0, 0.0, 0.0])
    inv = inv + torch.einsum("ij,j...->i...", R.T, -torch.tensor([3.0, -3.5, 2.5]).view(3, 1, 1, 1))[None]
    moving = warp(inverted, inv, padding="border")
    field, M = prealign.prealign_field("affine_mi", fixed, moving)
    err_mm = ((field - true)[0].norm(dim=0)[brain] * spacing)
    assert float(err_mm.mean()) < 1.0, float(err_mm.mean())
    u, _, vh = torch.linalg.svd(M[0].double())
    rot = (u @ vh).float()  # the rotation closest to the fitted linear part
    angle = torch.rad2deg(torch.arccos(((torch.trace(rot.T @ R) - 1) / 2).clamp(-1, 1)))
    assert float(angle) < 1.0, float(angle)
    ncc_field, _ = prealign.prealign_field("affine", fixed, moving)
    assert float(((ncc_field - true)[0].norm(dim=0)[brain] * spacing).mean()) > 3.0


def test_foreground_mask_is_the_same_for_an_image_and_its_inversion():
    img = blob_image(seed=4)
    mask = prealign.foreground_mask(img)
    torch.testing.assert_close(prealign.foreground_mask(1 - img), mask)
    torch.testing.assert_close(mask, (img > 0.05).float())  # the blob, on its zero background


def test_foreground_mask_of_a_small_object_on_a_flat_background():
    """An object of fewer voxels than the robust range leaves out (0.5 % per side) makes the
    two percentiles meet; the mask then uses the whole range: the object, without the faint
    stray voxels beside it. The other image of the batch keeps its own robust range."""
    flat = torch.zeros(1, 1, 24, 24, 24)
    flat[0, 0, 10:12, 11:13, 9:11] = 3.0  # 8 voxels of 13824
    obj = (flat > 0).float()
    flat[0, 0, 2, 3:8, 20] = 0.2  # faint stray voxels: below a tenth of the whole range
    other = blob_image(seed=4)
    other = torch.nn.functional.interpolate(other, size=(24, 24, 24), mode="trilinear")
    mask = prealign.foreground_mask(torch.cat([flat, other]))
    torch.testing.assert_close(mask[:1], obj)
    torch.testing.assert_close(mask[1:], prealign.foreground_mask(other))
