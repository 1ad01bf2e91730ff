"""abdomen_phantom: a SYNTHETIC CT in Hounsfield units with anatomy where it belongs."""

import numpy as np
import pytest

from ddmr_plugins.datasets import abdomen_phantom as ap

COARSE = dict(spacing=(4.0, 4.0, 5.0), fov_mm=(380.0, 280.0, 240.0))


@pytest.fixture(scope="module")
def patient():
    return ap.make_patient((0, 3), noise_hu=0.0, **COARSE)


def world(affine, mask):
    idx = np.argwhere(mask)
    return idx @ affine[:3, :3].T + affine[:3, 3]


def test_hounsfield_units_of_tissues(patient):
    hu, labels, _ = patient
    assert hu.min() == -1000  # air outside the body (no noise here)
    liver = labels == ap.LIVER
    assert 85 <= np.median(hu[liver]) <= 120  # portal-venous liver parenchyma
    assert np.median(hu[labels == ap.VESSELS]) > np.median(hu[liver]) + 20  # contrast-filled vessels
    assert np.median(hu[labels == ap.VERTEBRAE]) >= 200  # bone
    assert np.median(hu[labels == ap.AORTA]) >= 180
    assert np.any(np.abs(hu + 100) < 1)  # subcutaneous fat at -100 HU


def test_anatomy_sits_on_the_right_side(patient):
    _, labels, affine = patient
    # RAS: the liver is on the patient's right (+x), the spleen on the left, the spine posterior
    assert world(affine, labels == ap.LIVER)[:, 0].mean() > 20
    assert world(affine, labels == ap.SPLEEN)[:, 0].mean() < -40
    spine_y = world(affine, labels == ap.VERTEBRAE)[:, 1].mean()
    assert spine_y < world(affine, labels == ap.LIVER)[:, 1].mean()
    assert spine_y < world(affine, labels == ap.AORTA)[:, 1].mean()
    assert (labels == ap.KIDNEYS).any() and (labels == ap.VESSELS).any()
    # radiological storage: axis 0 runs towards the patient's left, axis 1 towards posterior
    assert affine[0, 0] == -4.0 and affine[1, 1] == -4.0 and affine[2, 2] == 5.0


def test_vessels_lie_inside_the_liver(patient):
    _, labels, _ = patient
    from scipy import ndimage

    vessels = labels == ap.VESSELS
    liver = np.isin(labels, (ap.LIVER, ap.LESIONS))
    lo, hi = np.argwhere(liver).min(0), np.argwhere(liver).max(0)
    idx = np.argwhere(vessels)
    assert (idx >= lo).all() and (idx <= hi).all()
    # nearly every vessel voxel touches liver parenchyma (they branch inside the organ)
    touching = ndimage.binary_dilation(liver)[vessels]
    assert touching.mean() > 0.9


def test_patients_vary_and_are_reproducible():
    a = ap.make_patient((0, 1), **COARSE)
    b = ap.make_patient((0, 1), **COARSE)
    c = ap.make_patient((0, 2), **COARSE)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    liver_a, liver_c = (a[1] == ap.LIVER).sum(), (c[1] == ap.LIVER).sum()
    assert liver_a != liver_c  # per-patient shape variation


def test_noise_level_matches_the_request():
    clean, _, _ = ap.make_patient((0, 5), noise_hu=0.0, **COARSE)
    noisy, _, _ = ap.make_patient((0, 5), noise_hu=20.0, **COARSE)
    assert abs(float((noisy - clean).std()) - 20.0) < 1.0


def test_dataset_defaults_follow_oslo_comet_and_crop_the_liver():
    ds = ap.AbdomenPhantomDataset(size=(16, 16, 16), **COARSE)
    assert [len(ds.split(s)) for s in ("train", "validation", "test")] == [41, 8, 11]
    assert ds.labels == (1, 2)
    assert ds.preprocess["crop_labels"] == [1, 2] and ds.preprocess["window"] == [-150.0, 250.0]
    s = ds.split("test")[0]
    assert s["image"].shape == (1, 16, 16, 16) and s["seg"].dtype.is_floating_point is False
    seg = s["seg"][0].numpy()
    assert set(np.unique(seg)) <= {0, 1, 2} and (seg == 1).mean() > 0.2  # cropped around the liver
    assert 0.0 <= float(s["image"].min()) and float(s["image"].max()) <= 1.0
    again = ap.AbdomenPhantomDataset(size=(16, 16, 16), **COARSE)
    assert again.split_names("test") == ds.split_names("test")  # seeded split


def test_all_labels_option():
    ds = ap.AbdomenPhantomDataset(patients=3, splits=(1, 1, 1), all_labels=True, size=(12, 12, 12), **COARSE)
    assert ds.labels == (1, 2, 3, 4, 5, 6, 7)
    _, seg, _ = ds.load_raw(0)
    assert {1, 2, 3, 4, 5, 6} <= set(np.unique(seg).tolist())
