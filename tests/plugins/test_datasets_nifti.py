"""nifti_folder and manifest datasets: layouts, seeded splits, samples, and bad input."""

import gzip

import nibabel as nib
import numpy as np
import pytest

from ddmr_core.errors import ConfigError, DataError
from ddmr_core.data.io import save_image, save_label_map
from ddmr_core.data.preprocess import Preprocess
from ddmr_core.plugins.registry import Registry
from ddmr_plugins.datasets.common import seeded_splits, split_counts
from ddmr_plugins.datasets.nifti import ManifestDataset, NiftiFolderDataset

LPS_LIKE = np.array([[-1.5, 0, 0, 40.0], [0, -1.5, 0, 30.0], [0, 0, 3.0, -20.0], [0, 0, 0, 1]])


def write_subjects(folder, n, shape=(12, 10, 6), affine=LPS_LIKE, layout="dirs"):
    rng = np.random.default_rng(1)
    paths = []
    for i in range(n):
        img = rng.normal(100, 20, shape).astype(np.float32)
        seg = np.zeros(shape, np.uint8)
        seg[2:6, 3:7, 1:4] = 1
        seg[7:9, 2:4, 2:5] = 3
        if layout == "dirs":
            ip, sp = folder / "images" / f"s{i}.nii.gz", folder / "labels" / f"s{i}.nii.gz"
        else:
            ip, sp = folder / f"s{i}.nii.gz", folder / f"s{i}_seg.nii.gz"
        save_image(ip, img, affine)
        save_label_map(sp, seg, affine)
        paths.append((ip, sp))
    return paths


def test_split_counts_and_seeded_splits():
    assert split_counts(60, (41, 8, 11)) == [41, 8, 11]
    assert split_counts(20, (0.7, 0.15, 0.15)) == [14, 3, 3]
    a, b = seeded_splits(30, (0.6, 0.2, 0.2), 5), seeded_splits(30, (0.6, 0.2, 0.2), 5)
    assert a == b
    assert sorted(a["train"] + a["validation"] + a["test"]) == list(range(30))
    assert seeded_splits(30, (0.6, 0.2, 0.2), 6) != a
    with pytest.raises(ConfigError, match="splits"):
        split_counts(10, (0.5, 0.2, 0.2))


@pytest.mark.parametrize("layout", ["dirs", "flat"])
def test_nifti_folder_samples_keep_orientation_and_affine(tmp_path, layout):
    write_subjects(tmp_path, 5, layout=layout)
    ds = NiftiFolderDataset(str(tmp_path), splits=(3, 1, 1), seed=0, size=(8, 8, 8))
    assert ds.labels == (1, 3)  # scanned from the label maps
    assert sum(len(ds.split(s)) for s in ("train", "validation", "test")) == 5
    s = ds.split("train")[0]
    assert s["image"].shape == (1, 8, 8, 8) and s["image"].dtype.is_floating_point
    assert s["seg"].shape == (1, 8, 8, 8) and str(s["seg"].dtype) == "torch.uint8"
    assert 0 <= float(s["image"].min()) and float(s["image"].max()) <= 1
    aff = s["affine"].numpy()
    # orientation kept (axis 0 and 1 still point to -x and -y), spacing from the affine
    assert aff[0, 0] < 0 and aff[1, 1] < 0 and aff[2, 2] > 0
    np.testing.assert_allclose(s["spacing"].numpy(), np.abs(np.diag(aff)[:3]), rtol=1e-6)
    # field of view kept: 12 * 1.5 mm -> 18 mm resampled to 1 mm, resized to 8 voxels
    np.testing.assert_allclose(np.abs(np.diag(aff)[:3]), [18 / 8, 15 / 8, 18 / 8], rtol=1e-6)
    assert isinstance(ds.preprocess, dict) and ds.preprocess["size"] == [8, 8, 8]


def test_manifest_with_split_column(tmp_path):
    paths = write_subjects(tmp_path, 4)
    rows = ["image,seg,split"] + [f"{i.relative_to(tmp_path)},{s.relative_to(tmp_path)},{sp}"
                                  for (i, s), sp in zip(paths, ["train", "val", "test", "train"])]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    ds = ManifestDataset(str(tmp_path / "m.csv"), labels=(1, 3), preprocess=Preprocess(spacing=None, size=None))
    assert ds.split_names("train") == ["s0", "s3"] and ds.split_names("validation") == ["s1"]
    s = ds.split("test")[0]
    assert s["image"].shape == (1, 12, 10, 6) and s["index"] == 2
    np.testing.assert_allclose(s["affine"].numpy(), LPS_LIKE)


