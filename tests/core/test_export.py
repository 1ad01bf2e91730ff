"""``ddmr export`` / ``checkpoint.export_model``: a training checkpoint as a model to ship."""

import json

import pytest
import torch

from ddmr_core.model.checkpoint import export_model, load_model
from ddmr_core.errors import CheckpointError
from conftest import TINY_TRAINING, make_trainer, run_cli


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import gin

    tmp = tmp_path_factory.mktemp("export")
    gin.clear_config()
    t = make_trainer(tmp, TINY_TRAINING + "\nddmr.build_model.losses = {'ncc': @ddmr.losses.ncc()}\n"
                     "ddmr.datasets.synthetic.subjects = (2, 1, 1)\nddmr.Trainer.log_images = False\n",
                     max_steps=2)
    t.fit()
    gin.clear_config()
    return tmp / "run" / "last.pt"


def test_export_keeps_what_inference_needs_and_drops_the_training_state(trained, tmp_path):
    out = export_model(trained, tmp_path / "model.pt", card={"data": "synthetic", "steps": 2})
    full = torch.load(trained, weights_only=True)
    small = torch.load(out, weights_only=True)
    assert {"optimizer", "scheduler", "rng"} <= set(full) and not {"optimizer", "scheduler", "rng"} & set(small)
    assert small["card"] == {"data": "synthetic", "steps": 2} and small["history"] == full["history"]
    assert out.stat().st_size < trained.stat().st_size
    a, _ = load_model(trained)
    b, _ = load_model(out)
    g = torch.Generator().manual_seed(0)
    fixed, moving = torch.rand(1, 1, 16, 16, 16, generator=g), torch.rand(1, 1, 16, 16, 16, generator=g)
    with torch.no_grad():
        assert torch.equal(a.predict_field(fixed, moving), b.predict_field(fixed, moving))


def test_export_refuses_a_checkpoint_that_would_not_load(tiny_workspace, tmp_path):
    with pytest.raises(CheckpointError, match="non-finite"):
        export_model(tiny_workspace["nan_weights"], tmp_path / "model.pt")
    assert not (tmp_path / "model.pt").exists()


def test_export_command_writes_the_model_with_its_card(trained, tmp_path):
    card = tmp_path / "card.json"
    card.write_text(json.dumps({"name": "tiny", "trained_minutes": 0.1}))
    r = run_cli("export", str(trained), "--out", str(tmp_path / "tiny.pt"), "--card", str(card))
    assert r.returncode == 0, r.stderr
    assert torch.load(tmp_path / "tiny.pt", weights_only=True)["card"]["name"] == "tiny"
    bad = run_cli("export", str(trained), "--out", str(tmp_path / "tiny.nii.gz"))
    assert bad.returncode == 2 and bad.stderr.count("ddmr: error:") == 1


def test_export_refuses_a_bad_card_in_one_line_and_writes_nothing(trained, tmp_path):
    for name, text in (("broken.json", "{not json"), ("list.json", "[1, 2]")):
        card = tmp_path / name
        card.write_text(text)
        r = run_cli("export", str(trained), "--out", str(tmp_path / "m.pt"), "--card", str(card))
        assert r.returncode == 2 and r.stderr.count("ddmr: error:") == 1 and "--card" in r.stderr
        assert "Traceback" not in r.stderr and not (tmp_path / "m.pt").exists()
