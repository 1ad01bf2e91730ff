"""ddmr_core.spatial.refine: instance optimisation of a predicted field."""

import numpy as np
import torch
from scipy import ndimage

from ddmr_core.model.registration_model import RegistrationModel
from ddmr_core.spatial.similarity import global_ncc
from ddmr_core.spatial.refine import refine_field
from ddmr_core.spatial.fields import resize_field, warp
from ddmr_plugins.losses.image import ncc


def smooth_pair(shape=(32, 32, 32), amplitude=1.5):
    rng = np.random.default_rng(3)
    fixed = ndimage.gaussian_filter(rng.random(shape), 2.0)
    fixed = (fixed - fixed.min()) / (fixed.max() - fixed.min())
    comps = [ndimage.gaussian_filter(rng.standard_normal(shape), 6.0) for _ in range(3)]
    s = np.stack([c / np.abs(c).max() * amplitude for c in comps]).astype(np.float32)
    fixed = torch.from_numpy(fixed.astype(np.float32))[None, None]
    s = torch.from_numpy(s)[None]
    # moving(x + u(x)) = fixed(x) for u ~ -s(x - s): the moving image is fixed pushed by s
    moving = warp(fixed, -s, padding="border")
    return fixed, moving, s


class Zero(torch.nn.Module):
    def forward(self, fixed, moving):
        return torch.zeros(fixed.shape[0], 3, *fixed.shape[2:])


def test_refine_registers_a_smooth_deformation_from_zero():
    fixed, moving, s = smooth_pair()
    zero = torch.zeros_like(s)
    out = refine_field(fixed, moving, zero, iterations=60, lr=0.1)
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4), slice(4, -4))
    before = global_ncc(moving, fixed).item()
    after = global_ncc(warp(moving, out, padding="border"), fixed).item()
    assert after > before + 0.5 * (1 - before)  # at least half the gap to a perfect match closed
    # the field itself moves towards the truth (~s for this small, smooth deformation)
    err0 = (s - zero)[inner].norm(dim=1).mean()
    err1 = (s - out)[inner].norm(dim=1).mean()
    assert err1 < 0.6 * err0


def test_zero_iterations_return_the_field_unchanged():
    fixed, moving, s = smooth_pair()
    assert refine_field(fixed, moving, s, iterations=0) is s


def test_model_refines_in_evaluation_only_and_never_in_its_losses():
    fixed, moving, _ = smooth_pair()
    model = RegistrationModel(Zero(), losses={"ncc": ncc()}, refine_iterations=5)
    model.train()
    assert model(fixed, moving)["disp"].abs().max() == 0
    model.eval()
    with torch.inference_mode():  # as in evaluate/register
        assert model(fixed, moving)["disp"].abs().max() > 0
    _, _, out = model.compute_loss({"fixed": fixed, "moving": moving})
    assert out["disp"].abs().max() == 0  # validation judges the network, unrefined


def test_coarse_field_at_points_equals_resize_field():
    from ddmr_core.spatial.refine import _axis_weights, _coarse_at

    c = torch.randn(2, 3, 5, 6, 7)
    shape = (12, 13, 16)
    full = resize_field(c, shape)
    for offset, stride in (((1, 0, 1), 2), ((0, 2, 1), 3)):
        sub = (Ellipsis,) + tuple(slice(o, None, stride) for o in offset)
        weights = [_axis_weights(n, k, o, stride, c.device, c.dtype) for n, k, o in zip(shape, c.shape[2:], offset)]
        ratio = torch.tensor([n / k for n, k in zip(shape, c.shape[2:])])
        torch.testing.assert_close(_coarse_at(c, weights, ratio), full[sub], atol=1e-5, rtol=0)


def test_sub_lattice_steps_register_like_dense_steps():
    # step_voxels of 1/8 of the grid gives stride 2 (one voxel in 8 per step); the result must
    # still close most of the gap, and stay close to the dense refinement
    fixed, moving, s = smooth_pair()
    zero = torch.zeros_like(s)
    dense = refine_field(fixed, moving, zero, iterations=60, lr=0.1)
    sparse = refine_field(fixed, moving, zero, iterations=60, lr=0.1, step_voxels=16**3)
    before = global_ncc(moving, fixed).item()
    after = global_ncc(warp(moving, sparse, padding="border"), fixed).item()
    assert after > before + 0.5 * (1 - before)
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4), slice(4, -4))
    assert (sparse - dense)[inner].norm(dim=1).mean() < 0.25 * s[inner].norm(dim=1).mean()


