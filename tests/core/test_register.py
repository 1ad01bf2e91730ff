"""``ddmr register`` and :mod:`ddmr_core.registration.register`: geometry worked out by hand, agreement
with SciPy, SimpleITK and ANTs, the output folder, and bad input.

Most tests use a stand-in backbone whose output is a stored field (a parameter), so the
network's answer is known exactly; one test runs a tiny real ``vxm_unet`` end to end."""

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.spatial.transform import Rotation
from torch import nn

from ddmr_core.model.checkpoint import save_checkpoint
from conftest import save_nifti as save, smooth_field
from ddmr_core.cli import main
from ddmr_core.config.parsing import config_text, parse_config
from ddmr_core.errors import DataError
from ddmr_core.model.build import build_model
from ddmr_core.data.field_io import load_field_itk, load_field_npz
from ddmr_core.plugins.hookspecs import hookimpl
from ddmr_core.data.preprocess import Preprocess
from ddmr_core.registration.register import Registrar, dice_tre
from ddmr_core.registration.output import OUTPUT_FILES

GRID = (16, 16, 16)


# ----------------------------------------------------------------- stand-in model
class FieldBackbone(nn.Module):
    """Returns its stored field whatever the images: the test decides the answer."""

    def __init__(self, size=GRID):
        super().__init__()
        self.field = nn.Parameter(torch.zeros(1, 3, *size))

    def forward(self, fixed, moving):
        return self.field.expand(fixed.shape[0], -1, -1, -1, -1)


def regtest_field(size=GRID):
    return FieldBackbone(tuple(size))


class StandInPlugin:
    @hookimpl
    def ddmr_backbones(self):
        return {"regtest_field": regtest_field}


@pytest.fixture
def stand_in(monkeypatch):
    """Make every plugin manager (also the CLI's) include the stand-in backbone."""
    import ddmr_core.plugins.registry as registry

    real = registry.get_plugin_manager

    def patched(autoload=None, extra_plugins=()):
        return real(autoload, list(extra_plugins) + [("regtest_plugin", StandInPlugin())])

    monkeypatch.setattr(registry, "get_plugin_manager", patched)


def make_ckpt(path, field, preprocess, labels=(1, 2)):
    parse_config(text=f"ddmr.build_model.backbone = @ddmr.backbones.regtest_field()\n"
                      f"ddmr.backbones.regtest_field.size = {tuple(field.shape[1:])}\n")
    model = build_model()
    with torch.no_grad():
        model.backbone.field.copy_(torch.as_tensor(field, dtype=torch.float32)[None])
    save_checkpoint(path, {
        "model": model.state_dict(), "gin_config": config_text(), "input_size": list(field.shape[1:]),
        "labels": list(labels), "preprocess": Preprocess(**preprocess).to_dict(),
    })
    return path


NO_RESAMPLING = dict(spacing=None, size=None, percentiles=(0, 100))


def oblique_affine(spacing=(0.8, 1.2, 2.0), angles=(20, -10, 15), origin=(-12.0, 30.0, 5.0)):
    a = np.eye(4)
    a[:3, :3] = Rotation.from_euler("xyz", angles, degrees=True).as_matrix() @ np.diag(spacing)
    a[:3, 3] = origin
    return a


def smooth_volume(shape, seed=0):
    g = np.meshgrid(*[np.linspace(0, 1, n) for n in shape], indexing="ij")
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(2, 4, 2)
    return (np.sin(a * g[0]) * np.cos(b * g[1]) + g[2] ** 2 + 0.5 * np.sin(5 * g[0] * g[2]) + 2).astype(np.float32)


def boxes(shape, start0):
    seg = np.zeros(shape, np.uint8)
    seg[start0:start0 + 8, 4:12, 4:12] = 1
    seg[start0:start0 + 4, 12:15, 2:6] = 2
    return seg


# ------------------------------------------------------------------ geometry
def test_zero_field_on_one_grid_gives_the_moving_image(tmp_path, stand_in):
    aff = oblique_affine()
    moving = smooth_volume(GRID)
    ck = make_ckpt(tmp_path / "m.pt", np.zeros((3,) + GRID), NO_RESAMPLING)
    res = Registrar(ck).register(save(tmp_path / "f.nii.gz", smooth_volume(GRID, 5), aff),
                                 save(tmp_path / "m.nii.gz", moving, aff))
    np.testing.assert_allclose(res.warped, moving, atol=1e-5)
    np.testing.assert_allclose(res.disp, 0, atol=1e-5)
    np.testing.assert_allclose(res.affine, aff)


