"""``ddmr register`` on users' images (issue 15): one inference path shared with
``ddmr evaluate``, inference without label maps for every shipped recipe, and "before"
metrics of the unregistered images on the output grid.

The models are tiny real networks (the light ``vxm_unet`` of ``tests/tiny_workspace.py``
with random weights, at 16^3), saved in the trainer's checkpoint format."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import ddmr_core.evaluation.evaluate as evaluate_module
from ddmr_core.model.checkpoint import save_checkpoint
from ddmr_core.cli import main
from ddmr_core.config.parsing import config_text, parse_config
from ddmr_core.model.build import build_model
from ddmr_core.data.preprocess import Preprocess
from ddmr_core.registration.register import Registrar, dice_tre, image_ncc

ROOT = Path(__file__).resolve().parents[2]
NET = (16, 16, 16)


def tiny_checkpoint(path, preprocess: dict, refine_iterations=0, prealign=None, labels=(1, 2)):
    text = ("ddmr.build_model.backbone = @ddmr.backbones.vxm_unet()\n"
            "ddmr.backbones.vxm_unet.widths = (4, 8)\nddmr.backbones.vxm_unet.head = (4,)\n"
            f"ddmr.build_model.refine_iterations = {refine_iterations}\n")
    if prealign:
        text += f"ddmr.build_model.prealign = '{prealign}'\n"
    parse_config(text=text)
    torch.manual_seed(0)
    model = build_model()
    save_checkpoint(path, {"model": model.state_dict(), "gin_config": config_text(), "input_size": list(NET),
                           "labels": list(labels), "preprocess": Preprocess.from_dict(preprocess).to_dict()})
    return path


def blob_pair(shape=(24, 24, 24), shift=(2.0, -1.0, 1.5), background=0.0):
    """A smooth 'head' (zero outside, a skull-stripped brain) and the same head moved by
    ``shift`` voxels; label maps: inside (1) and a core (2)."""
    g = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"))
    centre = np.array([(n - 1) / 2 for n in shape], np.float32).reshape(3, 1, 1, 1)

    def head(c):
        r = np.sqrt((((g - c) / (np.array(shape).reshape(3, 1, 1, 1) * 0.3)) ** 2).sum(0))
        inside = r < 1.0
        img = np.where(inside, 0.4 + 0.6 * np.cos(3 * r) ** 2 * np.sin(0.5 * g[0] + 0.3 * g[1]) ** 2, background)
        seg = inside.astype(np.uint8) + (r < 0.5).astype(np.uint8)
        return img.astype(np.float32), seg

    fixed, fseg = head(centre)
    moving, mseg = head(centre + np.array(shift, np.float32).reshape(3, 1, 1, 1))
    return fixed, moving, fseg, mseg


def save(path, data, affine):
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return str(path)


# ------------------------------------------------------------ one inference path
def test_register_and_evaluate_give_the_same_field(tmp_path, monkeypatch):
    """One NIfTI pair, through ``Registrar.register`` and through ``ddmr evaluate``: the
    same field on the same grid. The model refines (instance optimisation) and works on
    16^3 while the images are 24^3, so where each step runs matters."""
    from ddmr_core.data.testset import finish_testset, write_pair

    ck = tiny_checkpoint(tmp_path / "m.pt", {"spacing": None, "size": list(NET), "percentiles": [0, 100]},
                         refine_iterations=3, prealign="affine")
    fixed, moving, fseg, mseg = blob_pair()
    for img in (fixed, moving):  # [0, 1] exactly: what both paths feed the network
        img /= img.max()
        assert img.min() == 0.0 and img.max() == 1.0
    aff = np.diag([1.5, 1.25, 1.0, 1.0])
    aff[:3, 3] = (-10.0, 5.0, 2.0)
    row = write_pair(tmp_path / "ts", "p0", fixed, moving, np.zeros((3,) + fixed.shape, np.float32), aff,
                     fixed_seg=fseg, moving_seg=mseg)
    finish_testset(tmp_path / "ts", [row], {"dataset": "x", "size": list(fixed.shape), "seed": 0, "pairs": 1,
                                            "labels": [1, 2]})
    reg = Registrar(ck)
    res = reg.register(tmp_path / "ts" / "p0" / "fixed.nii.gz", tmp_path / "ts" / "p0" / "moving.nii.gz")

    seen = {}
    real = evaluate_module.score_pair

    def spy(pair, disp, *args, **kwargs):
        seen[pair.name] = disp
        return real(pair, disp, *args, **kwargs)

    monkeypatch.setattr(evaluate_module, "score_pair", spy)
    ev = evaluate_module.evaluate(tmp_path / "ts", models=[str(ck)], out=tmp_path / "ev", metrics=["dsc"],
                                  device="cpu", figures=False, progress=lambda line: None)
    assert not ev.failures
    assert res.disp.shape == seen["p0"].shape == (3,) + fixed.shape
    np.testing.assert_allclose(res.affine, aff)
    np.testing.assert_allclose(res.disp, seen["p0"], atol=1e-5)
    np.testing.assert_allclose(res.model_disp, seen["p0"], atol=1e-5)
    # the refinement ran on the 24^3 grid in both: without it the field differs
    reg.model.refine_iterations = 0
    unrefined = reg.register(tmp_path / "ts" / "p0" / "fixed.nii.gz", tmp_path / "ts" / "p0" / "moving.nii.gz")
    assert np.abs(unrefined.disp - res.disp).max() > 1e-3


# ------------------------------------------------------- inference without labels
def shipped_recipes() -> dict:
    """Every distinct preprocessing recipe a shipped config trains a model with (the
    experiments and the data mix-ins), network size 16^3."""
    from ddmr_core.data.datasets import build_dataset

    recipes = {}
    configs = sorted((ROOT / "configs" / "experiments").glob("*/*.gin")) + sorted(
        (ROOT / "configs" / "mixins" / "data").glob("*.gin"))
    for path in configs:
        rel = str(path.relative_to(ROOT / "configs"))
        parse_config([rel], [] if "experiments" in rel else ["SIZE = (16, 16, 16)"])
        recipe = dict(build_dataset().preprocess)
        recipe["size"] = list(NET)
        recipes.setdefault(json.dumps(recipe, sort_keys=True), rel)
    return {rel: json.loads(key) for key, rel in recipes.items()}


RECIPES = shipped_recipes()


def test_the_shipped_recipes_include_label_crops():
    crops = {json.dumps(r["crop_labels"]) for r in RECIPES.values()}
    assert '"all"' in crops and "[1, 2]" in crops and "null" in crops  # brain, abdomen, synthetic


@pytest.mark.parametrize("config", sorted(RECIPES))
def test_register_without_label_maps_for_every_shipped_recipe(config, tmp_path, capsys):
    recipe = RECIPES[config]
    ck = tiny_checkpoint(tmp_path / "m.pt", recipe, refine_iterations=2)
    fixed, moving, fseg, mseg = blob_pair((30, 28, 26))
    if recipe["window"]:  # CT: Hounsfield units, air outside
        fixed, moving = fixed * 200 - 50 - 950 * (fseg == 0), moving * 200 - 50 - 950 * (mseg == 0)
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    f, m = save(tmp_path / "f.nii.gz", fixed, aff), save(tmp_path / "m.nii.gz", moving, aff)
    out = tmp_path / "out"
    assert main(["register", "--fixed", f, "--moving", m, "--model", str(ck), "--out", str(out)]) == 0, \
        capsys.readouterr().err
    summary = json.loads((out / "results.json").read_text())
    assert summary["inputs"]["crop"] == ("none" if recipe["crop_labels"] is None else "foreground")
    assert set(summary["metrics"]["before"]) == {"ncc"} and "NCC" in capsys.readouterr().out
    # with both label maps, a recipe that crops around labels crops around them, as in training
    fs, ms = save(tmp_path / "fs.nii.gz", fseg, aff), save(tmp_path / "ms.nii.gz", mseg, aff)
    reg = Registrar(ck)
    res = reg.register(f, m, fs, ms)
    assert res.inputs["crop"] == ("none" if recipe["crop_labels"] is None else "labels")
    assert res.metrics["after"]["dice_mean"] is not None
    # label maps numbered otherwise (another atlas): scored, and the crop is the foreground
    other = [save(tmp_path / f"{k}9.nii.gz", (seg > 0).astype(np.uint8) * 9, aff) for k, seg in
             (("fs", fseg), ("ms", mseg))]
    res = reg.register(f, m, *other)
    crop = recipe["crop_labels"]  # "all": any label is one to crop around
    assert res.inputs["crop"] == ("none" if crop is None else "labels" if crop == "all" else "foreground")


def test_foreground_crop_reproduces_the_label_crop_on_skull_stripped_images(tmp_path):
    """The brain recipe crops around every label; the MNI template is zero outside the
    brain, so the foreground is what its label map covers: with or without label maps,
    the same working grid and the same field."""
    recipe = next(r for r in RECIPES.values() if r["crop_labels"] == "all")
    ck = tiny_checkpoint(tmp_path / "m.pt", recipe, refine_iterations=2)
    fixed, moving, fseg, mseg = blob_pair((30, 28, 26))
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    paths = [save(tmp_path / f"{k}.nii.gz", v, aff) for k, v in
             (("f", fixed), ("m", moving), ("fs", fseg), ("ms", mseg))]
    reg = Registrar(ck)
    with_labels = reg.register(*paths)
    without = reg.register(*paths[:2])
    assert with_labels.inputs["crop"] == "labels" and without.inputs["crop"] == "foreground"
    assert with_labels.warped.shape == without.warped.shape
    assert without.warped.shape != fixed.shape  # cropped: the head is smaller than the image
    np.testing.assert_allclose(with_labels.affine, without.affine, atol=1e-6)
    np.testing.assert_allclose(with_labels.disp, without.disp, atol=1e-4)


# ------------------------------------------------------------- "before" metrics
def test_before_metrics_are_the_unregistered_images_on_the_output_grid(tmp_path, capsys):
    """Each image is cropped around its own labels, so the crop boxes follow the head:
    the network sees them aligned, but "before" must score the images as they lie in the
    world, resampled onto the output grid (here a crop of the original grid)."""
    recipe = {"spacing": None, "size": list(NET), "crop_labels": "all", "crop_margin": 8.0, "percentiles": [0, 100]}
    ck = tiny_checkpoint(tmp_path / "m.pt", recipe)
    fixed, moving, fseg, mseg = blob_pair((30, 28, 26), shift=(3.0, 0.0, -2.0))
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    paths = [save(tmp_path / f"{k}.nii.gz", v, aff) for k, v in
             (("f", fixed), ("m", moving), ("fs", fseg), ("ms", mseg))]
    out = tmp_path / "out"
    assert main(["register", "--fixed", paths[0], "--moving", paths[1], "--fixed-seg", paths[2], "--moving-seg",
                 paths[3], "--model", str(ck), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "results.json").read_text())
    before = summary["metrics"]["before"]
    # the output grid is a crop of the original grid (no resampling): the same voxels
    grid = np.asarray(summary["output_affine"])
    lo = np.round(grid[:3, 3]).astype(int)
    box = tuple(slice(a, a + n) for a, n in zip(lo, summary["output_shape"]))
    assert fseg[box].sum() == fseg.sum() and mseg[box].sum() == mseg.sum()  # both heads inside
    expected = dice_tre(fseg, mseg, aff, (1, 2))
    assert before["dice"] == pytest.approx(expected["dice"], abs=1e-9)
    assert before["tre_mm"] == pytest.approx(expected["tre_mm"], abs=1e-6)
    assert before["dice_mean"] < 0.9  # not the crop-aligned 1.0 the network's voxels would give
    assert before["ncc"] == pytest.approx(image_ncc(fixed[box], moving[box]), abs=1e-5)
    assert f"Dice {before['dice_mean']:.3f} ->" in printed and f"NCC {before['ncc']:.3f} ->" in printed
    saved_fixed = nib.load(str(out / "fixed.nii.gz")).get_fdata()
    np.testing.assert_allclose(saved_fixed, fixed[box], atol=1e-6)
