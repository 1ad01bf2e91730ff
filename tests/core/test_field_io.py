"""Field files: the ITK/ANTs NIfTI must mean the same warp to SimpleITK and ANTs as
``ddmr_core.spatial.fields.warp`` means to us, on an oblique, anisotropic grid."""

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from scipy.spatial.transform import Rotation

from ddmr_core.errors import DataError
from ddmr_core.data.field_io import (
    INTENT_VECTOR,
    load_field_itk,
    load_field_npz,
    save_field_itk,
    save_field_npz,
)
from ddmr_core.spatial.fields import warp

SHAPE = (20, 24, 16)


def oblique_affine():
    """Rotated 20/-10/15 degrees, spacing (0.8, 1.2, 2.0) mm, origin off zero: a
    non-diagonal voxel->RAS affine where any axis/sign/unit mix-up shows."""
    rot = Rotation.from_euler("xyz", [20, -10, 15], degrees=True).as_matrix()
    a = np.eye(4)
    a[:3, :3] = rot @ np.diag([0.8, 1.2, 2.0])
    a[:3, 3] = [-12.0, 30.0, 5.0]
    return a


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    d = tmp_path_factory.mktemp("field")
    rng = np.random.default_rng(0)
    affine = oblique_affine()
    g = np.meshgrid(*[np.linspace(0, 1, n) for n in SHAPE], indexing="ij")
    moving = (np.sin(3 * g[0]) * np.cos(2 * g[1]) + g[2] ** 2 + 0.5 * np.sin(5 * g[0] * g[2])).astype(np.float32)
    # smooth random field of a few voxels, different along each axis
    disp = np.stack([gaussian_filter(rng.normal(size=SHAPE), 4) * 40 for _ in range(3)]).astype(np.float32)
    assert 1.0 < np.abs(disp).max() < 8.0
    nib.save(nib.Nifti1Image(moving, affine), str(d / "moving.nii.gz"))
    save_field_itk(d / "field.nii.gz", disp, affine)
    ours = warp(torch.from_numpy(moving)[None, None], torch.from_numpy(disp)[None], padding="zeros")[0, 0].numpy()
    # inside the field of view: voxels whose sample point lies inside the moving grid
    pts = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")) + disp
    inside = np.ones(SHAPE, bool)
    for i, n in enumerate(SHAPE):
        inside &= (pts[i] >= 0) & (pts[i] <= n - 1)
    assert inside.mean() > 0.5
    return dict(dir=d, affine=affine, moving=moving, disp=disp, ours=ours, inside=inside)


def _sitk_warp(moving_path, field_path):
    import SimpleITK as sitk

    moving = sitk.ReadImage(str(moving_path), sitk.sitkFloat64)
    field = sitk.ReadImage(str(field_path), sitk.sitkVectorFloat64)
    tx = sitk.DisplacementFieldTransform(field)
    out = sitk.Resample(moving, moving, tx, sitk.sitkLinear, 0.0)
    return sitk.GetArrayFromImage(out).transpose(2, 1, 0)  # sitk arrays are (z, y, x)


def _corr(a, b, mask):
    return np.corrcoef(a[mask].ravel(), b[mask].ravel())[0, 1]


def test_file_layout_and_header(case):
    img = nib.load(str(case["dir"] / "field.nii.gz"))
    assert img.shape == SHAPE + (1, 3)
    assert img.get_data_dtype() == np.float32
    assert int(img.header["intent_code"]) == INTENT_VECTOR
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
    np.testing.assert_allclose(img.get_sform(), case["affine"], atol=1e-5)
    np.testing.assert_allclose(img.get_qform(), case["affine"], atol=1e-5)


