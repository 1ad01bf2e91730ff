"""Metrics against independent references (SimpleITK, scikit-image, SciPy, MONAI) and
hand-worked cases."""

import math
import warnings

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage, stats

from ddmr_core.plugins.registry import Registry

SPACING = (1.5, 1.0, 2.0)  # anisotropic: mm conversions must use it per axis
SHAPE = (30, 28, 26)


@pytest.fixture(scope="module")
def metrics():
    reg = Registry(bind_gin=False)
    return {name: reg.get("metrics", name)() for name in reg.names("metrics")}


def _smooth_pair(seed=0):
    rng = np.random.default_rng(seed)
    a = ndimage.gaussian_filter(rng.random((20, 18, 16)), 1.5)
    a = (a - a.min()) / (a.max() - a.min())
    b = np.clip(a + 0.1 * rng.standard_normal(a.shape), 0, 1)
    return a.astype(np.float32), b.astype(np.float32)


def _ball(center, radius):
    g = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    return sum(((gg - c) * s / radius) ** 2 for gg, c, s in zip(g, center, SPACING)) <= 1


def _seg_pair(labels_fixed, labels_warped, labels=None):
    return {
        "fixed_seg": labels_fixed,
        "warped_seg": labels_warped,
        "spacing": np.asarray(SPACING),
        "labels": labels,
    }


def test_all_metrics_registered(metrics):
    assert set(metrics) >= {"ssim", "ncc", "dsc", "hd", "hd95", "tre", "runtime", "folding", "sdlogj", "epe"}
    for name in ("ssim", "ncc", "dsc"):
        assert metrics[name].higher_is_better
    for name in ("hd", "hd95", "tre", "runtime", "folding", "sdlogj", "epe"):
        assert not metrics[name].higher_is_better


# ------------------------------------------------------------------ image similarity
def test_ssim_matches_scikit_image(metrics):
    from skimage.metrics import structural_similarity

    fixed, warped = _smooth_pair()
    ref = structural_similarity(fixed, warped, win_size=7, data_range=1.0)
    assert metrics["ssim"]({"fixed": fixed, "warped": warped}) == pytest.approx(ref, abs=1e-3)
    assert metrics["ssim"]({"fixed": fixed, "warped": fixed}) == pytest.approx(1.0, abs=1e-5)


def test_global_ncc_matches_pearson():
    from ddmr_plugins.metrics.image import ncc

    fixed, warped = _smooth_pair(1)
    ref = stats.pearsonr(fixed.ravel(), warped.ravel())[0]
    assert ncc(win=None)({"fixed": fixed, "warped": warped}) == pytest.approx(ref, abs=1e-6)


def test_local_ncc_matches_scipy_windows(metrics):
    fixed, warped = _smooth_pair(2)
    f, w = fixed.astype(np.float64), warped.astype(np.float64)

    def m(x):  # 9^3 window mean, zero outside the volume
        return ndimage.uniform_filter(x, size=9, mode="constant")

    cross = m(f * w) - m(f) * m(w)
    ref = np.mean(cross**2 / ((m(f * f) - m(f) ** 2) * (m(w * w) - m(w) ** 2) + 1e-8))
    assert metrics["ncc"]({"fixed": fixed, "warped": warped}) == pytest.approx(ref, rel=1e-4)
    # scaling the intensities keeps the local NCC at 1 (an offset would not, at the
    # zero-padded border)
    assert metrics["ncc"]({"fixed": fixed, "warped": 0.5 * fixed}) == pytest.approx(1.0, abs=1e-3)


# ------------------------------------------------------------------ segmentations
def test_dice_hand_worked(metrics):
    fixed = np.zeros((10, 10, 10), np.uint8)
    warped = np.zeros_like(fixed)
    fixed[0:4, 0:5, 0:5] = 1  # 100 voxels
    warped[2:6, 0:5, 0:5] = 1  # 100 voxels, 50 shared -> 2*50/200 = 0.5
    fixed[6:8, 6:8, 6:8] = 2  # label 2: identical -> 1.0
    warped[6:8, 6:8, 6:8] = 2
    out = metrics["dsc"](_seg_pair(fixed, warped, labels=(1, 2, 3)))
    assert out["1"] == pytest.approx(0.5)
    assert out["2"] == pytest.approx(1.0)
    assert math.isnan(out["3"])  # absent from both: not scorable, left out of the mean
    assert out[""] == pytest.approx(0.75)


def _sitk_hd(a, b):
    def img(m):
        im = sitk.GetImageFromArray(m.astype(np.uint8).transpose(2, 1, 0))  # sitk is x-fastest
        im.SetSpacing(SPACING)
        return im

    f = sitk.HausdorffDistanceImageFilter()
    f.Execute(img(a), img(b))
    return f.GetHausdorffDistance()


