"""``ddmr prepare`` and the ``prepared`` dataset: same samples, resumable, no half-written entries."""

import gzip
import json

import numpy as np
import pytest

from ddmr_core.cli import main
from ddmr_core.data.prepare import prepare
from ddmr_core.errors import DataError
from ddmr_core.data.io import save_image, save_label_map
from ddmr_plugins.datasets.abdomen_phantom import AbdomenPhantomDataset
from ddmr_plugins.datasets.nifti import NiftiFolderDataset
from ddmr_plugins.datasets.prepared import PreparedDataset

PHANTOM = ["--gin", "ddmr.datasets.abdomen_phantom.patients = 4",
           "--gin", "ddmr.datasets.abdomen_phantom.splits = (2, 1, 1)",
           "--gin", "ddmr.datasets.abdomen_phantom.spacing = (6.0, 6.0, 6.0)"]


def test_prepare_cli_caches_exactly_the_dataset_samples(tmp_path, capsys):
    out = tmp_path / "cache"
    assert main(["prepare", "--dataset", "abdomen_phantom", "--out", str(out), "--size", "16",
                 "--workers", "0", *PHANTOM]) == 0
    cached = PreparedDataset(str(out))
    direct = AbdomenPhantomDataset(patients=4, splits=(2, 1, 1), spacing=(6.0, 6.0, 6.0), size=(16, 16, 16))
    assert cached.labels == direct.labels and cached.preprocess == direct.preprocess
    for split in ("train", "validation", "test"):
        assert len(cached.split(split)) == len(direct.split(split))
        for a, b in zip(cached.split(split), direct.split(split)):
            assert a["index"] == b["index"]
            for key in ("image", "seg", "spacing", "affine"):
                assert a[key].dtype == b[key].dtype
                np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())
    # a rerun with the same settings reuses every entry
    capsys.readouterr()
    assert main(["prepare", "--dataset", "abdomen_phantom", "--out", str(out), "--size", "16",
                 "--workers", "0", *PHANTOM]) == 0
    assert "prepared 0 samples (4 already cached)" in capsys.readouterr().out
    # other settings into the same folder are refused with one line on stderr
    assert main(["prepare", "--dataset", "abdomen_phantom", "--out", str(out), "--size", "8", *PHANTOM]) == 2
    assert "other settings" in capsys.readouterr().err


def test_prepare_with_workers_and_loader(tmp_path):
    from torch.utils.data import DataLoader

    ds = AbdomenPhantomDataset(patients=3, splits=(3, 0, 0), spacing=(8.0, 8.0, 8.0), size=(8, 8, 8))
    index = prepare(ds, tmp_path, "abdomen_phantom", splits=("train",), workers=2, log=lambda *a: None)
    assert sorted(e["index"] for e in index["splits"]["train"]) == [0, 1, 2]
    batch = next(iter(DataLoader(PreparedDataset(str(tmp_path)).split("train"), batch_size=3, num_workers=2)))
    assert batch["image"].shape == (3, 1, 8, 8, 8) and batch["affine"].shape == (3, 4, 4)


@pytest.mark.parametrize("workers", [0, 2])
def test_failure_leaves_no_half_written_entry_and_no_index(tmp_path, workers):
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for i in range(3):
        save_image(data / "images" / f"s{i}.nii.gz", rng.normal(size=(6, 6, 6)), np.eye(4))
        save_label_map(data / "labels" / f"s{i}.nii.gz", np.ones((6, 6, 6)), np.eye(4))
    (data / "images" / "s2.nii.gz").write_bytes(gzip.compress(b"broken" * 50))
    ds = NiftiFolderDataset(str(data), splits=(3, 0, 0), seed=0, labels=(1,), size=(4, 4, 4))
    out = tmp_path / "cache"
    with pytest.raises(DataError, match="s2.nii.gz") as err:
        prepare(ds, out, "nifti_folder", splits=("train",), workers=workers, log=lambda *a: None)
    assert "Traceback" not in str(err.value)  # a worker's error arrives as the one-line DataError
    assert not (out / "index.json").exists()
    files = sorted(p.name for p in (out / "train").iterdir())
    assert not any(".tmp" in f for f in files)  # no temporary leftovers
    entries = [f for f in files if f.endswith(".npz")]
    broken = ds.split_names("train").index("s2")  # sample index = position in the dataset
    assert f"{broken:05d}.npz" not in entries
    # only entries of good subjects, all complete (they load)
    for f in entries:
        with np.load(out / "train" / f) as z:
            assert z["image"].shape == (4, 4, 4)
    with pytest.raises(DataError, match="no index.json"):
        PreparedDataset(str(out))
    # after fixing the file, a rerun completes the cache
    save_image(data / "images" / "s2.nii.gz", rng.normal(size=(6, 6, 6)), np.eye(4))
    prepare(ds, out, "nifti_folder", splits=("train",), workers=0, log=lambda *a: None)
    assert len(PreparedDataset(str(out)).split("train")) == 3


def test_prepared_dataset_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        PreparedDataset(str(tmp_path / "none"))
    (tmp_path / "index.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(DataError, match="not a ddmr prepare index"):
        PreparedDataset(str(tmp_path))


def test_prepare_refuses_a_foreign_non_empty_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    ds = AbdomenPhantomDataset(patients=3, splits=(3, 0, 0), spacing=(8.0, 8.0, 8.0), size=(8, 8, 8))
    with pytest.raises(DataError, match="not empty"):
        prepare(ds, tmp_path, "abdomen_phantom", log=lambda *a: None)


def test_cli_reports_bad_dataset_settings_in_one_line(tmp_path, capsys):
    assert main(["prepare", "--dataset", "nifti_folder", "--out", str(tmp_path / "c"),
                 "--gin", f"ddmr.datasets.nifti_folder.root = '{tmp_path / 'absent'}'"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "absent" in err and "not found" in err
    assert not (tmp_path / "c").exists()
