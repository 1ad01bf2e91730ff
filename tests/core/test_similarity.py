"""ddmr_core.spatial.similarity, the one NCC and Dice, against NumPy and SciPy references."""

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from ddmr_core.spatial.similarity import box_mean, centroid, centroid_distance, dice, global_ncc, local_ncc


def _volume(shape, seed, sigma=1.5):
    return ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal(shape), sigma)


def test_global_ncc_is_pearson_per_sample():
    a = np.stack([_volume((2, 9, 10, 11), s) for s in (0, 1)])  # (B, C, ...)
    b = 0.5 * a + np.stack([_volume((2, 9, 10, 11), s) for s in (2, 3)])
    got = global_ncc(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    expected = [np.corrcoef(a[i].ravel(), b[i].ravel())[0, 1] for i in range(2)]
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    # invariant to a positive affine intensity map, sign flips under a negative one
    ta = torch.from_numpy(a)
    np.testing.assert_allclose(global_ncc(ta, 3 * ta + 1).numpy(), 1.0, rtol=1e-12)
    np.testing.assert_allclose(global_ncc(ta, -ta).numpy(), -1.0, rtol=1e-12)


def test_global_ncc_of_a_constant_image_is_zero_or_undefined():
    a = torch.from_numpy(_volume((1, 6, 6, 6), 0))
    const = torch.full_like(a, 0.25)  # exactly constant after centring
    assert global_ncc(a, const).item() == 0.0  # floored: what optimisers and losses want
    assert math.isnan(global_ncc(a, const, eps=0.0).item())  # what metrics report


@pytest.mark.parametrize("clip", [False, True])
def test_box_mean_matches_scipy_uniform_filter(clip):
    x = _volume((7, 8, 9), 4)
    got = box_mean(torch.from_numpy(x)[None, None], 5, clip=clip)[0, 0].numpy()
    summed = ndimage.uniform_filter(x, 5, mode="constant", cval=0.0)
    if clip:  # the mean over the part of the box inside the volume
        summed = summed / ndimage.uniform_filter(np.ones_like(x), 5, mode="constant", cval=0.0)
    np.testing.assert_allclose(got, summed, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="odd"):
        box_mean(torch.zeros(1, 1, 4, 4, 4), 4)


def test_local_ncc_by_hand_on_identical_and_unrelated_images():
    a = torch.from_numpy(_volume((1, 1, 16, 16, 16), 5))
    assert local_ncc(a, a, 5, eps=0.0).item() == pytest.approx(1.0, abs=1e-9)
    b = torch.from_numpy(_volume((1, 1, 16, 16, 16), 6))
    assert 0.0 <= local_ncc(a, b, 5).item() < 0.5


def test_dice_by_hand_and_per_label():
    a = np.zeros((6, 6, 6), bool)
    b = np.zeros((6, 6, 6), bool)
    a[:2], b[1:3] = True, True  # 72 voxels each, 36 shared
    assert dice(a, b).item() == pytest.approx(0.5)
    assert dice(a, a).item() == 1.0 and dice(a, ~a).item() == 0.0
    assert math.isnan(dice(np.zeros(3, bool), np.zeros(3, bool)).item())  # nothing to score
    # batched over (B, L): one value per sample and label, NaN where both are empty
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    stack_a = torch.stack([torch.stack([ta, ta, torch.zeros_like(ta)])])
    stack_b = torch.stack([torch.stack([tb, ta, torch.zeros_like(ta)])])
    got = dice(stack_a, stack_b, dims=(2, 3, 4))
    assert got.shape == (1, 3) and got[0, 0] == pytest.approx(0.5) and got[0, 1] == 1.0 and torch.isnan(got[0, 2])
    # the axes may come as any iterable (training's validation passes a range)
    torch.testing.assert_close(dice(stack_a, stack_b, dims=range(2, 5)), got, equal_nan=True)
    assert dice(a, b, dims=range(3)).item() == pytest.approx(0.5)


def test_centroids_and_their_distance_through_an_affine():
    a = np.zeros((12, 12, 12), bool)
    a[2:6, 3:5, 1:9] = True
    b = np.roll(a, (3, 0, -1), axis=(0, 1, 2))
    np.testing.assert_allclose(centroid(a), ndimage.center_of_mass(a))
    assert math.isnan(centroid(np.zeros((3, 3, 3), bool))[0])
    spacing = np.diag([2.0, 1.0, 0.5])
    assert centroid_distance(a, b, spacing) == pytest.approx(math.hypot(3 * 2.0, 1 * 0.5))
    # an oblique affine: distances are those of the world points (translation cancels)
    angle = 0.3
    rot = np.array([[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3], affine[:3, 3] = rot @ spacing, (10.0, -4.0, 7.0)
    world = lambda m: affine[:3, :3] @ centroid(m) + affine[:3, 3]  # noqa: E731
    assert centroid_distance(a, b, affine) == pytest.approx(np.linalg.norm(world(a) - world(b)))
    assert math.isnan(centroid_distance(a, np.zeros_like(a), affine))


# ------------------------------------------------------------ mutual information
def test_mutual_information_on_bin_centres_is_scikit_learns_histogram_mi():
    # intensities exactly on bin centres: the linear Parzen window puts each voxel in one
    # bin, so the estimate is the plain histogram MI that scikit-learn computes
    from sklearn.metrics import mutual_info_score

    from ddmr_core.spatial.similarity import mutual_information

    rng = np.random.default_rng(0)
    bins = 16
    a = rng.integers(0, bins, (12, 13, 14))
    b = np.where(rng.random(a.shape) < 0.7, (a * 5) % bins, rng.integers(0, bins, a.shape))  # a non-monotonic relation
    got = mutual_information(torch.tensor(a / (bins - 1), dtype=torch.float64)[None],
                             torch.tensor(b / (bins - 1), dtype=torch.float64)[None], bins)
    assert float(got) == pytest.approx(mutual_info_score(a.ravel(), b.ravel()), rel=1e-6)


def test_mutual_information_is_contrast_free_and_agrees_with_monai_on_the_optimum():
    from monai.losses import GlobalMutualInformationLoss
    from scipy.ndimage import gaussian_filter

    from ddmr_core.spatial.similarity import mutual_information

    rng = np.random.default_rng(1)
    x = gaussian_filter(rng.random((28, 28, 28)), 2.0)
    x = torch.tensor((x - x.min()) / (x.max() - x.min()), dtype=torch.float32)[None, None]
    mi = lambda a, b: float(mutual_information(a, b, 32)[0])  # noqa: E731
    # invariant to an inversion (a one-to-one remap); normalised, 1 for both
    assert mi(x, 1 - x) == pytest.approx(mi(x, x), rel=1e-5)
    assert mi(x, x) > 5 * mi(x, torch.rand_like(x))
    for other in (x, 1 - x):
        assert float(mutual_information(x, other, 32, normalised=True)[0]) == pytest.approx(1.0, abs=1e-5)
    # scanning a shift of an inverted copy, ddmr's MI and MONAI's Gaussian-window MI both
    # peak at the true shift (their values differ: other Parzen windows)
    monai_mi = GlobalMutualInformationLoss(num_bins=32)
    moved = torch.roll(1 - x, 3, dims=2)
    ours, theirs = [], []
    for s in range(-1, 7):
        back = torch.roll(moved, -s, dims=2)[:, :, 8:20]
        ours.append(mi(back, x[:, :, 8:20]))
        theirs.append(-float(monai_mi(back, x[:, :, 8:20])))
    assert int(np.argmax(ours)) == int(np.argmax(theirs)) == 4  # s = 3
    # differentiable: the gradient points the moving image towards the fixed one's
    m = (0.5 * x + 0.25).clone().requires_grad_(True)
    (-mutual_information(m, 1 - x, 32).sum()).backward()
    assert torch.isfinite(m.grad).all() and float(m.grad.abs().sum()) > 0
