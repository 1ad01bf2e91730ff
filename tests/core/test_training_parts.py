"""The pieces the trainer is made of, each on its own: checkpoint state I/O, the
transfer phases, the validation averages, the single-process reductions, the epoch line."""

import contextlib
import math
import random
import re

import numpy as np
import pytest
import torch

from ddmr_core.training import distributed
from ddmr_core.model.checkpoint import plain, rng_state, set_rng_state
from ddmr_core.training.log import epoch_line
from ddmr_core.training.transfer import finetune, next_phase
from ddmr_core.training.validation import validate


def test_rng_state_round_trip_and_plain_values():
    state = rng_state()
    draws = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(state)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(draws[0], again[0]) and np.array_equal(draws[1], again[1]) and draws[2] == again[2]
    assert plain({1: (np.float32(0.5), np.arange(2)), "k": [np.int64(3)]}) == {"1": [0.5, [0, 1]], "k": [3]}


def test_two_step_phase_ends_after_decoder_epochs_or_when_patience_runs_out():
    two = finetune(checkpoint="x.pt", strategy="two_step", decoder_epochs=3)
    c = {"phase": 0, "phase_epochs": 2, "bad_epochs": 1}
    assert not next_phase(two, c, patience_out=False) and c["phase"] == 0
    c["phase_epochs"] = 3
    assert next_phase(two, c, patience_out=False) and c == {"phase": 1, "phase_epochs": 0, "bad_epochs": 0}
    assert not next_phase(two, c, patience_out=True)  # only once
    c = {"phase": 0, "phase_epochs": 0, "bad_epochs": 30}
    assert next_phase(two, c, patience_out=True) and c["phase"] == 1
    assert not next_phase(finetune(checkpoint="x.pt"), {"phase": 0, "phase_epochs": 99, "bad_epochs": 0}, True)
    assert not next_phase(None, {"phase": 0, "phase_epochs": 99, "bad_epochs": 0}, True)


class _Model:
    """compute_loss returning given losses and a zero field (no folding)."""

    def __init__(self, losses):
        self.losses = iter(losses)

    def compute_loss(self, batch):
        loss = torch.tensor(next(self.losses))
        return loss, {"ncc": loss / 2}, {"disp": torch.zeros(1, 3, 4, 4, 4), "warped": batch["fixed"]}


def _batches(n):
    return [{"fixed": torch.zeros(1, 1, 4, 4, 4), "moving": torch.zeros(1, 1, 4, 4, 4)} for _ in range(n)]


def test_validation_averages_per_pair_and_marks_a_non_finite_loss():
    metrics, (batch, out) = validate(_Model([1.0, 3.0]), _batches(2), contextlib.nullcontext)
    assert metrics == {"loss": 2.0, "negative_jacobian": 0.0, "terms/ncc": 1.0}
    assert list(metrics) == sorted(metrics) and out["disp"].shape == (1, 3, 4, 4, 4)
    metrics, _ = validate(_Model([1.0, math.nan]), _batches(2), contextlib.nullcontext)
    assert metrics["loss"] == math.inf and metrics["terms/ncc"] == 0.5  # terms: over the finite ones
    metrics, first = validate(_Model([]), [], contextlib.nullcontext)
    assert metrics == {"loss": math.inf} and first is None  # nothing to validate on this rank


def test_single_process_reductions_are_the_identity():
    assert distributed.any_rank(True, 1, torch.device("cpu")) and not distributed.any_rank(torch.zeros(()), 1, "cpu")
    sums, counts = distributed.sum_over_ranks({"a": 2.0}, {"a": 1.0, "loss": 0.0}, 1, "cpu")
    assert sums == {"a": 2.0, "loss": 0.0} and counts == {"a": 1.0, "loss": 0.0}
    model = torch.nn.Linear(1, 1)
    assert isinstance(distributed.wrap(model, 1, torch.device("cpu")), distributed.LossForward)


def test_epoch_line_keeps_the_form_scripts_parse():
    line = epoch_line(3, {"loss": 0.51234, "terms/ncc": 0.2, "dice": 0.8, "field_error": 1.5}, improved=True)
    assert line == "epoch 3: validation loss 0.5123 (best), dice 0.8, field_error 1.5"
    m = re.match(r"^epoch (\d+): validation loss (\S+)(.*)$", line)  # benchmarks/gpu_check.py's EPOCH
    assert m and m.group(1) == "3" and float(m.group(2)) == pytest.approx(0.5123)
