"""Test sets: ``ddmr build-testset`` output, the reader the evaluator uses, and bad input."""

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from ddmr_core.data.augment import AugmentationPipeline
from ddmr_core.cli import main
from ddmr_core.data.build_testset import build_testset
from ddmr_core.errors import DataError
from ddmr_core.data.field_io import load_field_itk
from ddmr_core.plugins.registry import Registry
from ddmr_core.spatial.fields import warp
from ddmr_core.data.testset import COLUMNS, finish_testset, load_pair, read_testset, write_pair
from ddmr_plugins.datasets.synthetic import SyntheticDataset


class ShiftedAffineSynthetic(SyntheticDataset):
    """Synthetic subjects with a non-trivial affine, to check it is carried through."""

    AFFINE = np.array([[-1.5, 0, 0, 20.0], [0, 1.5, 0, -10.0], [0, 0, 2.0, 5.0], [0, 0, 0, 1]])

    def split(self, name):
        base = super().split(name)

        class _S(torch.utils.data.Dataset):
            def __len__(self):
                return len(base)

            def __getitem__(self, i):
                s = dict(base[i])
                s["affine"] = torch.from_numpy(ShiftedAffineSynthetic.AFFINE.copy())
                s["spacing"] = torch.tensor([1.5, 1.5, 2.0])
                return s

        return _S()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("ts")
    reg = Registry()
    pipeline = AugmentationPipeline(
        [reg.create("augmenters", "rigid", max_rotation=5.0, max_translation=3.0),
         reg.create("augmenters", "tps", grid=4, max_displacement=2.0)], seed=3)
    ds = ShiftedAffineSynthetic(shape=(20, 20, 20), subjects=(1, 1, 2), n_labels=2)
    build_testset(ds, pipeline, out, pairs=3, size=(16, 16, 16), seed=3, dataset_name="synthetic", log=lambda *a: None)
    return out


def test_layout_and_metadata(built):
    rows = list(csv.DictReader(open(built / "manifest.csv")))
    assert list(rows[0].keys()) == list(COLUMNS)
    assert [r["pair"] for r in rows] == ["pair_0000", "pair_0001", "pair_0002"]
    for r in rows:
        for c in COLUMNS[1:]:
            assert not r[c].startswith("/") and (built / r[c]).is_file()
    meta = json.loads((built / "testset.json").read_text())
    assert meta["dataset"] == "synthetic" and meta["size"] == [16, 16, 16]
    assert meta["seed"] == 3 and meta["pairs"] == 3 and meta["labels"] == [1, 2]


def test_pairs_are_consistent(built):
    ts = read_testset(built)
    assert len(ts) == 3 and ts.labels == (1, 2)
    p = ts[0].load()
    assert p["fixed"].shape == (16, 16, 16) and p["fixed_seg"].dtype == np.uint8
    # every file of the pair carries the fixed image's affine (the input resized to 16^3)
    from ddmr_core.spatial.grids import resize_affine

    expected = resize_affine(ShiftedAffineSynthetic.AFFINE, (20, 20, 20), (16, 16, 16))
    for key in ("fixed", "moving", "fixed_seg", "moving_seg"):
        np.testing.assert_allclose(nib.load(str(getattr(ts[0], key))).affine, expected, atol=1e-5)
    np.testing.assert_allclose(p["spacing"], np.abs(np.diag(expected)[:3]), rtol=1e-5)
    # the ground truth registers the moving image back onto the fixed one (interior voxels)
    warped = warp(torch.from_numpy(p["moving"])[None, None], torch.from_numpy(p["disp_true"])[None])[0, 0].numpy()
    inner = (slice(3, -3),) * 3
    err_gt = np.abs(warped - p["fixed"])[inner].mean()
    err_id = np.abs(p["moving"] - p["fixed"])[inner].mean()
    assert np.abs(p["disp_true"]).max() > 0.2 and err_gt < 0.5 * err_id
    # the ITK/ANTs file holds the same field as the .npz
    disp_itk, aff_itk = load_field_itk(ts[0].disp_true)
    np.testing.assert_allclose(disp_itk, p["disp_true"], atol=1e-4)
    np.testing.assert_allclose(aff_itk, expected, atol=1e-5)
    # pairs differ (seeded by pair index)
    assert not np.allclose(ts[1].load()["disp_true"], p["disp_true"])


