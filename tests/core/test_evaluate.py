"""End-to-end evaluation on a tiny hand-written test set: identity, a model checkpoint,
an ANTs baseline, a broken checkpoint and a pair with a missing file."""

import csv
import math

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from ddmr_core.model.checkpoint import save_checkpoint
from ddmr_core.cli import main as cli_main
from ddmr_core.errors import DataError
from ddmr_core.data.testset import read_testset
from ddmr_core.evaluation.evaluate import evaluate
from ddmr_core.evaluation.scoring import to_original_grid
from ddmr_core.plugins.hookspecs import hookimpl
from ddmr_core.plugins.manager import get_plugin_manager
from ddmr_core.plugins.registry import Registry
from ddmr_core.spatial.fields import warp
from ddmr_plugins.datasets.synthetic import make_phantom

SHAPE = (24, 24, 24)
SPACING = (1.5, 1.0, 1.25)
SHIFT = np.array([1.5, -1.0, 2.0])  # voxels: the ground-truth pull field of every pair
NET = (16, 16, 16)  # the test model's input grid differs from the test grid on purpose


class ShiftNet(nn.Module):
    """A 'network' predicting one learned constant field (its weights are the shift)."""

    def __init__(self):
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(3))

    def forward(self, fixed, moving):
        return self.shift.view(1, 3, 1, 1, 1).expand(fixed.shape[0], 3, *fixed.shape[2:]).contiguous()


class _TestPlugin:
    @hookimpl
    def ddmr_backbones(self):
        return {"test_shift": ShiftNet}


@pytest.fixture
def registry():
    return Registry(get_plugin_manager(autoload=False, extra_plugins=[("test_eval", _TestPlugin())]), bind_gin=False)