@pytest.mark.parametrize(
    "c1,r1,c2,r2", [((15, 14, 13), 9, (17, 12, 13), 8), ((12, 14, 13), 7, (18, 15, 11), 10)]
)
def test_hd_matches_simpleitk_and_hd95_matches_monai(metrics, c1, r1, c2, r2):
    from monai.metrics import compute_hausdorff_distance

    a, b = _ball(c1, r1), _ball(c2, r2)
    fixed = a.astype(np.uint8)
    warped = (b * 1).astype(np.uint8)
    pair = _seg_pair(fixed, warped, labels=(1,))
    assert metrics["hd"](pair) == pytest.approx(_sitk_hd(a, b), rel=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref95 = compute_hausdorff_distance(
            torch.from_numpy(b)[None, None].float(), torch.from_numpy(a)[None, None].float(),
            percentile=95, spacing=SPACING,
        ).item()
    assert metrics["hd95"](pair) == pytest.approx(ref95, rel=1e-5)
    assert metrics["hd95"](pair) <= metrics["hd"](pair)


def test_hd_single_voxels_and_mean_over_labels(metrics):
    fixed = np.zeros(SHAPE, np.uint8)
    warped = np.zeros(SHAPE, np.uint8)
    fixed[5, 5, 5] = 1
    warped[8, 5, 9] = 1  # (3 * 1.5, 0, 4 * 2.0) mm apart -> sqrt(4.5^2 + 8^2)
    fixed[20, 20, 20] = 2
    warped[20, 22, 20] = 2  # 2 mm apart
    pair = _seg_pair(fixed, warped)
    d1 = math.hypot(4.5, 8.0)
    assert metrics["hd"](pair) == pytest.approx((d1 + 2.0) / 2)
    assert metrics["hd95"](pair) == pytest.approx((d1 + 2.0) / 2)
    # a label that vanished after warping cannot be scored: NaN, left out of the mean
    warped[warped == 2] = 0
    assert metrics["hd"](pair) == pytest.approx(d1)


def test_tre_hand_worked(metrics):
    fixed = np.zeros(SHAPE, np.uint8)
    fixed[4:10, 4:10, 4:10] = 1
    warped = np.roll(fixed, (2, 0, 1), axis=(0, 1, 2))  # centroid moves (2, 0, 1) voxels
    expected = math.hypot(2 * 1.5, 1 * 2.0)
    assert metrics["tre"](_seg_pair(fixed, warped)) == pytest.approx(expected)
    # cross-check the centroid with SciPy
    from ddmr_core.spatial.similarity import centroid

    np.testing.assert_allclose(centroid(fixed == 1), ndimage.center_of_mass(fixed))


def test_missing_segmentations_give_nan(metrics):
    pair = {"fixed_seg": None, "warped_seg": None, "spacing": SPACING, "labels": (1,)}
    for name in ("dsc", "hd", "hd95", "tre"):
        assert math.isnan(metrics[name](pair))


# ------------------------------------------------------------------ field metrics
def _affine_field(matrix, shape=(12, 10, 8)):
    g = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"))
    return np.einsum("ij,j...->i...", np.asarray(matrix) - np.eye(3), g).astype(np.float32)


def test_folding_and_sdlogj_on_affine_fields(metrics):
    stretch = np.diag([1.2, 0.9, 1.1])
    disp = _affine_field(stretch)
    assert metrics["folding"]({"disp": disp}) == 0.0
    assert metrics["sdlogj"]({"disp": disp}) == pytest.approx(0.0, abs=1e-5)
    mirror = np.diag([-1.0, 1.0, 1.0])  # det -1 everywhere: every voxel folds
    assert metrics["folding"]({"disp": _affine_field(mirror)}) == pytest.approx(100.0)


def test_folding_and_sdlogj_match_numpy_reference(metrics):
    rng = np.random.default_rng(3)
    disp = ndimage.gaussian_filter(rng.standard_normal((3, 14, 12, 10)), (0, 1, 1, 1)) * 4
    grads = np.stack([np.stack(np.gradient(disp[i]), 0) for i in range(3)], 0)  # [i, j] = du_i/dx_j
    jac = np.linalg.det(np.moveaxis(grads, (0, 1), (-2, -1)) + np.eye(3))
    assert 0 < (jac <= 0).mean() < 1  # the field does fold somewhere
    assert metrics["folding"]({"disp": disp}) == pytest.approx(100 * (jac <= 0).mean())
    ref = np.log(np.clip(jac, 1e-9, 1e9)).std()
    assert metrics["sdlogj"]({"disp": disp}) == pytest.approx(ref, rel=1e-4)


def test_epe_in_millimetres(metrics):
    true = np.zeros((3, 6, 5, 4), np.float32)
    disp = true.copy()
    disp[0] += 1.0  # 1 voxel along axis 0 = 1.5 mm
    disp[2, :3] += 1.0  # half of the voxels also 1 voxel along axis 2 = 2 mm
    pair = {"disp": disp, "disp_true": true, "spacing": SPACING}
    expected = 0.5 * 1.5 + 0.5 * math.hypot(1.5, 2.0)
    assert metrics["epe"](pair) == pytest.approx(expected, rel=1e-6)
    assert math.isnan(metrics["epe"]({"disp": disp, "disp_true": None, "spacing": SPACING}))


def test_runtime_passes_through(metrics):
    assert metrics["runtime"]({"runtime": 0.25}) == 0.25