def test_annealed_steps_end_closer_to_the_true_field():
    # Adam moves each node by about lr a step whatever the gradient: at a constant step the
    # correction ends jittering about the optimum; annealed to 0, the last steps settle it
    fixed, moving, s = smooth_pair()
    zero = torch.zeros_like(s)
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4), slice(4, -4))
    for lr, iterations in ((0.2, 60), (0.3, 20)):
        errors = [(s - refine_field(fixed, moving, zero, iterations=iterations, lr=lr, step_voxels=16**3,
                                    anneal=anneal))[inner].norm(dim=1).mean().item()
                  for anneal in (False, True)]
        assert errors[1] < 0.92 * errors[0], (lr, iterations, errors)


def test_local_normalise_matches_a_direct_box_filter():
    from ddmr_core.spatial.refine import local_normalise

    img = torch.rand(1, 1, 9, 10, 11)
    box = lambda t: torch.nn.functional.avg_pool3d(t, 5, stride=1, padding=2, count_include_pad=False)  # noqa: E731
    mean = box(img)
    std = (box(img * img) - mean * mean).clamp_min(0).sqrt()
    torch.testing.assert_close(local_normalise(img, 5), (img - mean) / (std + 0.05), atol=1e-4, rtol=0)
    # and by hand at a corner voxel: the box is clipped to the 3 x 3 x 3 voxels inside
    corner = img[0, 0, :3, :3, :3]
    expected = (img[0, 0, 0, 0, 0] - corner.mean()) / (corner.std(unbiased=False) + 0.05)
    torch.testing.assert_close(local_normalise(img, 5)[0, 0, 0, 0, 0], expected, atol=1e-4, rtol=0)


def test_negative_refine_iterations_is_a_config_error():
    import pytest

    from ddmr_core.errors import ConfigError

    with pytest.raises(ConfigError, match="refine_iterations"):
        RegistrationModel(Zero(), refine_iterations=-1)


def test_sub_lattice_stride_by_hand():
    from ddmr_core.spatial.refine import sub_lattice_stride

    assert sub_lattice_stride((64, 64, 64), 64**3) == 1
    assert sub_lattice_stride((128, 128, 128), 64**3) == 2  # 64^3 voxels exactly
    # 182 x 218 x 182 (the paper's brain grid): 7221032 / 262144 = 27.55 -> cube root 3.02
    assert sub_lattice_stride((182, 218, 182), 64**3) == 3
    # 100^3: ratio 3.81 -> cube root 1.56 -> 2; 80^3: 1.95 -> 1.25 -> 1 (dense)
    assert sub_lattice_stride((100, 100, 100), 64**3) == 2
    assert sub_lattice_stride((80, 80, 80), 64**3) == 1
    assert sub_lattice_stride((8, 8, 8), 64**3) == 1


def test_predict_on_grid_refines_on_the_images_grid(monkeypatch):
    # the network works on its own (smaller) grid; the refinement sees the images' grid
    import ddmr_core.model.registration_model as model_module

    seen = []

    def spy(fixed, moving, disp, iterations):
        seen.append((tuple(fixed.shape[2:]), tuple(disp.shape[2:]), iterations))
        return disp

    monkeypatch.setattr(model_module, "refine_field", spy)
    fixed, moving, _ = smooth_pair()
    model = RegistrationModel(Zero(), refine_iterations=3).eval()
    with torch.inference_mode():
        disp = model.predict_on_grid(fixed, moving, (16, 16, 16))
    assert disp.shape == (1, 3, 32, 32, 32)
    assert seen == [((32, 32, 32), (32, 32, 32), 3)]
    seen.clear()
    model.predict_on_grid(fixed, moving, (16, 16, 16), refine=False)
    assert seen == []


def test_adam_matches_torch_optim_adam():
    """ddmr_core.spatial.optim.Adam (used at inference, where torch.optim's import costs more than
    the optimisation) takes PyTorch's steps on the same gradients."""
    from ddmr_core.spatial.optim import Adam

    torch.manual_seed(0)
    target = torch.randn(4, 5)
    start = torch.randn(4, 5)
    ours, ref = start.clone().requires_grad_(), start.clone().requires_grad_()
    a, b = Adam([ours], lr=0.05), torch.optim.Adam([ref], lr=0.05)
    for _ in range(25):
        for p, opt in ((ours, a), (ref, b)):
            opt.zero_grad()
            ((p - target) ** 4).sum().backward()
            opt.step()
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    assert (ours - target).abs().max() < (start - target).abs().max()  # it descended
