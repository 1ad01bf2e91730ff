"""Preprocessing: exact output affines, agreement with SimpleITK and torch, windowing, errors."""

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from ddmr_core.errors import ConfigError, DataError
from ddmr_core.data.preprocess import Preprocess
from ddmr_core.spatial.fields import resize_image
from ddmr_core.spatial.grids import resize_affine


def oblique_affine(spacing=(0.9, 1.3, 2.0), angle=0.4):
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    a = np.eye(4)
    a[:3, :3] = np.diag([-1, -1, 1]) @ rot @ np.diag(spacing)
    a[:3, 3] = (30.0, 12.0, -40.0)
    return a


def smooth_volume(shape, seed=0):
    rng = np.random.default_rng(seed)
    g = np.meshgrid(*[np.linspace(0, 1, n) for n in shape], indexing="ij")
    out = np.zeros(shape)
    for _ in range(3):
        k, p = rng.uniform(1, 3, 3), rng.uniform(0, 6, 3)
        out += np.cos(sum(kk * np.pi * gg + pp for kk, gg, pp in zip(k, g, p)))
    return out.astype(np.float32)


def to_sitk(array, affine):
    """A SimpleITK image of a nibabel-layout array and RAS affine (LPS inside ITK)."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    img.SetSpacing(spacing.tolist())
    img.SetDirection((lps[:3, :3] / spacing).flatten().tolist())
    img.SetOrigin(lps[:3, 3].tolist())
    return img


def sitk_resample(array, affine, out_shape, out_affine):
    ref = to_sitk(np.zeros(out_shape, np.float32), out_affine)
    res = sitk.Resample(to_sitk(array, affine), ref, sitk.Transform(), sitk.sitkLinear, -1000.0)
    return sitk.GetArrayFromImage(res).transpose(2, 1, 0)


def test_resampling_matches_simpleitk_on_an_oblique_grid():
    shape, aff = (30, 24, 14), oblique_affine()
    image = smooth_volume(shape)
    lo, hi = float(image.min()), float(image.max())
    # a window over the input's range makes the intensity step an exactly known linear map
    pre = Preprocess(spacing=1.0, size=(20, 22, 18), antialias=False, window=(lo, hi))
    grid = pre.grid(shape, aff)
    out, _, out_aff = pre.apply(image, aff)
    # an independent resampling of the input onto the output grid (its affine only)
    ref = sitk_resample(image, aff, grid.shape, out_aff)
    inside = ref > -999  # SimpleITK marks points outside the input; we replicate edges there
    assert inside.mean() > 0.7
    ours = out * (hi - lo) + lo  # undo the window
    np.testing.assert_allclose(ours[inside], ref[inside], atol=1e-4 * (hi - lo))


def test_output_grid_is_isotropic_and_keeps_the_centre():
    shape, aff = (30, 24, 14), oblique_affine()
    grid = Preprocess(spacing=1.0, size=None).grid(shape, aff)
    np.testing.assert_allclose(np.linalg.norm(grid.affine[:3, :3], axis=0), 1.0, atol=1e-9)
    assert grid.shape == (27, 31, 28)  # round(N * s) per axis
    centre_in = aff @ np.r_[(np.array(shape) - 1) / 2, 1]
    centre_out = grid.affine @ np.r_[(np.array(grid.shape) - 1) / 2, 1]
    np.testing.assert_allclose(centre_out, centre_in, atol=1e-9)


def test_pure_resize_matches_torch_resize_image_and_resize_affine():
    shape, aff = (12, 16, 10), oblique_affine()
    image = smooth_volume(shape, 1)
    pre = Preprocess(spacing=None, size=(18, 8, 10), antialias=False, percentiles=(0, 100))
    out, _, out_aff = pre.apply(image, aff)
    ref = resize_image(torch.from_numpy(image)[None, None], (18, 8, 10))[0, 0].numpy()
    lo, hi = ref.min(), ref.max()
    np.testing.assert_allclose(out, (ref - lo) / (hi - lo), atol=1e-5)
    np.testing.assert_allclose(out_aff, resize_affine(aff, shape, (18, 8, 10)), atol=1e-12)


def test_a_world_point_stays_put_through_crop_resample_resize():
    """A blob at a known RAS point has its centroid at that point in the output grid."""
    shape, aff = (40, 36, 20), oblique_affine()
    point = aff @ np.array([22.3, 15.6, 9.2, 1.0])
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    world = (aff[:3, :3] @ ijk.T).T + aff[:3, 3]
    d2 = ((world - point[:3]) ** 2).sum(1).reshape(shape)
    image = np.exp(-d2 / (2 * 4.0**2)).astype(np.float32)
    seg = (d2 < 6.0**2).astype(np.uint8)
    pre = Preprocess(spacing=1.0, size=(24, 24, 24), crop_labels=(1,), crop_margin=12.0, percentiles=(0, 100))
    out, out_seg, out_aff = pre.apply(image, aff, seg)
    w = np.clip(out - 0.05, 0, None)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in out.shape], indexing="ij"), 0).reshape(3, -1)
    c_vox = (idx * w.reshape(-1)).sum(1) / w.sum()
    c_world = out_aff[:3, :3] @ c_vox + out_aff[:3, 3]
    np.testing.assert_allclose(c_world, point[:3], atol=0.35)
    assert set(np.unique(out_seg)) == {0, 1} and out_seg.dtype == np.uint8


def test_crop_box_is_the_mask_plus_margin():
    shape = (30, 30, 30)
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    seg = np.zeros(shape, np.uint8)
    seg[10:14, 5:9, 20:22] = 2
    seg[0, 0, 0] = 1  # another label, not cropped around
    pre = Preprocess(spacing=None, size=None, crop_labels=(2,), crop_margin=4.0)
    out, out_seg, out_aff = pre.apply(np.zeros(shape, np.float32), aff, seg)
    # 4 mm margin = 2 voxels of 2 mm: [8, 16) x [3, 11) x [18, 24)
    assert out.shape == (8, 8, 6)
    np.testing.assert_allclose(out_aff[:3, 3], [16.0, 6.0, 36.0])
    assert out_seg.sum() == 2 * seg[seg == 2].size
    # the margin is clipped at the image border
    out2, _, _ = Preprocess(spacing=None, size=None, crop_labels="all", crop_margin=100.0).apply(
        np.zeros(shape, np.float32), aff, seg)
    assert out2.shape == shape


def test_ct_window_maps_hu_to_unit_range():
    image = np.array([-1000, -150, -50, 50, 150, 250, 1000], np.float32).reshape(7, 1, 1).repeat(2, 1).repeat(2, 2)
    out, _, _ = Preprocess(spacing=None, size=None, window=(-150, 250)).apply(image, np.eye(4))
    np.testing.assert_allclose(out[:, 0, 0], [0, 0, 0.25, 0.5, 0.75, 1, 1], atol=1e-6)


def test_percentile_normalisation_clips_outliers():
    image = np.linspace(0, 1, 1000, dtype=np.float32).reshape(10, 10, 10)
    image[0, 0, 0] = 1e6
    out, _, _ = Preprocess(spacing=None, size=None, percentiles=(1, 99)).apply(image, np.eye(4))
    assert out.min() == 0 and out.max() == 1
    assert 0.4 < out[5, 0, 0] < 0.6  # the bulk is not squashed by the outlier


def test_labels_are_nearest_neighbour_and_downsampling_is_antialiased():
    rng = np.random.default_rng(0)
    seg = rng.integers(0, 5, (20, 20, 20)).astype(np.uint8)
    seg[seg == 3] = 9
    image = rng.normal(size=(20, 20, 20)).astype(np.float32)
    pre = Preprocess(spacing=None, size=(7, 9, 11), window=(-6, 6))  # linear: compares stds
    out, out_seg, _ = pre.apply(image, np.eye(4), seg)
    assert set(np.unique(out_seg)) <= {0, 1, 2, 4, 9}
    plain, _, _ = pre.replace(antialias=False).apply(image, np.eye(4), seg)
    assert out.std() < plain.std()  # the Gaussian pre-filter removes aliased noise


def test_dict_round_trip_and_bad_settings():
    pre = Preprocess(spacing=(1, 1, 2), size=(64, 64, 32), crop_labels=(1, 2), crop_margin=5, window=(-100, 300))
    d = pre.to_dict()
    assert d["crop_labels"] == [1, 2] and d["window"] == [-100.0, 300.0]
    assert Preprocess.from_dict(d) == pre
    assert Preprocess.from_dict(d).to_dict() == d
    with pytest.raises(ConfigError, match="unknown preprocess setting"):
        Preprocess.from_dict({"spacing": 1, "zoom": 2})
    with pytest.raises(ConfigError, match="window"):
        Preprocess(window=(100, -100))
    with pytest.raises(ConfigError, match="spacing"):
        Preprocess(spacing=(1, 0, 1))


def test_bad_inputs_name_the_volume():
    pre = Preprocess(spacing=None, size=None, crop_labels=(1,))
    image = np.zeros((8, 8, 8), np.float32)
    with pytest.raises(DataError, match="empty") as err:
        pre.apply(image, np.eye(4), np.zeros((8, 8, 8), np.uint8), name="case7.nii.gz")
    assert "case7.nii.gz" in str(err.value)
    with pytest.raises(DataError, match="needs a segmentation"):
        pre.apply(image, np.eye(4), None, name="case7.nii.gz")
    with pytest.raises(DataError, match="shape"):
        pre.apply(image, np.eye(4), np.ones((8, 8, 7), np.uint8))
    with pytest.raises(DataError, match="3-D"):
        Preprocess().apply(np.zeros((2, 8, 8, 8)), np.eye(4))


def test_foreground_crop_without_label_maps():
    """At inference a recipe that crops around labels crops to the image's foreground:
    the region above a robust threshold (stray hot voxels and small specks beside the
    object do not widen it), with the recipe's margin; label maps are then ignored."""
    shape, aff = (40, 40, 40), np.diag([2.0, 2.0, 2.0, 1.0])
    rng = np.random.default_rng(0)
    image = (0.02 * rng.random(shape)).astype(np.float32)  # background noise
    image[10:25, 12:30, 5:20] = 1.0
    image[12:20, 15:25, 8:15] = 0.3  # darker inside: inside the box anyway
    image[38, 38, 38] = 50.0  # one hot voxel far away
    image[0:2, 0:2, 30:32] = 1.0  # a speck beside the object
    seg = np.zeros(shape, np.uint8)
    seg[2:4, 2:4, 2:4] = 1  # label maps are not what the foreground crop uses
    pre = Preprocess(spacing=None, size=None, crop_labels="all", crop_margin=4.0, percentiles=(0, 100))
    g = pre.grid(shape, aff, None, crop="foreground", image=image)
    # [10, 25) x [12, 30) x [5, 20) plus 4 mm = 2 voxels
    assert g.crop == (slice(8, 27), slice(10, 32), slice(3, 22))
    out, out_seg, out_aff = pre.apply(image, aff, seg, crop="foreground")
    assert out.shape == (19, 22, 19) and out_seg.shape == out.shape
    np.testing.assert_allclose(out_aff[:3, 3], [16.0, 20.0, 6.0])
    assert pre.grid(shape, aff, seg).crop == (slice(0, 6), slice(0, 6), slice(0, 6))  # labels: as in training
    with pytest.raises(DataError, match="needs a segmentation"):
        pre.apply(image, aff, None)
    # a CT recipe: the window is applied first, so air and the scanner's padding are background
    ct = np.full(shape, -1000.0, np.float32)
    ct[:, :, :4] = -3024.0
    ct[6:30, 8:33, 10:36] = 40.0
    ct_pre = Preprocess(spacing=None, size=None, crop_labels=(1,), crop_margin=0.0, window=(-150, 250))
    assert ct_pre.grid(shape, aff, None, crop="foreground", image=ct).crop == (slice(6, 30), slice(8, 33),
                                                                                slice(10, 36))


def test_linear_resampling_matches_scipy_affine_transform():
    # the torch three-pass resampling against scipy's (diagonal matrix, edges replicated),
    # up- and downsampling, with offsets that reach beyond the volume
    import warnings

    from scipy import ndimage

    from ddmr_core.data.preprocess import Grid, _zoom

    rng = np.random.default_rng(0)
    volume = ndimage.gaussian_filter(rng.random((40, 50, 30)), 2).astype(np.float32)
    grid = Grid(None, np.array([1.3, 0.8, 1.05]), np.array([-0.7, 2.2, 0.3]), (33, 66, 31), None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # scipy: a 1-D matrix is a diagonal one
        want = ndimage.affine_transform(volume, grid.scale, grid.offset, output_shape=grid.shape, order=1,
                                        mode="nearest")
    got = _zoom(volume, grid, order=1)
    assert got.dtype == np.float32 and got.shape == grid.shape
    np.testing.assert_allclose(got, want, atol=1e-6)