def test_manifest_without_segmentations(tmp_path):
    paths = write_subjects(tmp_path, 3)
    (tmp_path / "m.csv").write_text("image\n" + "\n".join(str(i) for i, _ in paths) + "\n")
    ds = ManifestDataset(str(tmp_path / "m.csv"), splits=(1, 1, 1), size=(4, 4, 4))
    assert ds.labels == ()
    assert "seg" not in ds.split("train")[0]


def test_registry_builds_the_plugins(tmp_path):
    write_subjects(tmp_path, 3)
    reg = Registry()
    ds = reg.create("datasets", "nifti_folder", root=str(tmp_path), splits=(1, 1, 1), size=(4, 4, 4))
    assert len(ds.split("validation")) == 1


def test_bad_manifests(tmp_path):
    with pytest.raises(DataError, match="not found"):
        ManifestDataset(str(tmp_path / "missing.csv"))
    (tmp_path / "a.csv").write_text("img,seg\nx.nii.gz,y.nii.gz\n")
    with pytest.raises(DataError, match="no 'image' column") as err:
        ManifestDataset(str(tmp_path / "a.csv"))
    assert "a.csv" in str(err.value)
    paths = write_subjects(tmp_path, 2)
    (tmp_path / "b.csv").write_text(f"image,split\n{paths[0][0]},holdout\n")
    with pytest.raises(DataError, match="unknown split 'holdout'"):
        ManifestDataset(str(tmp_path / "b.csv"))
    (tmp_path / "c.csv").write_text(f"image\n{tmp_path / 'gone.nii.gz'}\n")
    with pytest.raises(DataError, match="gone.nii.gz"):
        ManifestDataset(str(tmp_path / "c.csv"))
    (tmp_path / "d.csv").write_text(f"image,seg\n{paths[0][0]},{paths[0][1]}\n{paths[1][0]},\n")
    with pytest.raises(DataError, match="has no segmentation"):
        ManifestDataset(str(tmp_path / "d.csv"))


def test_bad_files_fail_with_their_name(tmp_path):
    paths = write_subjects(tmp_path, 3)
    # segmentation on another grid, 4-D image, unreadable file
    save_label_map(paths[0][1], np.zeros((12, 10, 5), np.uint8), LPS_LIKE)
    nib.save(nib.Nifti1Image(np.zeros((12, 10, 6, 3), np.float32), LPS_LIKE), str(paths[1][0]))
    paths[2][0].write_bytes(gzip.compress(b"garbage" * 100))
    ds = NiftiFolderDataset(str(tmp_path), splits=(3, 0, 0), labels=(1, 3), size=(4, 4, 4))
    by_name = dict(zip(ds.split_names("train"), range(3)))
    split = ds.split("train")
    with pytest.raises(DataError, match="shape") as err:
        split[by_name["s0"]]
    assert "s0.nii.gz" in str(err.value)
    with pytest.raises(DataError, match="4-D") as err:
        split[by_name["s1"]]
    assert "s1.nii.gz" in str(err.value)
    with pytest.raises(DataError, match="cannot be read") as err:
        split[by_name["s2"]]
    assert "s2.nii.gz" in str(err.value)


def test_empty_segmentation_when_cropping(tmp_path):
    paths = write_subjects(tmp_path, 1)
    save_label_map(paths[0][1], np.zeros((12, 10, 6), np.uint8), LPS_LIKE)
    ds = NiftiFolderDataset(str(tmp_path), splits=(1, 0, 0), labels=(1,),
                            preprocess=Preprocess(crop_labels=(1,), size=(4, 4, 4)))
    with pytest.raises(DataError, match="empty") as err:
        ds.split("train")[0]
    assert "s0" in str(err.value)


def test_missing_folder_and_empty_folder(tmp_path):
    with pytest.raises(DataError, match="not found"):
        NiftiFolderDataset(str(tmp_path / "nope"))
    with pytest.raises(DataError, match="no NIfTI images"):
        NiftiFolderDataset(str(tmp_path))