def test_uniform_shift_matches_scipy_and_gives_dice_and_tre(tmp_path, stand_in):
    aff = oblique_affine()
    moving = smooth_volume(GRID)
    field = np.zeros((3,) + GRID, np.float32)
    field[0] = 2.0  # pull: warped(x) = moving(x + 2 e0)
    ck = make_ckpt(tmp_path / "m.pt", field, NO_RESAMPLING)
    res = Registrar(ck).register(
        save(tmp_path / "f.nii.gz", moving, aff), save(tmp_path / "m.nii.gz", moving, aff),
        save(tmp_path / "fs.nii.gz", boxes(GRID, 4), aff), save(tmp_path / "ms.nii.gz", boxes(GRID, 6), aff))
    ref = ndimage.shift(moving, (-2, 0, 0), order=1, mode="constant")
    np.testing.assert_allclose(res.warped[:-2], ref[:-2], atol=1e-5)
    np.testing.assert_array_equal(res.warped_seg, boxes(GRID, 4))
    before, after = res.metrics["before"], res.metrics["after"]
    assert after["dice"] == {"1": 1.0, "2": 1.0} and after["tre_mm"] == {"1": 0.0, "2": 0.0}
    # 8-long box moved by 2: overlap 6 -> Dice 12/16; 4-long box: overlap 2 -> 4/8
    assert before["dice"] == pytest.approx({"1": 0.75, "2": 0.5})
    # centroids 2 voxels apart along axis 0, whose spacing is 0.8 mm
    assert before["tre_mm"] == pytest.approx({"1": 1.6, "2": 1.6})


def test_original_resolution_rescales_the_field(tmp_path, stand_in, monkeypatch):
    # 1 mm 32^3 image, model grid 2 mm 16^3: one model voxel is two original voxels
    aff = oblique_affine(spacing=(1.0, 1.0, 1.0))
    shape = (32, 32, 32)
    field = np.zeros((3,) + GRID, np.float32)
    field[1] = 1.0
    ck = make_ckpt(tmp_path / "m.pt", field, dict(spacing=(2.0, 2.0, 2.0), size=None))
    reg = Registrar(ck)
    img = save(tmp_path / "f.nii.gz", smooth_volume(shape), aff)
    res = reg.register(img, img, original_resolution=True)
    assert res.warped.shape == shape
    np.testing.assert_allclose(res.affine, aff)
    np.testing.assert_allclose(res.disp[1], 2.0, atol=1e-4)
    np.testing.assert_allclose(res.disp[[0, 2]], 0.0, atol=1e-4)
    # resampling in slabs (as for large CT volumes) changes nothing
    import ddmr_core.spatial.regrid as spatial

    monkeypatch.setattr(spatial, "CHUNK_VOXELS", 100)
    sliced = reg.register(img, img, original_resolution=True)
    np.testing.assert_allclose(sliced.disp, res.disp, atol=1e-6)
    np.testing.assert_allclose(sliced.warped, res.warped, atol=1e-6)
    low = reg.register(img, img)
    assert low.warped.shape == GRID
    np.testing.assert_allclose(low.disp[1], 1.0, atol=1e-5)


def _inside(res, moving_shape, moving_affine):
    """Output voxels whose sample point lies inside the moving image."""
    y = np.stack(np.meshgrid(*[np.arange(n) for n in res.warped.shape], indexing="ij")).reshape(3, -1)
    q = res.affine[:3, :3] @ (y + res.disp.reshape(3, -1)) + res.affine[:3, 3:]
    inv = np.linalg.inv(moving_affine)
    z = inv[:3, :3] @ q + inv[:3, 3:]
    ok = np.all((z >= 0) & (z <= np.array(moving_shape)[:, None] - 1), axis=0)
    return ok.reshape(res.warped.shape)


