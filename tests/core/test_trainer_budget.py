"""Trainer: learning-rate warm-up, wall-clock budget (``max_time``), validation history."""

import pytest
import torch

from ddmr_core.commands import duration
from ddmr_core.errors import ConfigError
from conftest import TINY_TRAINING, make_trainer

BASE = TINY_TRAINING + """
ddmr.build_model.losses = {'ncc': @ddmr.losses.ncc(), 'grad_l2': @ddmr.losses.grad_l2()}
ddmr.augmenters.tps.max_displacement = 2.0
ddmr.datasets.synthetic.subjects = (4, 1, 1)   # 2 optimiser steps per epoch
ddmr.Trainer.log_images = False
"""


def make(tmp_path, *bindings, run="run", **kw):
    return make_trainer(tmp_path, BASE, *bindings, run=run, **kw)


def record_rates(trainer):
    """Wrap the optimiser's step to record the rate it steps with."""
    rates = []
    step = trainer.optimizer.step

    def recording(*a, **k):
        rates.append(trainer.optimizer.param_groups[0]["lr"])
        return step(*a, **k)

    trainer.optimizer.step = recording
    return rates


def test_warmup_raises_the_rate_linearly_then_holds(tmp_path):
    t = make(tmp_path, "ddmr.Trainer.lr = 1e-3", "ddmr.Trainer.warmup_steps = 4", max_steps=6)
    t.setup()
    rates = record_rates(t)
    t.fit()
    assert rates == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
    # the scheduler's rate in the param groups is left as it was
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)


def test_warmup_continues_exactly_after_resume(tmp_path):
    t = make(tmp_path, "ddmr.Trainer.lr = 1e-3", "ddmr.Trainer.warmup_steps = 4", max_steps=2)
    t.fit()
    r = make(tmp_path, "ddmr.Trainer.lr = 1e-3", "ddmr.Trainer.warmup_steps = 4", max_steps=5, resume=True)
    r.setup()
    rates = record_rates(r)
    r.fit()
    assert rates == pytest.approx([7.5e-4, 1e-3, 1e-3])


@pytest.mark.parametrize("bad", ["-1", "2.5"])
def test_warmup_must_be_a_non_negative_integer(tmp_path, bad):
    with pytest.raises(ConfigError, match="warmup_steps"):
        make(tmp_path, f"ddmr.Trainer.warmup_steps = {bad}")


class FakeClock:
    """``time.perf_counter`` that advances ``tick`` seconds per call."""

    def __init__(self, tick):
        self.now, self.tick = 0.0, tick

    def __call__(self):
        self.now += self.tick
        return self.now


def test_max_time_stops_at_a_step_boundary_with_a_resumable_checkpoint(tmp_path, monkeypatch):
    import time

    monkeypatch.setattr(time, "perf_counter", FakeClock(1.0))  # the loop's clock
    t = make(tmp_path, max_time=2.5)
    summary = t.fit()
    assert summary["stopped"] == "max_time"
    steps = t.counters["optimizer_steps"]
    assert 1 <= steps < 10
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert last["counters"]["optimizer_steps"] == steps
    assert last["counters"]["train_seconds"] >= 2.5
    # the budget counts over the whole run: a resume with the same budget stops at once,
    # a larger one continues from where the first stopped
    again = make(tmp_path, max_time=2.5, resume=True).fit()
    assert again["stopped"] == "max_time" and again["optimizer_steps"] == steps
    more = make(tmp_path, max_time=1000.0, max_steps=steps + 3, resume=True).fit()
    assert more["optimizer_steps"] == steps + 3


def test_max_time_must_be_positive(tmp_path):
    with pytest.raises(ConfigError, match="max-time"):
        make(tmp_path, max_time=0)