def test_round_trip_without_segmentations(tmp_path):
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    rng = np.random.default_rng(0)
    disp = rng.normal(size=(3, 6, 7, 8)).astype(np.float32)
    row = write_pair(tmp_path, "p0", rng.random((6, 7, 8)), rng.random((6, 7, 8)), disp, aff)
    finish_testset(tmp_path, [row], {"dataset": "x", "size": [6, 7, 8], "seed": 0, "pairs": 1, "labels": []})
    rec = read_testset(tmp_path)[0]
    assert rec.fixed_seg is None and rec.moving_seg is None
    p = load_pair(rec)
    np.testing.assert_allclose(p["disp_true"], disp, atol=1e-6)
    assert p["fixed_seg"] is None


def test_reader_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_testset(tmp_path / "missing")
    with pytest.raises(DataError, match="manifest.csv not found"):
        read_testset(tmp_path)
    (tmp_path / "manifest.csv").write_text("pair,fixed\np0,p0/fixed.nii.gz\n")
    (tmp_path / "testset.json").write_text("{}")
    with pytest.raises(DataError, match="lacks column"):
        read_testset(tmp_path)
    (tmp_path / "manifest.csv").write_text("pair,fixed,moving\np0,p0/fixed.nii.gz,p0/moving.nii.gz\n")
    rec = read_testset(tmp_path)[0]
    with pytest.raises(DataError, match="fixed.nii.gz"):
        load_pair(rec)


def test_cli_builds_from_a_registered_dataset_and_refuses_to_overwrite(tmp_path, capsys):
    aug = tmp_path / "aug.gin"
    aug.write_text("ddmr.build_augmentation.steps = [@ddmr.augmenters.rigid()]\n"
                   "ddmr.augmenters.rigid.max_translation = 2.0\n")
    out = tmp_path / "ts"
    args = ["build-testset", "--dataset", "synthetic", "--pairs", "2", "--size", "12", "--seed", "7",
            "--out", str(out), "--augment", str(aug)]
    assert main(args) == 0
    ts = read_testset(out)
    assert len(ts) == 2 and ts.meta["size"] == [12, 12, 12] and ts.labels == (1, 2, 3)
    assert ts[1].load()["fixed"].shape == (12, 12, 12)
    capsys.readouterr()
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    assert main(["build-testset", "--dataset", "nosuch", "--pairs", "1", "--size", "8", "--seed", "0",
                 "--out", str(tmp_path / "x"), "--augment", str(aug)]) == 2
    assert "unknown datasets name 'nosuch'" in capsys.readouterr().err


