"""synth_contrast: contrasts that really vary per image, and nothing else touched (labels,
ground-truth field, the other steps' randomness)."""

import numpy as np
import pytest
import torch

from ddmr_core.data.augment import AugmentationPipeline
from ddmr_core.errors import ConfigError
from ddmr_core.plugins.registry import Registry
from ddmr_core.spatial.fields import one_hot
from ddmr_plugins.augmenters.contrast import SynthContrast
from ddmr_plugins.augmenters.normalize import Normalize
from ddmr_plugins.augmenters.rigid import Rigid
from ddmr_plugins.augmenters.tps import TPS


def phantom(shape=(24, 24, 24), batch=1):
    """Three nested tissues on a zero background, T1-like: 'CSF' 0.3 < 'GM' 0.6 < 'WM' 0.9,
    with labels 1, 2, 3."""
    g = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, n) for n in shape], indexing="ij"))
    r = g.square().sum(0).sqrt()
    lab = torch.zeros(shape, dtype=torch.long)
    lab[r < 0.85] = 1
    lab[r < 0.65] = 2
    lab[(r < 0.4) & (g[0] > -0.3)] = 3
    img = torch.tensor([0.0, 0.3, 0.6, 0.9])[lab]
    return img.expand(batch, 1, *shape).clone(), lab.expand(batch, 1, *shape).clone()


def class_means(img, lab):
    """(B, 4) mean intensity of background, 1, 2, 3 per sample."""
    return torch.stack([torch.stack([img[b, 0][lab[b, 0] == k].mean() for k in range(4)]) for b in range(img.shape[0])])


def state_of(img, segs, batch_index):
    from ddmr_core.data.augment import sample_generators

    return {"fixed": img, "moving": img, "fixed_segs": segs, "moving_segs": segs,
            "generators": sample_generators(0, batch_index)}


def test_is_registered_and_configurable():
    step = Registry().create("augmenters", "synth_contrast", probability=1.0, knots=3)
    assert isinstance(step, SynthContrast) and step.knots == 3


def test_tissue_contrast_varies_and_is_drawn_independently_for_fixed_and_moving():
    img, lab = phantom(batch=32)
    segs = one_hot(lab, [1, 2, 3]).float()
    out = SynthContrast(probability=1.0, max_noise=0.0, max_blur=0.0, max_bias=0.0)(
        state_of(img, segs, range(32)))
    for key in ("fixed", "moving"):
        assert float(out[key].min()) >= 0.0 and float(out[key].max()) <= 1.0 + 1e-6
    mf, mm = class_means(out["fixed"], lab), class_means(out["moving"], lab)
    # the order of white and grey matter flips in some images and not in others (inversions),
    # and grey matter is sometimes the darkest or brightest tissue (non-monotonic maps)
    wm_over_gm = (mf[:, 3] > mf[:, 2]).float().mean()
    assert 0.15 < float(wm_over_gm) < 0.85
    gm_extreme = ((mf[:, 2] > mf[:, 1]) & (mf[:, 2] > mf[:, 3])) | ((mf[:, 2] < mf[:, 1]) & (mf[:, 2] < mf[:, 3]))
    assert 0.1 < float(gm_extreme.float().mean()) < 0.9
    # fixed and moving of a pair get different contrasts: their tissue means disagree
    corr = [float(np.corrcoef(mf[b].numpy(), mm[b].numpy())[0, 1]) for b in range(32)]
    assert min(corr) < 0.0 < max(corr)
    # ... and a sample's contrast depends on its seed only (reproducible)
    again = SynthContrast(probability=1.0, max_noise=0.0, max_blur=0.0, max_bias=0.0)(
        state_of(img, segs, range(32)))
    torch.testing.assert_close(again["moving"], out["moving"], rtol=0, atol=0)


def test_within_a_tissue_intensities_stay_nearly_uniform_without_bias_and_noise():
    # with neither bias, blur nor noise, the map is a function of (intensity, class): one
    # value per tissue, up to the one-voxel smoothing of the class map at boundaries
    img, lab = phantom(shape=(32, 32, 32), batch=4)
    out = SynthContrast(probability=1.0, max_noise=0.0, max_blur=0.0, max_bias=0.0)(
        state_of(img, lab.to(torch.uint8), range(4)))
    core = torch.zeros_like(lab, dtype=torch.bool)
    core[..., 14:18, 14:18, 14:18] = True  # white matter, >= 4 voxels from its boundary
    for b in range(4):
        v = out["fixed"][b, 0][core[b, 0] & (lab[b, 0] == 3)]
        assert float(v.max() - v.min()) < 0.05