def _write_testset(root, n_pairs=3):
    root.mkdir(parents=True, exist_ok=True)
    affine = np.diag(list(SPACING) + [1.0])
    rows = []
    for k in range(n_pairs):
        fixed, seg = make_phantom(SHAPE, 2, seed=10 + k)
        t = torch.from_numpy(-SHIFT).float().view(1, 3, 1, 1, 1).expand(1, 3, *SHAPE)
        # moving(y) = fixed(y - SHIFT): the pull field registering it is +SHIFT
        moving = warp(torch.from_numpy(fixed)[None, None], t)[0, 0].numpy()
        moving_seg = warp(torch.from_numpy(seg)[None, None], t, mode="nearest")[0, 0].numpy()
        name = f"pair_{k:03d}"
        d = root / name
        d.mkdir()
        for fname, arr in (("fixed", fixed), ("moving", moving), ("fixed_seg", seg), ("moving_seg", moving_seg)):
            nib.save(nib.Nifti1Image(arr, affine), str(d / f"{fname}.nii.gz"))
        disp = np.broadcast_to(SHIFT.reshape(3, 1, 1, 1), (3,) + SHAPE).astype(np.float32)
        np.savez(d / "disp_true.npz", disp=disp, spacing=np.asarray(SPACING), affine=affine)
        rows.append({"pair": name, "fixed": f"{name}/fixed.nii.gz", "moving": f"{name}/moving.nii.gz",
                     "fixed_seg": f"{name}/fixed_seg.nii.gz", "moving_seg": f"{name}/moving_seg.nii.gz",
                     "disp_true": "", "disp_true_npz": f"{name}/disp_true.npz"})
    with open(root / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (root / "testset.json").write_text(
        '{"dataset": "synthetic", "size": [24, 24, 24], "seed": 0, "pairs": %d, "labels": [1, 2]}' % n_pairs)
    return root


def _checkpoint(path):
    model = nn.Module()
    model.backbone = ShiftNet()
    with torch.no_grad():  # the network grid is 16^3: its field is rescaled by 24/16 to the test grid
        model.backbone.shift.copy_(torch.from_numpy(SHIFT * 16 / 24).float())
    save_checkpoint(path, {"model": model.state_dict(), "input_size": list(NET), "labels": [1, 2],
                           "gin_config": "ddmr.build_model.backbone = @ddmr.backbones.test_shift()\n"})
    return path


def _read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_evaluate_end_to_end(tmp_path, registry):
    root = _write_testset(tmp_path / "ts")
    (root / "pair_002" / "moving.nii.gz").unlink()  # a broken pair
    ckpt = _checkpoint(tmp_path / "shift.pt")
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    lines = []
    res = evaluate(root, models=[f"shift={ckpt}", str(bad)], baselines=["identity", "ants_syn"],
                   out=tmp_path / "out", registry=registry, progress=lines.append, device="cpu")
    rows = _read_csv(tmp_path / "out" / "per_pair.csv")
    assert len(rows) == 4 * 3  # one row per method and pair, failures included
    by = {(r["method"], r["pair"]): r for r in rows}
    # the broken checkpoint is recorded on every pair, with a message naming it
    assert all("broken.pt" in by[("broken", p)]["error"] for p in ("pair_000", "pair_001", "pair_002"))
    # the pair with a missing file is recorded for every method, naming the file
    assert all("moving.nii.gz" in by[(m, "pair_002")]["error"] for m in ("shift", "identity", "ants_syn"))
    assert res.failures == 3 + 3  # broken x 3 pairs, the 3 other methods on the broken pair
    for p in ("pair_000", "pair_001"):
        ident, model, syn = by[("identity", p)], by[("shift", p)], by[("ants_syn", p)]
        assert ident["error"] == model["error"] == syn["error"] == ""
        # identity: the field is zero, so the EPE is the shift in mm and nothing folds
        assert float(ident["epe"]) == pytest.approx(np.linalg.norm(SHIFT * SPACING), rel=1e-5)
        assert float(ident["folding"]) == 0.0
        # the model predicts the true field through the resize to its 16^3 grid
        assert float(model["epe"]) == pytest.approx(0.0, abs=1e-4)
        assert float(model["dsc"]) > float(ident["dsc"]) + 0.2
        assert float(syn["dsc"]) > float(ident["dsc"])
        assert float(syn["tre"]) < float(ident["tre"])
        for col in ("ssim", "ncc", "dsc", "dsc_1", "dsc_2", "hd", "hd95", "tre", "runtime", "sdlogj"):
            assert math.isfinite(float(model[col])), col
    # identity's scores agree with metrics computed directly on the unregistered pair
    pair = read_testset(root).load(0)
    from ddmr_plugins.metrics.segmentation import dice
    assert float(by[("identity", "pair_000")]["dsc_1"]) == pytest.approx(dice(pair.fixed_seg == 1, pair.moving_seg == 1))
    # progress: one line per method and pair
    assert sum(1 for line in lines if line.startswith("[")) == 12
    summary = (tmp_path / "out" / "summary.md").read_text()
    header = next(line for line in summary.splitlines() if line.startswith("| Method"))
    assert [c.strip() for c in header.strip("|").split("|")][:8] == [
        "Method", "SSIM", "NCC", "DSC", "HD (mm)", "HD95 (mm)", "TRE (mm)", "Runtime (s)"]
    table = {}
    for line in summary.split("## Beyond")[0].splitlines():
        if line.startswith("| ") and not line.startswith("| Method"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            table[cells[0]] = cells[1:]
    assert table["broken"][-1] == "0/3" and table["shift"][-1] == "2/3"
    assert "±" in table["shift"][2] and "±" not in table["shift"][4]  # DSC mean±std; HD95 one figure
    # the best mean is in bold: highest DSC (column 2), lowest TRE (column 5)
    def mean(method, col):
        return np.mean([float(by[(method, p)][col]) for p in ("pair_000", "pair_001")])
    ok = ("shift", "identity", "ants_syn")
    assert table[max(ok, key=lambda m: mean(m, "dsc"))][2].startswith("**")
    assert table[min(ok, key=lambda m: mean(m, "tre"))][5].startswith("**")
    assert not table["identity"][2].startswith("**")
    assert "## Failures" in summary and "broken" in summary
    for name in ("boxplots.png", "median_pair_shift.png", "median_pair_identity.png", "median_pair_ants_syn.png"):
        assert (tmp_path / "out" / name).stat().st_size > 1000, name


def test_cli_bad_input_and_unavailable_baseline(tmp_path, monkeypatch, capsys):
    root = _write_testset(tmp_path / "ts", n_pairs=1)
    # a test set folder without a manifest: one clear message, non-zero exit
    assert cli_main(["evaluate", "--testset", str(tmp_path), "--baseline", "identity", "--out", str(tmp_path / "o")]) == 2
    assert "manifest.csv" in capsys.readouterr().err
    # no method at all
    assert cli_main(["evaluate", "--testset", str(root), "--out", str(tmp_path / "o")]) == 2
    # a baseline whose library is missing: recorded, the other method's results are kept
    from ddmr_plugins.baselines import ants as ants_mod
    monkeypatch.setattr(ants_mod, "ants_available", lambda: False)
    rc = cli_main(["evaluate", "--testset", str(root), "--baseline", "identity", "--baseline", "ants_syncc",
                   "--out", str(tmp_path / "o"), "--no-figures", "--metric", "dsc", "--metric", "runtime"])
    assert rc == 1
    out = capsys.readouterr().out
    assert "antspyx" in out and "ants_syncc" in out
    rows = {r["method"]: r for r in _read_csv(tmp_path / "o" / "per_pair.csv")}
    assert "antspyx" in rows["ants_syncc"]["error"] and rows["ants_syncc"]["dsc"] == ""
    assert rows["identity"]["error"] == "" and float(rows["identity"]["dsc"]) > 0
    assert list(rows["identity"])[:5] == ["method", "kind", "pair", "dsc", "dsc_1"]
    # gin bindings configure the metrics: a global NCC instead of the local one
    rc = cli_main(["evaluate", "--testset", str(root), "--baseline", "identity", "--out", str(tmp_path / "g"),
                   "--no-figures", "--metric", "ncc", "--gin", "ddmr.metrics.ncc.win = None"])
    assert rc == 0
    pair = read_testset(root).load(0)
    ncc = float(_read_csv(tmp_path / "g" / "per_pair.csv")[0]["ncc"])
    assert ncc == pytest.approx(np.corrcoef(pair.fixed.ravel(), pair.moving.ravel())[0, 1], abs=1e-5)
    # a binding naming a parameter that does not exist: one clear message
    assert cli_main(["evaluate", "--testset", str(root), "--baseline", "identity", "--out", str(tmp_path / "g"),
                     "--gin", "ddmr.baselines.identity.nope = 1"]) == 2
    assert "nope" in capsys.readouterr().err


def test_testset_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_testset(tmp_path / "nope")
    (tmp_path / "manifest.csv").write_text("pair,fixed\nx,a.nii.gz\n")
    (tmp_path / "testset.json").write_text('{"labels": [1]}')
    with pytest.raises(DataError, match="moving"):
        read_testset(tmp_path)
    (tmp_path / "manifest.csv").write_text("pair,fixed,moving\n")
    with pytest.raises(DataError, match="no pairs"):
        read_testset(tmp_path)


def test_original_resolution_field(tmp_path, registry):
    """A test grid that is the original grid resized 2x: the field is carried back
    through the affines, a constant shift in mm stays the same shift in mm."""
    from ddmr_core.spatial.grids import resize_affine
    orig_shape = (32, 32, 32)
    a0 = np.diag([0.75, 0.5, 0.625, 1.0])
    a = resize_affine(a0, orig_shape, (16, 16, 16))
    disp = np.broadcast_to(np.array([1.0, -0.5, 0.25]).reshape(3, 1, 1, 1), (3, 16, 16, 16)).astype(np.float32)
    v = to_original_grid(disp, a, orig_shape, a0)
    np.testing.assert_allclose(v[:, 4:-4, 4:-4, 4:-4].reshape(3, -1).mean(1), [2.0, -1.0, 0.5], atol=1e-5)
    # the same as resize_field, the toolkit's own resampling of a field
    from ddmr_core.spatial.fields import resize_field
    ref = resize_field(torch.from_numpy(disp)[None], orig_shape)[0].numpy()
    np.testing.assert_allclose(v, ref, atol=1e-4)


def test_evaluate_at_original_resolution(tmp_path, registry):
    """Originals on a 2x finer grid: with original_resolution the fields are carried
    there and every metric is computed on the original volumes."""
    from ddmr_core.spatial.fields import resize_image
    from ddmr_core.spatial.grids import resize_affine
    from ddmr_plugins.metrics.segmentation import dice

    root = tmp_path / "ts"
    (root / "p0").mkdir(parents=True)
    big = tuple(2 * n for n in SHAPE)
    a0 = np.diag([s / 2 for s in SPACING] + [1.0])
    a = resize_affine(a0, big, SHAPE)
    fixed0, seg0 = make_phantom(big, 2, seed=3)
    t = torch.from_numpy(-2 * SHIFT).float().view(1, 3, 1, 1, 1).expand(1, 3, *big)
    moving0 = warp(torch.from_numpy(fixed0)[None, None], t)[0, 0].numpy()
    mseg0 = warp(torch.from_numpy(seg0)[None, None], t, mode="nearest")[0, 0].numpy()
    vols = {"fixed_original": (fixed0, a0), "moving_original": (moving0, a0),
            "fixed_seg_original": (seg0, a0), "moving_seg_original": (mseg0, a0)}
    for key, arr0 in (("fixed", fixed0), ("moving", moving0), ("fixed_seg", seg0), ("moving_seg", mseg0)):
        mode = "nearest" if "seg" in key else "linear"
        vols[key] = (resize_image(torch.from_numpy(arr0)[None, None], SHAPE, mode)[0, 0].numpy(), a)
    row = {"pair": "p0"}
    for key, (arr, aff) in vols.items():
        nib.save(nib.Nifti1Image(arr, aff), str(root / "p0" / f"{key}.nii.gz"))
        row[key] = f"p0/{key}.nii.gz"
    disp = np.broadcast_to(SHIFT.reshape(3, 1, 1, 1), (3,) + SHAPE).astype(np.float32)
    np.savez(root / "p0" / "disp_true.npz", disp=disp, spacing=np.asarray(SPACING), affine=a)
    row["disp_true_npz"] = "p0/disp_true.npz"
    with open(root / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(row))
        w.writeheader()
        w.writerow(row)
    (root / "testset.json").write_text(
        '{"dataset": "synthetic", "size": [24, 24, 24], "seed": 0, "pairs": 1, "labels": [1, 2]}')
    ckpt = _checkpoint(tmp_path / "shift.pt")
    runs = {}
    for orig in (False, True):
        out = tmp_path / f"out_{orig}"
        evaluate(root, models=[f"shift={ckpt}"], baselines=["identity"], out=out, registry=registry,
                 original_resolution=orig, metrics=["dsc", "epe", "hd"], progress=lambda s: None, figures=False)
        runs[orig] = {r["method"]: r for r in _read_csv(out / "per_pair.csv")}
    ident, model = runs[True]["identity"], runs[True]["shift"]
    assert ident["error"] == model["error"] == ""
    # identity at the original resolution: the Dice of the original label maps themselves
    assert float(ident["dsc_1"]) == pytest.approx(dice(seg0 == 1, mseg0 == 1))
    assert float(ident["dsc_1"]) != pytest.approx(float(runs[False]["identity"]["dsc_1"]))
    # the field is physical: its error in mm does not depend on the grid it is scored on
    assert float(ident["epe"]) == pytest.approx(np.linalg.norm(SHIFT * SPACING), rel=1e-4)
    assert float(model["epe"]) == pytest.approx(0.0, abs=1e-3)
    # the finer grid registers the labels better than the coarse one
    assert float(model["dsc"]) > float(runs[False]["shift"]["dsc"])
    # HD on the finer grid resolves half-voxels of the test grid
    assert float(model["hd"]) < float(runs[False]["shift"]["hd"])


class _Crash(BaseException):
    pass


class _CrashingBaseline:
    calls = 0

    def available(self):
        return True

    def register(self, fixed, moving, spacing):
        _CrashingBaseline.calls += 1
        if _CrashingBaseline.calls == 2:
            raise _Crash("power cut")  # not an Exception: it ends the run, like a kill
        return np.zeros((3,) + fixed.shape, np.float32)


class _CrashPlugin:
    @hookimpl
    def ddmr_baselines(self):
        return {"crashing": _CrashingBaseline}


def test_a_crash_leaves_the_earlier_report_as_it_was(tmp_path):
    """The report folder is written whole or not at all: a crash mid-way (here on the
    second pair) neither publishes a partial report nor touches the earlier one."""
    root = _write_testset(tmp_path / "ts", n_pairs=3)
    reg = Registry(get_plugin_manager(autoload=False, extra_plugins=[("crash", _CrashPlugin())]), bind_gin=False)
    evaluate(root, baselines=["identity"], out=tmp_path / "out", registry=reg, metrics=["dsc"],
             progress=lambda s: None, figures=False)
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    assert set(before) == {"per_pair.csv", "summary.md"}
    _CrashingBaseline.calls = 0
    with pytest.raises(_Crash):
        evaluate(root, baselines=["identity", "crashing"], out=tmp_path / "out", registry=reg,
                 metrics=["dsc"], progress=lambda s: None, figures=False)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "ts"]  # no temporary folder left
    _CrashingBaseline.calls = 0
    with pytest.raises(_Crash):  # into a new folder: nothing is published
        evaluate(root, baselines=["identity", "crashing"], out=tmp_path / "new", registry=reg,
                 metrics=["dsc"], progress=lambda s: None, figures=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "ts"]


def test_reads_what_the_testset_writer_writes(tmp_path):
    from ddmr_core.data.testset import finish_testset, write_pair

    fixed, seg = make_phantom(SHAPE, 2, seed=5)
    affine = np.diag(list(SPACING) + [1.0])
    disp = np.broadcast_to(SHIFT.reshape(3, 1, 1, 1), (3,) + SHAPE).astype(np.float32)
    row = write_pair(tmp_path / "ts", "p0", fixed, fixed, disp, affine, fixed_seg=seg, moving_seg=seg)
    finish_testset(tmp_path / "ts", [row], {"dataset": "synthetic", "size": 24, "seed": 0, "pairs": 1, "labels": [1, 2]})
    res = evaluate(tmp_path / "ts", baselines=["identity"], out=tmp_path / "out", metrics=["dsc", "epe"],
                   progress=lambda s: None, figures=False)
    (row,) = res.rows
    assert row["error"] == "" and row["dsc"] == pytest.approx(1.0)
    assert row["epe"] == pytest.approx(np.linalg.norm(SHIFT * SPACING), rel=1e-5)


def test_unrefined_rows_score_the_network_alone(tmp_path, registry):
    # a network predicting nothing, refined at inference: the refined rows must beat the
    # "(no refinement)" rows, which are exactly the identity's
    root = _write_testset(tmp_path / "ts", n_pairs=2)
    path = tmp_path / "zero.pt"
    model = nn.Module()
    model.backbone = ShiftNet()
    save_checkpoint(path, {"model": model.state_dict(), "input_size": list(NET), "labels": [1, 2],
                           "gin_config": "ddmr.build_model.backbone = @ddmr.backbones.test_shift()\n"
                                         "ddmr.build_model.refine_iterations = 40\n"})
    res = evaluate(root, models=[f"zero={path}"], baselines=["identity"], out=tmp_path / "ev", registry=registry,
                   metrics=["ncc"], figures=False, unrefined=True, device="cpu", progress=lambda line: None)
    assert not res.failures
    rows = _read_csv(tmp_path / "ev" / "per_pair.csv")
    ncc = {}
    for r in rows:
        ncc.setdefault(r["method"], []).append(float(r["ncc"]))
    assert set(ncc) == {"zero", "zero (no refinement)", "identity"}
    np.testing.assert_allclose(ncc["zero (no refinement)"], ncc["identity"], atol=1e-6)
    assert min(ncc["zero"]) > max(ncc["identity"]) + 0.05