def test_original_grid_columns_hold_the_same_pair_on_the_isotropic_grid(tmp_path):
    from ddmr_core.data.io import load_image, load_label_map
    from ddmr_core.spatial.fields import resize_image
    from ddmr_core.spatial.grids import resize_affine
    from ddmr_plugins.datasets.abdomen_phantom import AbdomenPhantomDataset

    reg = Registry()
    pipeline = AugmentationPipeline(
        [reg.create("augmenters", "rigid", max_rotation=10.0, max_translation=30.0),
         reg.create("augmenters", "tps", grid=4, max_displacement=6.0)], seed=1)
    from ddmr_core.data.preprocess import Preprocess

    # isotropic 3 mm instead of 1 mm keeps the "original" grid small (a fast test)
    pre = Preprocess(spacing=3.0, size=(24, 24, 24), crop_labels=(1, 2), window=(-150, 250))
    ds = AbdomenPhantomDataset(patients=2, splits=(1, 0, 1), spacing=(5.0, 5.0, 5.0), preprocess=pre)
    build_testset(ds, pipeline, tmp_path, pairs=1, size=(16, 16, 16), seed=1, log=lambda *a: None,
                  original_grid=True)
    row = next(csv.DictReader(open(tmp_path / "manifest.csv")))
    p = read_testset(tmp_path)[0].load()
    f0, a0 = load_image(tmp_path / row["fixed_original"])
    m0, m_aff = load_image(tmp_path / row["moving_original"])
    s0, _ = load_label_map(tmp_path / row["moving_seg_original"])
    np.testing.assert_allclose(np.linalg.norm(a0[:3, :3], axis=0), 3.0, atol=1e-5)  # isotropic
    np.testing.assert_allclose(m_aff, a0, atol=1e-5)
    # the test grid is the 1 mm grid resized with its field of view kept
    np.testing.assert_allclose(resize_affine(a0, f0.shape, (16, 16, 16)), p["affine"], atol=1e-4)
    # resized down, the 1 mm volumes agree with the test pair
    down = lambda v: resize_image(torch.from_numpy(v)[None, None], (16, 16, 16))[0, 0].numpy()  # noqa: E731
    inner = (slice(2, -2),) * 3
    err = lambda a, b: float(np.abs(a - b)[inner].mean())  # noqa: E731
    assert err(down(f0), p["fixed"]) < 0.05
    assert err(down(m0), p["moving"]) < 0.05
    assert err(down(m0), p["fixed"]) > 2 * err(down(m0), p["moving"])  # it is the moved image
    # the moved liver label: overlaps the test pair's moving liver, not the fixed one as much
    s_down = resize_image(torch.from_numpy(s0)[None, None], (16, 16, 16), mode="nearest")[0, 0].numpy()
    dice = lambda a, b: 2 * ((a == 1) & (b == 1)).sum() / ((a == 1).sum() + (b == 1).sum())  # noqa: E731
    assert dice(s_down, p["moving_seg"]) > 0.85
    assert dice(s_down, p["moving_seg"]) > dice(s_down, p["fixed_seg"]) + 0.05
    # a dataset without raw subjects has no original grid: one clear error
    with pytest.raises(Exception, match="original"):
        build_testset(ShiftedAffineSynthetic(shape=(8, 8, 8)), pipeline, tmp_path / "x", pairs=1, size=(8, 8, 8),
                      seed=0, log=lambda *a: None, original_grid=True)


def test_records_name_the_original_grid_columns(tmp_path):
    """read_testset owns the optional *_original columns (the evaluator reads them there)."""
    from ddmr_core.data.testset import load_original, read_testset

    rows = [{"pair": "a", "fixed": "a/f.nii.gz", "moving": "a/m.nii.gz", "fixed_original": "a/f0.nii.gz",
             "moving_original": str(tmp_path / "abs" / "m0.nii.gz"), "fixed_seg_original": ""}]
    finish_testset(tmp_path, rows, {"dataset": "x", "size": [4, 4, 4], "seed": 0, "pairs": 1, "labels": []})
    ts = read_testset(tmp_path)
    assert ts.has_original
    assert ts[0].original == {"fixed": tmp_path / "a" / "f0.nii.gz", "moving": tmp_path / "abs" / "m0.nii.gz"}
    with pytest.raises(DataError, match="f0.nii.gz.*not found"):
        load_original(ts[0])
    finish_testset(tmp_path, [{"pair": "a", "fixed": "a/f.nii.gz", "moving": "a/m.nii.gz"}],
                   {"dataset": "x", "size": [4, 4, 4], "seed": 0, "pairs": 1, "labels": []})
    assert not read_testset(tmp_path).has_original and read_testset(tmp_path)[0].original == {}