def test_labels_and_ground_truth_field_are_untouched_and_other_draws_unchanged():
    img, lab = phantom(shape=(20, 22, 24), batch=2)
    img = img + 0.05  # a non-zero background
    segs = one_hot(lab, [1, 2, 3]).float()
    spacing = torch.tensor([[2.0, 2.0, 2.0], [1.5, 2.0, 2.5]])
    index = torch.tensor([3, 11])
    base = AugmentationPipeline([Normalize(), TPS(max_displacement=4.0), Rigid()], seed=7)
    synth = AugmentationPipeline([Normalize(), SynthContrast(probability=1.0), TPS(max_displacement=4.0), Rigid()],
                                 seed=7)
    a = base(img, segs, spacing=spacing, index=index)
    b = synth(img, segs, spacing=spacing, index=index)
    # the same warps with or without the step: it draws from generators of its own
    torch.testing.assert_close(b["disp_true"], a["disp_true"], rtol=0, atol=0)
    torch.testing.assert_close(b["moving_segs"], a["moving_segs"], rtol=0, atol=0)
    torch.testing.assert_close(b["fixed_segs"], a["fixed_segs"], rtol=0, atol=0)
    assert (b["fixed"] - a["fixed"]).abs().mean() > 0.05  # while the intensities changed
    # probability 0 keeps every image as it was
    keep = AugmentationPipeline([Normalize(), SynthContrast(probability=0.0), TPS(max_displacement=4.0), Rigid()],
                                seed=7)(img, segs, spacing=spacing, index=index)
    torch.testing.assert_close(keep["moving"], a["moving"], rtol=0, atol=0)
    torch.testing.assert_close(keep["fixed"], a["fixed"], rtol=0, atol=0)


def test_probability_is_the_share_of_images_given_a_new_contrast():
    img, lab = phantom(shape=(12, 12, 12), batch=400)
    out = SynthContrast(probability=0.8)(state_of(img, None, range(400)))
    changed = (out["fixed"] - img).flatten(1).abs().amax(1) > 1e-6
    assert 0.72 < float(changed.float().mean()) < 0.88  # 0.8 within 4 binomial sd


def test_bias_field_is_smooth_and_spares_the_background():
    # a uniform ball on a zero background, no blur or noise: inside the ball the only change
    # across voxels is the bias field, smooth (neighbours differ far less than its range);
    # the background stays one level
    img, lab = phantom(shape=(32, 32, 32), batch=8)
    ball = (lab > 0)
    img = ball.float() * 0.5
    out = SynthContrast(probability=1.0, knots=2, max_bias=0.5, max_blur=0.0, max_noise=0.0)(
        state_of(img, None, range(8)))["fixed"]
    core = lab >= 2  # the inner part of the ball, >= 3 voxels from its edge
    varied = 0
    for b in range(8):
        x = out[b, 0]
        inside = torch.where(core[b, 0], x, torch.nan)
        rng = float(torch.nanquantile(inside.flatten(), 0.99) - torch.nanquantile(inside.flatten(), 0.01))
        step = torch.nan_to_num((inside[1:] - inside[:-1]).abs(), 0.0).max()
        if rng > 1e-3:
            varied += 1
            assert float(step) < 0.25 * rng
        near = torch.nn.functional.max_pool3d(ball[b].float()[None], 7, 1, 3)[0, 0] > 0
        far = x[~near]  # >= 3 voxels outside the ball: past the one-voxel soft edge
        assert float(far.max() - far.min()) < 0.03  # one background level (soft edge aside)
    assert varied >= 4  # the bias really varies inside the head


@pytest.mark.parametrize("kwargs", [{"probability": 1.5}, {"knots": 1}, {"max_bias": -0.1}, {"target": "both_"}])
def test_bad_parameters_are_config_errors(kwargs):
    with pytest.raises(ConfigError, match="synth_contrast"):
        SynthContrast(**kwargs)
