"""``ddmr warp`` and ``ddmr jacobian`` (issue 15): a saved field applied to other volumes,
checked against SimpleITK resampling with the same field, and its Jacobian determinant."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from conftest import save_nifti as save, smooth_field
from ddmr_core.cli import main
from ddmr_core.data.field_io import save_field_itk, save_field_npz
from ddmr_core.data.io import spacing_from_affine


def oblique_affine(spacing, angles, origin):
    a = np.eye(4)
    a[:3, :3] = Rotation.from_euler("xyz", angles, degrees=True).as_matrix() @ np.diag(spacing)
    a[:3, 3] = origin
    return a


FIXED_AFF = oblique_affine((0.8, 1.2, 2.0), (20, -10, 15), (-12.0, 30.0, 5.0))
MOVING_AFF = oblique_affine((1.1, 0.9, 1.4), (15, -5, 25), (-10.0, 28.0, 8.0))
FIXED_SHAPE, MOVING_SHAPE = (20, 24, 16), (18, 22, 20)


def smooth(shape, seed):
    rng = np.random.default_rng(seed)
    g = np.meshgrid(*[np.linspace(0, 1, n) for n in shape], indexing="ij")
    a, b = rng.uniform(2, 4, 2)
    return (np.sin(a * g[0]) * np.cos(b * g[1]) + g[2] ** 2 + 2).astype(np.float32)


@pytest.fixture
def field_files(tmp_path):
    disp = smooth_field(FIXED_SHAPE, 2.5)
    disp[0] += 0.7  # and a shift, so that the moving grid is sampled well off its voxels
    save_field_itk(tmp_path / "field.nii.gz", disp, FIXED_AFF)
    save_field_npz(tmp_path / "field.npz", disp, spacing_from_affine(FIXED_AFF), FIXED_AFF)
    labels = np.zeros(MOVING_SHAPE, np.uint8)
    labels[3:12, 4:15, 5:14] = 1
    labels[6:10, 8:20, 2:9] = 7
    return {"disp": disp, "nii": str(tmp_path / "field.nii.gz"), "npz": str(tmp_path / "field.npz"),
            "fixed": save(tmp_path / "fixed.nii.gz", np.zeros(FIXED_SHAPE, np.float32), FIXED_AFF),
            "moving": save(tmp_path / "moving.nii.gz", smooth(MOVING_SHAPE, 3), MOVING_AFF),
            "labels": save(tmp_path / "labels.nii.gz", labels, MOVING_AFF)}


def _inside(disp, pad=0.0):
    """Fixed voxels whose sample point lies inside the moving image's voxel box, widened
    by ``pad`` voxels."""
    y = np.stack(np.meshgrid(*[np.arange(n) for n in FIXED_SHAPE], indexing="ij")).reshape(3, -1)
    q = FIXED_AFF[:3, :3] @ (y + disp.reshape(3, -1)) + FIXED_AFF[:3, 3:]
    inv = np.linalg.inv(MOVING_AFF)
    z = inv[:3, :3] @ q + inv[:3, 3:]
    return np.all((z >= -pad) & (z <= np.array(MOVING_SHAPE)[:, None] - 1 + pad), axis=0).reshape(FIXED_SHAPE)


def by_simpleitk(files, volume, interpolator):
    import SimpleITK as sitk

    tx = sitk.DisplacementFieldTransform(sitk.ReadImage(files["nii"], sitk.sitkVectorFloat64))
    ref = sitk.ReadImage(files["fixed"], sitk.sitkFloat64)
    out = sitk.Resample(sitk.ReadImage(volume, sitk.sitkFloat64), ref, tx, interpolator, 0.0)
    return sitk.GetArrayFromImage(out).transpose(2, 1, 0)


def test_warp_agrees_with_simpleitk_on_another_grid(field_files, tmp_path, capsys):
    import SimpleITK as sitk

    f = field_files
    inside = _inside(f["disp"])
    assert 0.3 < inside.mean() < 1.0  # some of the field samples outside the moving image
    out = tmp_path / "warped.nii.gz"
    assert main(["warp", "--field", f["nii"], "--moving", f["moving"], "--out", str(out)]) == 0
    img = nib.load(str(out))
    np.testing.assert_allclose(img.affine, FIXED_AFF, atol=1e-5)
    ours = img.get_fdata()
    ref = by_simpleitk(f, f["moving"], sitk.sitkLinear)
    assert ours.shape == FIXED_SHAPE and img.get_data_dtype() == np.float32
    assert np.corrcoef(ours[inside], ref[inside])[0, 1] >= 0.999
    np.testing.assert_allclose(ours[inside], ref[inside], atol=1e-3)
    far = ~_inside(f["disp"], pad=1.0)
    assert far.sum() > 100
    np.testing.assert_allclose(ours[far], 0.0)  # outside the moving image: 0, as ITK's default
    # the .npz field is the same field
    out_npz = tmp_path / "warped_npz.nii.gz"
    assert main(["warp", "--field", f["npz"], "--moving", f["moving"], "--out", str(out_npz)]) == 0
    np.testing.assert_allclose(nib.load(str(out_npz)).get_fdata(), ours, atol=1e-4)
    assert str(out) in capsys.readouterr().out


def test_warp_labels_nearest_neighbour(field_files, tmp_path):
    import SimpleITK as sitk

    f = field_files
    out = tmp_path / "labels_warped.nii.gz"
    assert main(["warp", "--field", f["nii"], "--moving", f["labels"], "--labels", "--out", str(out)]) == 0
    img = nib.load(str(out))
    ours = np.asarray(img.dataobj)
    assert img.get_data_dtype() == np.uint8 and set(np.unique(ours)) == {0, 1, 7}
    ref = by_simpleitk(f, f["labels"], sitk.sitkNearestNeighbor)
    inside = _inside(f["disp"])
    # nearest neighbour: equal but for points within rounding of a voxel boundary
    assert (ours[inside] == ref[inside]).mean() > 0.995
    assert (ours == 7).sum() > 100


def test_warp_reproduces_the_register_output(tiny_workspace, tmp_path):
    ws = tiny_workspace
    out = tmp_path / "reg"
    assert main(["register", "--fixed", ws["f"], "--moving", ws["m"], "--fixed-seg", ws["fs"], "--moving-seg",
                 ws["ms"], "--model", ws["good"], "--out", str(out), "--outputs", "field,npz,warped"]) == 0
    for field in ("field.nii.gz", "field.npz"):
        w = tmp_path / "w.nii.gz"
        assert main(["warp", "--field", str(out / field), "--moving", ws["m"], "--out", str(w)]) == 0
        np.testing.assert_allclose(nib.load(str(w)).get_fdata(), nib.load(str(out / "warped.nii.gz")).get_fdata(),
                                   atol=1e-4)
        assert main(["warp", "--field", str(out / field), "--moving", ws["ms"], "--labels", "--out", str(w)]) == 0
        ours, theirs = (np.asarray(nib.load(str(p)).dataobj) for p in (w, out / "warped_seg.nii.gz"))
        assert (ours == theirs).mean() > 0.999


def test_jacobian_map_and_folding(tmp_path, capsys):
    shape = (12, 14, 10)
    y = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"))
    m = np.array([[1.2, 0.1, 0.0], [0.0, 0.9, 0.05], [0.0, 0.0, 1.1]], np.float32)
    disp = np.einsum("ij,j...->i...", m - np.eye(3, dtype=np.float32), y)  # x -> M x: det(M) everywhere
    save_field_itk(tmp_path / "affine.nii.gz", disp, FIXED_AFF)
    out = tmp_path / "jac.nii.gz"
    assert main(["jacobian", "--field", str(tmp_path / "affine.nii.gz"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    img = nib.load(str(out))
    assert img.shape == shape and img.get_data_dtype() == np.float32
    np.testing.assert_allclose(img.affine, FIXED_AFF, atol=1e-5)
    np.testing.assert_allclose(img.get_fdata(), np.linalg.det(m), atol=1e-4)
    assert "folding: 0.0000 %" in printed and str(out) in printed
    # a field that folds a slab: x0 -> -x0 inside it
    fold = np.zeros((3,) + shape, np.float32)
    fold[0, 4:8] = -2 * y[0, 4:8] + 11
    save_field_npz(tmp_path / "fold.npz", fold, spacing_from_affine(FIXED_AFF), FIXED_AFF)
    assert main(["jacobian", "--field", str(tmp_path / "fold.npz"), "--out", str(out)]) == 0
    jac = nib.load(str(out)).get_fdata()
    expected = 100.0 * np.mean(jac <= 0)
    assert 0 < expected < 100 and f"folding: {expected:.4f} %" in capsys.readouterr().out