def test_history_has_one_entry_per_validation_and_survives_resume(tmp_path):
    seen = []
    t = make(tmp_path, "ddmr.Trainer.max_epochs = 2")
    t.on_validation = seen.append
    t.fit()
    assert [h["epoch"] for h in t.history] == [1, 2] and seen == t.history
    assert [h["step"] for h in t.history] == [2, 4]
    for h in t.history:
        assert {"loss", "field_error", "negative_jacobian", "seconds"} <= set(h)
    r = make(tmp_path, "ddmr.Trainer.max_epochs = 3", resume=True)
    r.fit()
    assert [h["epoch"] for h in r.history] == [1, 2, 3]
    assert r.history[:2] == t.history


@pytest.mark.parametrize("text, seconds", [("45m", 2700), ("1h30m", 5400), ("90s", 90), ("2700", 2700),
                                           ("0.5h", 1800)])
def test_duration_parses_hours_minutes_seconds(text, seconds):
    assert duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "0", "5x", "-3m"])
def test_duration_rejects_nonsense(text):
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        duration(text)


def test_cosine_schedule_decays_over_the_step_budget_after_the_warmup(tmp_path):
    import math

    t = make(tmp_path, "ddmr.Trainer.lr = 1e-3", "ddmr.Trainer.warmup_steps = 2",
             "ddmr.Trainer.lr_schedule = 'cosine'", max_steps=6)
    t.setup()
    rates = record_rates(t)
    t.fit()
    cosine = [0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(6)]
    warm = [0.5, 1, 1, 1, 1, 1]
    assert rates == pytest.approx([1e-3 * w * c for w, c in zip(warm, cosine)])


def test_unknown_schedule_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="lr_schedule"):
        make(tmp_path, "ddmr.Trainer.lr_schedule = 'linear'")


def test_weighting_lr_steps_the_uncertainty_weights_at_their_own_rate(tmp_path):
    # Adam's first step moves every parameter by its group's rate (sign of the gradient),
    # so after one step the log-variances have moved by weighting_lr, the network by lr
    uw = ("ddmr.build_model.weighting = @ddmr.loss_weightings.uw", "ddmr.Trainer.lr = 1e-4",
          "ddmr.Trainer.weighting_lr = 1e-2")
    t = make(tmp_path, *uw, max_steps=1)
    t.setup()
    assert [g["lr"] for g in t.optimizer.param_groups] == [1e-4, 1e-2]
    before = t.model.weighting.log_vars.detach().clone()
    net = [p.detach().clone() for p in t.model.backbone.parameters()]
    t.fit()
    moved = (t.model.weighting.log_vars.detach() - before).abs()
    assert torch.allclose(moved, torch.full_like(moved, 1e-2), rtol=1e-3)
    net_moved = max((p.detach() - q).abs().max().item() for p, q in zip(t.model.backbone.parameters(), net))
    assert net_moved == pytest.approx(1e-4, rel=1e-3)
    # resumes with both groups and their rates
    r = make(tmp_path, *uw, max_steps=2, resume=True)
    r.fit()
    assert [g["lr"] for g in r.optimizer.param_groups] == [1e-4, 1e-2]


def test_resuming_with_another_weighting_lr_setting_names_it(tmp_path):
    from ddmr_core.errors import CheckpointError

    uw = "ddmr.build_model.weighting = @ddmr.loss_weightings.uw"
    make(tmp_path, uw, max_steps=1).fit()
    with pytest.raises(CheckpointError, match="weighting_lr"):
        make(tmp_path, uw, "ddmr.Trainer.weighting_lr = 1e-2", max_steps=2, resume=True).fit()


def test_without_weighting_lr_there_is_one_group(tmp_path):
    t = make(tmp_path, "ddmr.build_model.weighting = @ddmr.loss_weightings.uw")
    t.setup()
    assert len(t.optimizer.param_groups) == 1


def test_weighting_lr_must_be_positive(tmp_path):
    with pytest.raises(ConfigError, match="weighting_lr"):
        make(tmp_path, "ddmr.Trainer.weighting_lr = 0.0")