@pytest.mark.parametrize("original", [False, True])
def test_exported_field_reproduced_by_simpleitk_and_ants(tmp_path, stand_in, original):
    import SimpleITK as sitk

    fixed_aff = oblique_affine()
    mov_aff = oblique_affine(spacing=(1.1, 0.9, 1.4), angles=(15, -5, 25), origin=(-10.0, 28.0, 8.0))
    fixed_shape, mov_shape = (20, 24, 16), (18, 22, 20)
    ck = make_ckpt(tmp_path / "m.pt", smooth_field(GRID, 2.5), dict(spacing=(1.5, 1.5, 1.5), size=GRID))
    mov_path = save(tmp_path / "m.nii.gz", smooth_volume(mov_shape, 3), mov_aff)
    res = Registrar(ck).register(save(tmp_path / "f.nii.gz", smooth_volume(fixed_shape), fixed_aff), mov_path,
                                 original_resolution=original)
    out = res.save(tmp_path / "out")
    inside = _inside(res, mov_shape, mov_aff)
    assert inside.mean() > 0.5

    moving = sitk.ReadImage(mov_path, sitk.sitkFloat64)
    ref = sitk.ReadImage(str(out / "fixed.nii.gz"), sitk.sitkFloat64)
    tx = sitk.DisplacementFieldTransform(sitk.ReadImage(str(out / "field.nii.gz"), sitk.sitkVectorFloat64))
    by_sitk = sitk.GetArrayFromImage(sitk.Resample(moving, ref, tx, sitk.sitkLinear, 0.0)).transpose(2, 1, 0)
    ours = nib.load(str(out / "warped.nii.gz")).get_fdata()
    # default output grid: the fixed image after the recipe's resampling to 1.5 mm, never
    # finer than the image's own 0.8/1.2/2.0 mm (the working grid, where the field is
    # refined), not the network's 16^3
    working = res.model_disp.shape[1:]
    assert working != GRID
    np.testing.assert_allclose(np.linalg.norm(res.model_affine[:3, :3], axis=0), [1.5, 1.5, 2.0], atol=1e-6)
    assert ours.shape == (fixed_shape if original else working)
    assert np.corrcoef(by_sitk[inside], ours[inside])[0, 1] >= 0.999
    np.testing.assert_allclose(by_sitk[inside], ours[inside], atol=1e-3)

    ants = pytest.importorskip("ants")
    by_ants = ants.apply_transforms(ants.image_read(str(out / "fixed.nii.gz")), ants.image_read(mov_path),
                                    [str(out / "field.nii.gz")], interpolator="linear").numpy()
    assert np.corrcoef(by_ants[inside], ours[inside])[0, 1] >= 0.999


def test_moving_orientation_does_not_matter(tmp_path, stand_in):
    aff = oblique_affine()
    moving = smooth_volume(GRID, 2)
    ck = make_ckpt(tmp_path / "m.pt", smooth_field(GRID, 2.0), NO_RESAMPLING)
    reg = Registrar(ck)
    fixed = save(tmp_path / "f.nii.gz", smooth_volume(GRID), aff)
    img = nib.Nifti1Image(moving, aff)
    # the same image stored with axes permuted and flipped (same world content)
    other = img.as_reoriented(np.array([[2, -1], [0, 1], [1, -1]]))
    assert other.shape != img.shape or not np.allclose(other.affine, img.affine)
    a = reg.register(fixed, img)
    b = reg.register(fixed, other)
    np.testing.assert_allclose(a.warped, b.warped, atol=1e-5)
    np.testing.assert_allclose(a.disp, b.disp, atol=1e-4)


def test_arrays_in_arrays_and_images_out(tmp_path, stand_in):
    ck = make_ckpt(tmp_path / "m.pt", np.zeros((3,) + GRID), NO_RESAMPLING)
    vol = smooth_volume(GRID)
    res = Registrar(ck).register(torch.from_numpy(vol), vol[None], fixed_affine=np.diag([2.0, 2.0, 2.0, 1.0]))
    np.testing.assert_allclose(res.warped, vol, atol=1e-5)
    imgs = res.images()
    assert set(imgs) == {"fixed", "warped"}
    np.testing.assert_allclose(imgs["warped"].affine, np.diag([2.0, 2.0, 2.0, 1.0]))


def test_dice_tre_by_hand():
    a = np.zeros((10, 10, 10), np.uint8)
    b = np.zeros_like(a)
    a[0:4, 0:2, 0:2] = 1
    b[1:5, 0:2, 0:2] = 1
    b[7, 7, 7] = 3  # only in one map: Dice 0, no TRE
    m = dice_tre(a, b, np.diag([2.0, 1.0, 1.0, 1.0]), labels=(1, 2, 3))
    assert m["dice"] == pytest.approx({"1": 0.75, "3": 0.0})
    assert m["tre_mm"] == pytest.approx({"1": 2.0})


