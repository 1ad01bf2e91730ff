"""The model zoo (issue 35): versions, sha256 checked at load time, model cards, ``ddmr models``.

The shipped releases (``plugins/models/weights``) are checked as they are: every card
against the schema, every weight file against ``SHA256SUMS``, the MNI ICBM152 notice and
the generated block of ``docs/models.md``. Behaviour (versions, tampering, input checks,
listing, export) is checked on zoo folders of the tiny 16^3 checkpoint
(``tests/tiny_workspace.py``), registered through a test plugin."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import ddmr_plugins.models as builtin
from ddmr_core.model.checkpoint import resolve_model
from ddmr_core.cli import main
from ddmr_core.errors import DataError, ModelInputWarning
from ddmr_core.plugins.hookspecs import hookimpl
from ddmr_core.model.card import CardError, input_mismatch, markdown_block, replace_block, validate_card
from ddmr_core.model.publish import add_release, record_sha256
from ddmr_core.registration.register import Registrar
from ddmr_core.model.zoo import IntegrityError, Release, field_description, folder_models, read_sums

ROOT = Path(__file__).resolve().parents[1]
NOTICE = "NOTICE-MNI-ICBM152.txt"


def _input_notes(err: str) -> list:
    """stderr lines less the quality warnings of the tiny untrained models' results
    (``ddmr_core.registration.trust.assess``), which these tests are not about."""
    return [x for x in err.strip().splitlines() if "untrustworthy result" not in x]


def shipped_releases() -> list[Release]:
    return [r for releases in builtin.shipped().values() for r in releases]


# ------------------------------------------------------------ shipped models
def test_every_shipped_release_has_a_valid_card_a_changelog_and_its_sha256():
    releases = shipped_releases()
    assert {r.name for r in releases} >= {"brain-mr", "abdomen-ct"}
    sums = read_sums(builtin.WEIGHTS / "SHA256SUMS")
    for r in releases:
        assert r.card is not None, r.card_error
        validate_card(r.card, r.ref, name=r.name, version=r.version, folder=builtin.WEIGHTS)
        assert any(c["version"] == r.version for c in r.card["changelog"])
        # the registry holds the digest of the file as shipped, and nothing else is listed
        assert sums[r.path.name] == hashlib.sha256(r.path.read_bytes()).hexdigest() == r.sha256
        assert r.size <= 2 * 1024 * 1024
        assert isinstance(r.card["contrasts"], list) and r.card["contrasts"]
        assert "clinical" in r.card["intended_use"]
        assert resolve_model(r.ref) == r.path  # by NAME@VERSION, its sha256 checked
    assert set(sums) == {r.path.name for r in releases}


def test_brain_mr_carries_the_mni_notice_and_abdomen_ct_says_synthetic():
    brain = max(builtin.shipped()["brain-mr"], key=lambda r: [int(p) for p in r.version.split(".")])
    assert brain.card["input"]["intensity_units"] == "arbitrary" and brain.card["contrasts"] == ["T1"]
    assert NOTICE in brain.card["notices"] and (builtin.WEIGHTS / NOTICE).is_file()
    notice = (builtin.WEIGHTS / NOTICE).read_text()
    # the notice as nibabel's COPYING reproduces it for the MNI ICBM152 2009a template, verbatim
    assert "Copyright (C) 1993-2004 Louis Collins, McConnell Brain Imaging Centre,\n" in notice
    assert "provided\nthat the above copyright notice appear in all copies." in notice
    abdomen = builtin.shipped()["abdomen-ct"][-1]
    assert abdomen.card["training_data"]["synthetic"] is True
    assert "SYNTHETIC" in abdomen.card["training_data"]["description"]
    assert abdomen.card["input"]["intensity_units"] == "HU" and abdomen.card["contrasts"] == ["CT"]
    # the docs reproduce the notice too
    docs = (ROOT / "docs" / "models.md").read_text()
    body = notice[notice.index("Copyright (C)"):notice.index("software package.") + len("software package.")]
    assert body in docs


def test_docs_models_md_holds_the_block_generated_from_the_cards():
    items = [(r, r.card, {p.name: p.read_text() for p in r.notices}) for r in shipped_releases()]
    docs = (ROOT / "docs" / "models.md").read_text()
    expected = replace_block(docs, markdown_block(items))
    assert docs == expected, ("docs/models.md is out of date with the shipped cards: regenerate its block with "
                              "`DDMR_DISABLE_PLUGIN_AUTOLOAD=1 ddmr models --markdown`")
    for r in shipped_releases():
        assert f"`{r.ref}`" in docs and r.sha256 in docs


def test_a_card_missing_a_field_or_mislabelled_is_refused_in_one_line():
    card = copy.deepcopy(builtin.shipped()["brain-mr"][0].card)
    validate_card(card, "ok")
    for field in ("intended_use", "contrasts", "changelog", "weights_licence", "training_data"):
        bad = {k: v for k, v in card.items() if k != field}
        with pytest.raises(CardError, match=f"'{field}' is a required property"):
            validate_card(bad, "x")
    bad = copy.deepcopy(card)
    del bad["training_data"]["licence"]
    with pytest.raises(CardError, match="training_data: 'licence' is a required property"):
        validate_card(bad, "x")
    bad = copy.deepcopy(card)
    bad["contrasts"] = "T1"  # a list, so that `ddmr register` can match pairs against it
    with pytest.raises(CardError, match="contrasts: 'T1' is not of type 'array'"):
        validate_card(bad, "x")
    bad = copy.deepcopy(card)
    bad["metrics"][0].pop("command")
    with pytest.raises(CardError, match="metrics/0: 'command' is a required property"):
        validate_card(bad, "x")
    with pytest.raises(CardError, match="version '1' is not the release's version '2'"):
        validate_card(card, "x", name="brain-mr", version="2")
    bad = copy.deepcopy(card)
    bad["version"] = "2"
    with pytest.raises(CardError, match="changelog has no entry for version '2'"):
        validate_card(bad, "x")
    with pytest.raises(CardError, match="notice file"):
        validate_card(card, "x", folder=ROOT)


# --------------------------------------------------------------- a test zoo
def tiny_card(name: str, version: str, units: str = "arbitrary") -> dict:
    card = copy.deepcopy(builtin.shipped()["brain-mr"][0].card)
    card.update(name=name, version=version, notices=[],
                changelog=[{"version": version, "date": "2026-12-05", "changes": "test release"}])
    card["input"]["intensity_units"] = units
    card["input"].pop("extent_mm")  # the tiny models are trained on the workspaces' 16^3 volumes, not brains
    card["modalities"], card["contrasts"] = (["CT"], ["CT"]) if units == "HU" else (["MR"], ["T1"])
    return card


class ZooPlugin:
    def __init__(self, folder, extra=None):
        self.folder, self.extra = folder, extra or {}

    @hookimpl
    def ddmr_models(self):
        return {**folder_models(self.folder), **self.extra}


@pytest.fixture
def zoo(tiny_workspace, tmp_path, monkeypatch):
    """A zoo folder with ``tiny-mr@1`` and ``tiny-mr@2`` (other weights), ``tiny-ct@1``, and
    a third-party model ``legacy-mr`` whose factory returns only a path; installed as a
    plugin for every registry (the CLI's too)."""
    import ddmr_core.plugins.registry as registry

    folder = tmp_path / "zoo"
    folder.mkdir()
    good = torch.load(tiny_workspace["good"], weights_only=True)
    v2 = dict(good, model={k: (v + 0.01 if v.is_floating_point() else v) for k, v in good["model"].items()})
    for ref, state, units in (("tiny-mr@1", good, "arbitrary"), ("tiny-mr@2", v2, "arbitrary"),
                              ("tiny-ct@1", good, "HU")):
        torch.save(state, folder / f"{ref}.pt")
        name, version = ref.split("@")
        add_release(folder / f"{ref}.pt", tiny_card(name, version, units))
    real = registry.get_plugin_manager
    extra = {"legacy-mr": lambda: Path(tiny_workspace["good"])}

    def patched(autoload=None, extra_plugins=()):
        return real(autoload, list(extra_plugins) + [("test_zoo", ZooPlugin(folder, extra))])

    monkeypatch.setattr(registry, "get_plugin_manager", patched)
    return folder


def _model_of(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())["model"]


def test_name_takes_the_newest_release_and_name_at_version_that_one(zoo, tiny_workspace, tmp_path, capsys):
    ws = tiny_workspace
    sums = read_sums(zoo / "SHA256SUMS")
    for spec, version in (("tiny-mr", "2"), ("tiny-mr@2", "2"), ("tiny-mr@1", "1")):
        out = tmp_path / spec
        assert main(["register", "--fixed", ws["f"], "--moving", ws["m"], "--model", spec, "--out", str(out)]) == 0
        model = _model_of(out)
        assert (model["name"], model["version"], model["ref"]) == ("tiny-mr", version, f"tiny-mr@{version}")
        assert model["sha256"] == sums[f"tiny-mr@{version}.pt"]
        descrip = nib.load(str(out / "field.nii.gz")).header["descrip"].tobytes().rstrip(b"\0").decode()
        assert descrip == f"ddmr tiny-mr@{version} sha256:{model['sha256'][:12]}"
        assert f"tiny-mr@{version}" in capsys.readouterr().out
    # the two releases are different models: their fields differ
    a = nib.load(str(tmp_path / "tiny-mr@1" / "field.nii.gz")).get_fdata()
    b = nib.load(str(tmp_path / "tiny-mr@2" / "field.nii.gz")).get_fdata()
    assert not np.allclose(a, b)
    # a checkpoint given by path is recorded by its file name and sha256
    out = tmp_path / "by_path"
    assert main(["register", "--fixed", ws["f"], "--moving", ws["m"], "--model", str(zoo / "tiny-mr@1.pt"),
                 "--out", str(out)]) == 0
    assert _model_of(out)["sha256"] == sums["tiny-mr@1.pt"] and _model_of(out)["ref"] == "tiny-mr@1"
    capsys.readouterr()
    assert main(["register", "--fixed", ws["f"], "--moving", ws["m"], "--model", "tiny-mr@3",
                 "--out", str(tmp_path / "v3")]) == 2
    err = _input_notes(capsys.readouterr().err)
    assert len(err) == 1 and "version 3 is not shipped" in err[0] and "tiny-mr@1, tiny-mr@2" in err[0]
    assert not (tmp_path / "v3").exists()


def test_version_prefix_and_ordering():
    from ddmr_core.model.zoo import pick

    rels = [Release("m", v, Path(v)) for v in ("1", "1.2", "1.10", "2")]
    assert pick(rels, None).version == "2"
    assert pick(rels, "1").version == "1"
    assert pick(rels[1:], "1").version == "1.10"  # numeric order, not text order
    assert pick(rels, "3") is None


def test_a_tampered_weight_file_is_one_error_line_and_nothing_loads(zoo, tiny_workspace, tmp_path, capsys):
    from ddmr_core.registration.register import Registrar

    weights = zoo / "tiny-mr@2.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"tiny-mr@2: weight file .* does not match the sha256 recorded in"):
        Registrar("tiny-mr")
    out = tmp_path / "out"
    ws = tiny_workspace
    assert main(["register", "--fixed", ws["f"], "--moving", ws["m"], "--model", "tiny-mr", "--out", str(out)]) == 2
    err = _input_notes(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith("ddmr: error: model tiny-mr@2: weight file") and "sha256" in err[0]
    assert not out.exists()
    # the untouched release still loads, by its version
    assert Registrar("tiny-mr@1").model_info["version"] == "1"
    # a weight file dropped in without its sha256 line is refused too
    shutil.copy(zoo / "tiny-mr@1.pt", zoo / "tiny-mr@3.pt")
    with pytest.raises(IntegrityError, match="no sha256 in"):
        Registrar("tiny-mr")
    assert main(["models", "hash", str(zoo / "tiny-mr@3.pt")]) == 0  # what a maintainer runs (record_sha256)
    digest = hashlib.sha256((zoo / "tiny-mr@3.pt").read_bytes()).hexdigest()
    assert read_sums(zoo / "SHA256SUMS")["tiny-mr@3.pt"] == digest
    assert Registrar("tiny-mr").model_info["version"] == "3"
    with pytest.raises(DataError, match="<name>@<version>.pt"):
        record_sha256(zoo / "tiny-mr@1.json")


def _ct_like(path: Path, like: str) -> str:
    img = nib.load(like)
    data = np.asarray(img.dataobj, np.float32)
    hu = np.where(data > np.median(data), 40.0 + 10 * data, -1000.0).astype(np.float32)  # air around tissue
    nib.save(nib.Nifti1Image(hu, img.affine), str(path))
    return str(path)


def test_an_input_unlike_the_card_is_one_warning_line_and_strict_refuses(zoo, tiny_workspace, tmp_path, capsys):
    ws = tiny_workspace
    ct = _ct_like(tmp_path / "ct.nii.gz", ws["m"])
    out = tmp_path / "out"
    assert main(["register", "--fixed", ws["f"], "--moving", ct, "--model", "tiny-mr", "--out", str(out)]) == 0
    err = _input_notes(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith("ddmr: warning: moving image") and "looks like CT" in err[0]
    assert "tiny-mr@2 expects MR (T1)" in err[0]
    assert json.loads((out / "results.json").read_text())["warnings"][0].startswith("moving image")
    # an MR-like image given to the CT model
    assert main(["register", "--fixed", ct, "--moving", ct, "--model", "tiny-ct", "--out", str(tmp_path / "o2")]) == 0
    assert _input_notes(capsys.readouterr().err) == []  # CT in HU to a CT model: nothing to say
    assert main(["register", "--fixed", ws["f"], "--moving", ct, "--model", "tiny-ct", "--out",
                 str(tmp_path / "o3")]) == 0
    err = _input_notes(capsys.readouterr().err)
    assert len(err) == 1 and "fixed image" in err[0] and "Hounsfield" in err[0]
    # --strict: one error line, nothing written
    assert main(["register", "--fixed", ws["f"], "--moving", ct, "--model", "tiny-mr", "--strict",
                 "--out", str(tmp_path / "strict")]) == 2
    err = _input_notes(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith("ddmr: error: moving image") and "strict" in err[0]
    assert not (tmp_path / "strict").exists()
    # a model without a card (the legacy plugin's) is not checked
    assert main(["register", "--fixed", ws["f"], "--moving", ct, "--model", "legacy-mr", "--out",
                 str(tmp_path / "o4")]) == 0
    assert _input_notes(capsys.readouterr().err) == []


def test_input_mismatch_heuristic():
    mr = tiny_card("m", "1", "arbitrary")
    ct = tiny_card("c", "1", "HU")
    rng = np.random.default_rng(0)
    brain = rng.uniform(0, 300, (8, 8, 8))
    scan = np.where(rng.uniform(size=(8, 8, 8)) < 0.3, -1000.0, rng.uniform(-100, 300, (8, 8, 8)))
    assert input_mismatch(mr, brain, "x", "m@1") is None
    assert "looks like CT" in input_mismatch(mr, scan, "x", "m@1")
    assert input_mismatch(ct, scan, "x", "c@1") is None
    assert "no values below -200" in input_mismatch(ct, brain, "x", "c@1")
    assert input_mismatch(None, scan, "x", "m") is None


def test_extent_mismatch_flags_a_slab_and_a_wider_field_of_view():
    from ddmr_core.model.card import extent_mismatch, foreground_extent_mm

    img = np.zeros((60, 50, 40), np.float32)
    img[10:50, 5:45, 12:20] = 1.0  # a box 40 x 40 x 8 voxels
    affine = np.diag([2.0, 3.0, 0.5, 1.0])
    assert foreground_extent_mm(img, affine) == pytest.approx([80.0, 120.0, 4.0])
    brain = [153.0, 189.0, 159.0]
    note = extent_mismatch(brain, img, affine, "moving image", "brain-mr@1")
    assert "only 4 mm" in note and "153-189 mm" in note and "slab" in note
    thick = np.diag([2.0, 3.0, 6.0, 1.0])  # the same box 48 mm thick: a partial brain, not warned
    assert extent_mismatch(brain, img, thick, "moving image", "brain-mr@1") is None
    wide = np.diag([20.0, 3.0, 6.0, 1.0])  # 800 mm along axis 0: more than 3 x 189
    assert "spans 800 mm" in extent_mismatch(brain, img, wide, "moving image", "brain-mr@1")
    # through input_mismatch, only for a card that gives the extent
    card = tiny_card("m", "1", "arbitrary")
    assert input_mismatch(card, img, "x", "m@1", affine) is None
    card["input"]["extent_mm"] = brain
    assert input_mismatch(card, img, "x", "m@1", affine).startswith("x spans only 4 mm")
    assert input_mismatch(card, img, "x", "m@1") is None  # no affine, no extent check


def test_register_warns_about_a_slab_of_a_brain(tmp_path, capsys):
    from ddmr_plugins.datasets.mni_brain import load_template

    t1, _, affine = load_template()
    t1 = np.ascontiguousarray(t1[::3, ::3, ::3])
    affine = affine @ np.diag([3.0, 3.0, 3.0, 1.0])
    slab = np.ascontiguousarray(t1[:, :, 30:33])  # three 3 mm slices: 9 mm
    with pytest.warns(ModelInputWarning, match="only 9 mm"):
        res = Registrar("brain-mr").register(t1, slab, fixed_affine=affine, moving_affine=affine)
    assert len(res.warnings) >= 1 and "moving image spans only 9 mm" in res.warnings[0]
    with warnings.catch_warnings():  # the whole brain: no such warning
        warnings.simplefilter("error", ModelInputWarning)
        Registrar("brain-mr").register(t1, t1, fixed_affine=affine, moving_affine=affine)


def test_ddmr_models_lists_and_shows_cards_third_party_path_models_too(zoo, capsys):
    assert main(["models", "--json"]) == 0
    rows = {r["ref"]: r for r in json.loads(capsys.readouterr().out)}
    assert {"tiny-mr@1", "tiny-mr@2", "tiny-ct@1", "legacy-mr"} <= set(rows)
    assert rows["tiny-ct@1"]["modalities"] == ["CT"] and rows["tiny-mr@2"]["contrasts"] == ["T1"]
    assert rows["tiny-mr@2"]["sha256"] == read_sums(zoo / "SHA256SUMS")["tiny-mr@2.pt"]
    legacy = rows["legacy-mr"]
    assert (legacy["version"], legacy["task"], legacy["licence"], legacy["verified"]) == (
        "unknown", "unknown", "unknown", False)
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["NAME", "VERSION", "MODALITIES", "CONTRASTS"]
    assert ["legacy-mr", "unknown"] in [line.split()[:2] for line in lines]
    assert ["tiny-mr", "1"] in [line.split()[:2] for line in lines]
    assert main(["models", "show", "tiny-ct"]) == 0
    text = capsys.readouterr().out
    assert "model tiny-ct@1" in text and "intensity_units: HU" in text and "intended_use:" in text
    assert main(["models", "show", "legacy-mr"]) == 0
    assert "card: unknown" in capsys.readouterr().out
    # ddmr plugins --kind models still lists names
    assert main(["plugins", "--kind", "models", "--json"]) == 0
    assert {"tiny-mr", "tiny-ct", "legacy-mr"} <= {r["name"] for r in json.loads(capsys.readouterr().out)}


def test_a_release_whose_card_misses_a_field_fails_show_in_one_line(zoo, capsys):
    card = json.loads((zoo / "tiny-ct@1.json").read_text())
    del card["weights_licence"]
    (zoo / "tiny-ct@1.json").write_text(json.dumps(card))
    assert main(["models", "show", "tiny-ct@1"]) == 2
    err = _input_notes(capsys.readouterr().err)
    assert len(err) == 1 and "'weights_licence' is a required property" in err[0]
    assert main(["models", "--markdown"]) == 0  # the block leaves it out
    assert "tiny-ct@1" not in capsys.readouterr().out


def test_export_to_a_release_checks_the_card_and_records_it(tiny_workspace, tmp_path, capsys):
    folder = tmp_path / "weights"
    folder.mkdir()
    card = tiny_card("knee-mr", "1")
    (tmp_path / "card.json").write_text(json.dumps(card))
    out = folder / "knee-mr@1.pt"
    assert main(["export", tiny_workspace["good"], "--out", str(out), "--card", str(tmp_path / "card.json")]) == 0
    assert json.loads((folder / "knee-mr@1.json").read_text()) == card
    assert read_sums(folder / "SHA256SUMS")["knee-mr@1.pt"] == hashlib.sha256(out.read_bytes()).hexdigest()
    # a card for another version, or one missing a field: one line, nothing written
    for bad in (tiny_card("knee-mr", "2"), {k: v for k, v in card.items() if k != "task"}):
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        capsys.readouterr()
        assert main(["export", tiny_workspace["good"], "--out", str(folder / "knee-mr@9.pt"), "--card",
                     str(tmp_path / "bad.json")]) == 2
        err = _input_notes(capsys.readouterr().err)
        assert len(err) == 1 and err[0].startswith("ddmr: error: model card")
        assert not (folder / "knee-mr@9.pt").exists() and not (folder / "knee-mr@9.json").exists()
    assert main(["export", tiny_workspace["good"], "--out", str(folder / "knee-mr@2.pt")]) == 2
    assert "--card" in capsys.readouterr().err


def test_evaluate_summary_records_the_release_and_sha256(zoo, tiny_workspace, tmp_path):
    assert main(["evaluate", "--testset", tiny_workspace["testset"], "--model", "tiny-mr@1", "--metric", "dsc",
                 "--out", str(tmp_path / "ev"), "--no-figures"]) == 0
    summary = (tmp_path / "ev" / "summary.md").read_text()
    sha = read_sums(zoo / "SHA256SUMS")["tiny-mr@1.pt"]
    assert "## Models" in summary and f"`tiny-mr@1`, version 1, sha256 `{sha}`" in summary


def test_field_description_fits_the_nifti_header():
    assert field_description({"ref": "brain-mr@1", "sha256": "ab" * 32}) == "ddmr brain-mr@1 sha256:abababababab"
    long = field_description({"ref": "x" * 200, "sha256": "cd" * 32})
    assert len(long.encode()) <= 79 and long.endswith("sha256:cdcdcdcdcdcd")
    assert field_description({"ref": "best", "sha256": None}) == "ddmr best"
