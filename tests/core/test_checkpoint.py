"""Checkpoints: atomic writes, safe reads, clear errors."""

import pytest
import torch

from ddmr_core.model.checkpoint import load_checkpoint, save_checkpoint
from ddmr_core.errors import CheckpointError


def test_round_trip_and_atomic_replace(tmp_path):
    path = tmp_path / "run" / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.arange(3.0)}, "gin_config": "x = 1", "counters": {"step": 4}})
    ckpt = load_checkpoint(path)
    assert torch.equal(ckpt["model"]["w"], torch.arange(3.0)) and ckpt["counters"] == {"step": 4}
    assert ckpt["format"] == "ddmr-checkpoint"
    save_checkpoint(path, {"model": {}, "gin_config": "x = 2"})
    assert load_checkpoint(path)["gin_config"] == "x = 2"
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary files left


def test_failed_write_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {}, "gin_config": "good"})

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_checkpoint(path, {"model": {}, "gin_config": "bad", "x": Unpicklable()})
    assert load_checkpoint(path)["gin_config"] == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


@pytest.mark.parametrize("content,why", [
    (b"", "empty or truncated"),
    (b"\x00garbage" * 50, "corrupt or truncated"),
])
def test_unreadable_files(tmp_path, content, why):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=why):
        load_checkpoint(path)


def test_missing_and_foreign_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"state_dict": {"w": torch.zeros(1)}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="is not a ddmr checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    torch.save({"w": torch.nn.Linear(1, 1)}, tmp_path / "module.pt")  # pickled objects
    with pytest.raises(CheckpointError, match="Python objects"):
        load_checkpoint(tmp_path / "module.pt")
