"""``ddmr train`` on bad input: a clear one-line error, a non-zero exit, and nothing in
RUN_DIR written or overwritten (checked byte for byte)."""

import pytest
import torch

from ddmr_core.cli import main
from conftest import TINY_TRAINING

CONFIG = TINY_TRAINING + """

ddmr.datasets.synthetic.subjects = (2, 1, 1)
ddmr.build_model.losses = {'ncc': @ddmr.losses.ncc(), 'grad_l2': @ddmr.losses.grad_l2()}
ddmr.Trainer.max_epochs = 1
"""


def snapshot(folder):
    """Every file under ``folder`` with its bytes (missing folder: empty)."""
    if not folder.exists():
        return {}
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def cfg(tmp_path):
    p = tmp_path / "exp.gin"
    p.write_text(CONFIG)
    return p


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 1-epoch run to resume from or finetune from."""
    root = tmp_path_factory.mktemp("trained")
    (root / "exp.gin").write_text(CONFIG)
    assert main(["train", str(root / "exp.gin"), "--out", str(root / "run"), "--device", "cpu"]) == 0
    return root / "run"


def fails(capsys, *argv):
    rc = main(["train", *map(str, argv), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc != 0, err
    lines = [l for l in err.splitlines() if l.startswith("ddmr: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_resume_without_checkpoint(cfg, tmp_path, capsys):
    run = tmp_path / "empty"
    msg = fails(capsys, cfg, "--out", run, "--resume")
    assert "last.pt" in msg and "not found" in msg
    assert not run.exists()


def test_resume_from_corrupt_checkpoint(cfg, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"PK\x03\x04 this is not a checkpoint")
    (run / "config.gin").write_text("# kept\n")
    before = snapshot(run)
    msg = fails(capsys, cfg, "--out", run, "--resume")
    assert "cannot be read" in msg and "last.pt" in msg
    assert snapshot(run) == before


def test_truncated_checkpoint(cfg, tmp_path, trained, capsys):
    run = tmp_path / "run"
    run.mkdir()
    data = (trained / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(data[: len(data) // 2])
    before = snapshot(run)
    msg = fails(capsys, cfg, "--out", run, "--resume")
    assert "last.pt" in msg
    assert snapshot(run) == before


def test_resume_with_another_architecture(cfg, tmp_path, trained, capsys):
    before = snapshot(trained)
    msg = fails(capsys, cfg, "--out", trained, "--resume", "--gin", "ddmr.backbones.vxm_unet.widths = (6, 8)")
    assert "different architecture" in msg
    assert snapshot(trained) == before


def test_finetune_from_missing_or_other_architecture(cfg, tmp_path, trained, capsys):
    run = tmp_path / "ft"
    msg = fails(capsys, cfg, "--out", run, "--gin", "ddmr.Trainer.transfer = @ddmr.finetune()",
                "--gin", f"ddmr.finetune.checkpoint = '{tmp_path / 'nope.pt'}'")
    assert "nope.pt" in msg and "not found" in msg
    msg = fails(capsys, cfg, "--out", run, "--gin", "ddmr.Trainer.transfer = @ddmr.finetune()",
                "--gin", f"ddmr.finetune.checkpoint = '{trained / 'best.pt'}'",
                "--gin", "ddmr.backbones.vxm_unet.widths = (4, 4)")
    assert "different architecture" in msg
    msg = fails(capsys, cfg, "--out", run, "--gin", "ddmr.Trainer.transfer = @ddmr.finetune()",
                "--gin", f"ddmr.finetune.checkpoint = '{trained / 'best.pt'}'",
                "--gin", "ddmr.finetune.strategy = 'three_step'")
    assert "three_step" in msg and "two_step" in msg
    assert not run.exists()


def test_unwritable_run_dir(cfg, tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder")
    msg = fails(capsys, cfg, "--out", blocker / "run")
    assert "file.txt" in msg and "is a file, not a folder" in msg
    msg = fails(capsys, cfg, "--out", blocker)
    assert "not a folder" in msg
    assert blocker.read_text() == "a file, not a folder"


def test_existing_run_is_not_overwritten(cfg, trained, capsys):
    before = snapshot(trained)
    msg = fails(capsys, cfg, "--out", trained)
    assert "--resume" in msg
    assert snapshot(trained) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message when CUDA is absent")
def test_cuda_requested_without_cuda(cfg, tmp_path, capsys):
    rc = main(["train", str(cfg), "--out", str(tmp_path / "r"), "--device", "cuda"])
    assert rc != 0 and "no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