def test_vectors_are_lps_millimetres(tmp_path):
    # a uniform step of one voxel along array axis 1 moves by column 1 of the affine
    # (RAS mm); in LPS the first two coordinates change sign.
    affine = oblique_affine()
    disp = np.zeros((3,) + SHAPE, np.float32)
    disp[1] = 1.0
    save_field_itk(tmp_path / "f.nii", disp, affine)
    vec = np.asarray(nib.load(str(tmp_path / "f.nii")).dataobj)[3, 4, 5, 0]
    expected = affine[:3, 1] * np.array([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(vec, expected, atol=1e-6)
    assert np.isclose(np.linalg.norm(vec), 1.2, atol=1e-6)  # the spacing of axis 1


def test_itk_round_trip(case):
    disp, affine = load_field_itk(case["dir"] / "field.nii.gz")
    np.testing.assert_allclose(disp, case["disp"], atol=1e-5)
    np.testing.assert_allclose(affine, case["affine"], atol=1e-5)


def test_simpleitk_applies_field_like_ddmr(case):
    out = _sitk_warp(case["dir"] / "moving.nii.gz", case["dir"] / "field.nii.gz")
    assert _corr(out, case["ours"], case["inside"]) >= 0.999
    np.testing.assert_allclose(out[case["inside"]], case["ours"][case["inside"]], atol=1e-4)


def test_wrong_convention_is_detected(case, tmp_path):
    # Sanity check of the test itself: vectors stored in RAS (no LPS flip) must not
    # pass, or the SimpleITK comparison above could not catch a sign error.
    img = nib.load(str(case["dir"] / "field.nii.gz"))
    data = np.asarray(img.dataobj).copy()
    data[..., :2] *= -1
    bad = nib.Nifti1Image(data, img.affine, img.header)
    nib.save(bad, str(tmp_path / "ras.nii.gz"))
    out = _sitk_warp(case["dir"] / "moving.nii.gz", tmp_path / "ras.nii.gz")
    assert np.abs(out - case["ours"])[case["inside"]].max() > 0.05


def test_ants_applies_field_like_ddmr(case):
    ants = pytest.importorskip("ants")
    fixed = ants.image_read(str(case["dir"] / "moving.nii.gz"))  # fixed grid = moving grid here
    moving = ants.image_read(str(case["dir"] / "moving.nii.gz"))
    out = ants.apply_transforms(fixed, moving, [str(case["dir"] / "field.nii.gz")], interpolator="linear").numpy()
    assert out.shape == SHAPE
    assert _corr(out, case["ours"], case["inside"]) >= 0.999
    np.testing.assert_allclose(out[case["inside"]], case["ours"][case["inside"]], atol=1e-4)


def test_save_accepts_tensor_and_batch_and_is_atomic(tmp_path, case):
    t = torch.from_numpy(case["disp"])[None]  # (1, 3, D, H, W)
    save_field_itk(tmp_path / "f.nii.gz", t, case["affine"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.nii.gz"]  # no temp left
    disp, _ = load_field_itk(tmp_path / "f.nii.gz")
    np.testing.assert_allclose(disp, case["disp"], atol=1e-5)
    with pytest.raises(ValueError, match="shape"):
        save_field_itk(tmp_path / "g.nii.gz", case["disp"][:2], case["affine"])
    with pytest.raises(ValueError, match=".nii"):
        save_field_itk(tmp_path / "g.mha", case["disp"], case["affine"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.nii.gz"]


def test_npz_round_trip(tmp_path, case):
    save_field_npz(tmp_path / "f.npz", case["disp"], (0.8, 1.2, 2.0), case["affine"])
    disp, spacing, affine = load_field_npz(tmp_path / "f.npz")
    np.testing.assert_array_equal(disp, case["disp"])
    np.testing.assert_allclose(spacing, [0.8, 1.2, 2.0])
    np.testing.assert_array_equal(affine, case["affine"])
    with np.load(tmp_path / "f.npz") as z:
        assert set(z.files) == {"disp", "spacing", "affine"}


def test_bad_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_field_itk(tmp_path / "missing.nii.gz")
    (tmp_path / "junk.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(DataError, match="junk.nii.gz"):
        load_field_itk(tmp_path / "junk.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.float32), np.eye(4)), str(tmp_path / "scalar.nii.gz"))
    with pytest.raises(DataError, match="scalar.nii.gz.*shape"):
        load_field_itk(tmp_path / "scalar.nii.gz")
    with pytest.raises(DataError, match="not found"):
        load_field_npz(tmp_path / "missing.npz")