# ------------------------------------------------------------------ command line
@pytest.fixture
def pair_files(tmp_path):
    aff = oblique_affine()
    files = {
        "fixed": save(tmp_path / "f.nii.gz", smooth_volume(GRID), aff),
        "moving": save(tmp_path / "m.nii.gz", smooth_volume(GRID, 4), aff),
        "fixed_seg": save(tmp_path / "fs.nii.gz", boxes(GRID, 4), aff),
        "moving_seg": save(tmp_path / "ms.nii.gz", boxes(GRID, 6), aff),
    }
    return files


def _cli(*args):
    return main(["register", *map(str, args)])


def test_cli_with_real_vxm_unet(tmp_path, pair_files, capsys):
    parse_config(text="ddmr.build_model.backbone = @ddmr.backbones.vxm_unet()\n"
                      "ddmr.backbones.vxm_unet.widths = (4, 8)\nddmr.backbones.vxm_unet.head = (4,)\n")
    model = build_model()
    save_checkpoint(tmp_path / "vxm.pt", {
        "model": model.state_dict(), "gin_config": config_text(), "input_size": list(GRID),
        "labels": [1, 2], "preprocess": Preprocess(spacing=(1.5,) * 3, size=GRID).to_dict()})
    out = tmp_path / "out"
    rc = _cli("--fixed", pair_files["fixed"], "--moving", pair_files["moving"], "--fixed-seg",
              pair_files["fixed_seg"], "--moving-seg", pair_files["moving_seg"], "--model",
              tmp_path / "vxm.pt", "--out", out, "--original-resolution", "--outputs", "all")
    assert rc == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["fixed.nii.gz", "warped.nii.gz", "warped_seg.nii.gz", "field.nii.gz", "field.npz", "overview.png",
         "results.json"])
    summary = json.loads((out / "results.json").read_text())
    assert set(summary["timings_s"]) >= {"read", "preprocess", "predict", "apply"}
    assert set(summary["metrics"]) == {"before", "after", "trust"}
    assert set(summary["metrics"]["before"]["dice"]) == {"1", "2"}
    assert (out / "overview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    field, _ = load_field_itk(out / "field.nii.gz")
    disp, spacing, affine = load_field_npz(out / "field.npz")
    np.testing.assert_allclose(field, disp, atol=1e-4)
    np.testing.assert_allclose(affine, oblique_affine(), atol=1e-6)
    np.testing.assert_allclose(spacing, [0.8, 1.2, 2.0], atol=1e-6)
    seg = nib.load(str(out / "warped_seg.nii.gz"))
    assert seg.get_data_dtype() == np.uint8 and set(np.unique(seg.get_fdata())) <= {0, 1, 2}


def test_cli_pairs_load_the_model_once(tmp_path, pair_files, stand_in, monkeypatch):
    import ddmr_core.model.checkpoint as checkpoint

    field = np.zeros((3,) + GRID, np.float32)
    field[0] = 2.0
    ck = make_ckpt(tmp_path / "m.pt", field, NO_RESAMPLING)
    calls = []
    real = checkpoint.load_model
    monkeypatch.setattr(checkpoint, "load_model", lambda *a, **k: calls.append(a) or real(*a, **k))
    with open(tmp_path / "pairs.csv", "w", newline="") as fh:  # relative paths, one without segs
        w = csv.writer(fh)
        w.writerow(["pair", "fixed", "moving", "fixed_seg", "moving_seg"])
        w.writerow(["a", "f.nii.gz", "m.nii.gz", "fs.nii.gz", "ms.nii.gz"])
        w.writerow(["b", "m.nii.gz", "f.nii.gz", "", ""])
    out = tmp_path / "many"
    # --refine 0: the stand-in's exact field (ddmr register refines models without their own)
    assert _cli("--pairs", tmp_path / "pairs.csv", "--model", ck, "--out", out, "--refine", "0") == 0
    assert len(calls) == 1
    assert sorted(p.name for p in out.iterdir()) == ["a", "b", "summary.csv", "summary.json"]
    assert "warped_seg.nii.gz" in {p.name for p in (out / "a").iterdir()}
    assert "warped_seg.nii.gz" not in {p.name for p in (out / "b").iterdir()}
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [r["pair"] for r in rows] == ["a", "b"]
    assert float(rows[0]["dice_mean_after"]) == pytest.approx(1.0)
    assert float(rows[0]["dice_mean_before"]) == pytest.approx(0.625)


# ------------------------------------------------------------------ bad input
def _bad_inputs(tmp, files):
    aff = oblique_affine()
    (tmp / "junk.nii.gz").write_bytes(b"this is not a NIfTI file")
    save(tmp / "four_d.nii.gz", np.zeros(GRID + (2,), np.float32), aff)
    save(tmp / "two_d.nii.gz", np.zeros((16, 16), np.float32), aff)
    save(tmp / "seg_small.nii.gz", np.zeros((16, 16, 8), np.uint8), aff)
    moved = aff.copy()
    moved[0, 3] += 5.0  # same shape, origin 5 mm away
    save(tmp / "seg_moved.nii.gz", np.zeros(GRID, np.uint8), moved)
    return [
        (["--fixed", tmp / "missing.nii.gz", "--moving", files["moving"]], ["missing.nii.gz", "not found"]),
        (["--fixed", files["fixed"], "--moving", tmp / "junk.nii.gz"], ["junk.nii.gz", "cannot be read"]),
        (["--fixed", tmp / "four_d.nii.gz", "--moving", files["moving"]], ["four_d.nii.gz", "4-D"]),
        (["--fixed", files["fixed"], "--moving", tmp / "two_d.nii.gz"], ["two_d.nii.gz", "2-D"]),
        (["--fixed", files["fixed"], "--moving", files["moving"], "--fixed-seg", tmp / "seg_small.nii.gz"],
         ["seg_small.nii.gz", "shape"]),
        (["--fixed", files["fixed"], "--moving", files["moving"], "--moving-seg", tmp / "seg_moved.nii.gz"],
         ["seg_moved.nii.gz", "affine"]),
    ]


def test_bad_images_fail_cleanly(tmp_path, pair_files, stand_in, capsys):
    ck = make_ckpt(tmp_path / "m.pt", np.zeros((3,) + GRID), NO_RESAMPLING)
    fresh, kept = tmp_path / "fresh", tmp_path / "kept"
    kept.mkdir()  # an earlier output, which a successful run would replace
    (kept / "results.json").write_text("keep me")
    for args, words in _bad_inputs(tmp_path, pair_files):
        for out in (fresh, kept):
            capsys.readouterr()
            rc = _cli(*args, "--model", ck, "--out", out)
            err = capsys.readouterr().err
            assert rc != 0, args
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("ddmr: error:"), err
            for w in words:
                assert w in lines[0], (w, lines[0])
            assert not fresh.exists()
            assert sorted(p.name for p in kept.iterdir()) == ["results.json"]
            assert (kept / "results.json").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp folders


def test_library_raises_data_error(tmp_path, stand_in):
    ck = make_ckpt(tmp_path / "m.pt", np.zeros((3,) + GRID), NO_RESAMPLING)
    reg = Registrar(ck)
    with pytest.raises(DataError, match="4-D"):
        reg.register(np.zeros(GRID + (2,)), np.zeros(GRID))
    with pytest.raises(DataError, match="moving image segmentation.*shape"):
        reg.register(np.zeros(GRID), np.zeros(GRID), moving_seg=np.zeros((16, 16, 4), np.uint8))


def test_bad_checkpoints(tmp_path, pair_files, capsys):
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    for ck, words in [(tmp_path / "other.pt", "not a ddmr checkpoint"), (tmp_path / "text.pt", "cannot be read"),
                      (tmp_path / "none.pt", "not found")]:
        rc = _cli("--fixed", pair_files["fixed"], "--moving", pair_files["moving"], "--model", ck,
                  "--out", tmp_path / "out")
        err = capsys.readouterr().err
        assert rc != 0 and ck.name in err and words in err, err
        assert not (tmp_path / "out").exists()


def test_bad_pairs_csv_writes_nothing(tmp_path, pair_files, stand_in, capsys):
    ck = make_ckpt(tmp_path / "m.pt", np.zeros((3,) + GRID), NO_RESAMPLING)
    save(tmp_path / "four_d.nii.gz", np.zeros(GRID + (2,), np.float32), oblique_affine())
    with open(tmp_path / "pairs.csv", "w") as fh:
        fh.write("fixed,moving\nf.nii.gz,m.nii.gz\nf.nii.gz,four_d.nii.gz\n")
    out = tmp_path / "many"
    assert _cli("--pairs", tmp_path / "pairs.csv", "--model", ck, "--out", out) != 0
    assert "four_d.nii.gz" in capsys.readouterr().err
    assert not out.exists()
    with open(tmp_path / "pairs2.csv", "w") as fh:
        fh.write("fixed,moving\nf.nii.gz,gone.nii.gz\n")
    assert _cli("--pairs", tmp_path / "pairs2.csv", "--model", ck, "--out", out) != 0
    err = capsys.readouterr().err
    assert "pairs2.csv" in err and "line 2" in err and "gone.nii.gz" in err
    assert _cli("--fixed", pair_files["fixed"], "--model", ck, "--out", out) != 0
    assert "--moving" in capsys.readouterr().err
    assert _cli("--fixed", pair_files["fixed"], "--moving", pair_files["moving"], "--model", ck, "--out", out,
                "--device", "nonsense") != 0
    assert "nonsense" in capsys.readouterr().err
    assert not out.exists()


def test_checkpoint_grid_and_architecture_checks(tmp_path, stand_in):
    from ddmr_core.model.checkpoint import load_checkpoint
    from ddmr_core.errors import CheckpointError

    ck = load_checkpoint(make_ckpt(tmp_path / "m.pt", np.zeros((3,) + GRID), dict(spacing=None, size=GRID)))
    ck.pop("format"), ck.pop("input_size")  # a run that took its grid from the data
    save_checkpoint(tmp_path / "no_size.pt", ck)
    assert Registrar(tmp_path / "no_size.pt").input_size == GRID
    ck["preprocess"]["size"] = None
    save_checkpoint(tmp_path / "no_grid.pt", ck)
    with pytest.raises(CheckpointError, match="no_grid.pt.*no network grid"):
        Registrar(tmp_path / "no_grid.pt")
    ck["preprocess"]["size"] = list(GRID)
    ck["model"] = {"backbone.field": torch.zeros(1, 3, 8, 8, 8)}  # weights of another grid
    save_checkpoint(tmp_path / "other_arch.pt", ck)
    with pytest.raises(CheckpointError, match="other_arch.pt.*does not match"):
        Registrar(tmp_path / "other_arch.pt")


def test_the_refinement_can_be_set_again(tmp_path, stand_in):
    """set_refinement after construction: 'auto' is ddmr register's default (its steps and
    options) whatever was set before; the model's own config does not refine here."""
    from ddmr_core.registration.register import AUTO_REFINE_ITERATIONS, AUTO_REFINE_OPTIONS

    ck = make_ckpt(tmp_path / "m.pt", smooth_field(GRID, 2.0), NO_RESAMPLING)
    reg = Registrar(ck, refine=AUTO_REFINE_ITERATIONS + 40)
    assert reg.model.refine_iterations == AUTO_REFINE_ITERATIONS + 40
    reg.set_refinement("auto")
    assert reg.model.refine_iterations == AUTO_REFINE_ITERATIONS and reg.register_refinement
    assert reg.model.refine_options == AUTO_REFINE_OPTIONS
    reg.set_refinement(0)
    assert reg.model.refine_iterations == 0


def test_a_model_of_several_contrasts_gets_the_refinement_across_contrasts(tmp_path, stand_in):
    """ddmr register's default for a model whose card lists several contrasts: the pair put
    into one contrast, more steps, nodes every 2 mm, a stiffer correction at a constant
    step; a model of one contrast keeps the plain (annealed) refinement."""
    from ddmr_core.registration import register as R

    ck = make_ckpt(tmp_path / "m.pt", smooth_field(GRID, 2.0), NO_RESAMPLING)
    reg = Registrar(ck)
    reg.card = {"contrasts": ["T1", "T2"]}
    reg.set_refinement("auto")
    assert reg.model.refine_match_contrast and reg.model.refine_iterations == R.CROSS_CONTRAST_REFINE_ITERATIONS
    assert reg.model.refine_options == {**R.AUTO_REFINE_OPTIONS, "smoothness": R.CROSS_CONTRAST_SMOOTHNESS,
                                        "anneal": False}
    reg.card = {"contrasts": ["T1"]}
    reg.set_refinement("auto")
    assert not reg.model.refine_match_contrast and reg.model.refine_iterations == R.AUTO_REFINE_ITERATIONS
    assert reg.model.refine_options == R.AUTO_REFINE_OPTIONS
