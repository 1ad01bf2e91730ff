"""Trainer: gradient accumulation, schedules, checkpoints, logs, non-finite steps, finetuning.

Real components throughout: ``vxm_unet`` (tiny widths), ``ncc``/``dice``/``grad_l2``,
the ``tps`` augmenter, synthetic 16^3 phantoms.
"""

import copy

import pytest
import torch
from torch.utils.data import default_collate

from ddmr_core.model.checkpoint import load_model
from ddmr_core.errors import ConfigError
from ddmr_core.training.loop import TrainingError
from conftest import TINY_TRAINING, make_trainer

BASE = TINY_TRAINING + """

ddmr.build_model.losses = {'ncc': @ddmr.losses.ncc(), 'dice': @ddmr.losses.dice(), 'grad_l2': @ddmr.losses.grad_l2()}
ddmr.augmenters.tps.max_displacement = 2.0
ddmr.datasets.synthetic.subjects = (4, 1, 1)   # 2 optimiser steps per epoch
"""


def make(tmp_path, *bindings, run="run", **kw):
    return make_trainer(tmp_path, BASE, *bindings, run=run, **kw)


def weights(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same(a, b, atol=1e-6):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=atol, rtol=0), k


def test_accumulated_step_equals_adam_on_mean_gradient(tmp_path):
    t = make(tmp_path, "ddmr.datasets.synthetic.subjects = (4, 1, 1)", "ddmr.Trainer.accumulate = 4",
             max_steps=1)
    t.setup()
    ref = copy.deepcopy(t.model)
    opt = torch.optim.Adam(ref.parameters(), lr=1e-3)
    t.sampler.set_epoch(0)
    for i in list(iter(t.sampler)):  # the epoch's order, one pair per micro-batch
        batch = t.prepare(default_collate([t.train_set[i]]), train=True)
        total, _, _ = ref.compute_loss(batch)
        (total / 4).backward()
    opt.step()
    before = weights(t.model)
    t.fit()
    assert t.counters["optimizer_steps"] == 1
    assert_same(weights(t.model), weights(ref))
    assert any(not torch.equal(before[k], v) for k, v in weights(t.model).items())


def test_short_last_group_still_steps(tmp_path):
    # 5 samples, 2 per step: steps of 2, 2 and 1 micro-batches each epoch
    t = make(tmp_path, "ddmr.datasets.synthetic.subjects = (5, 1, 1)", "ddmr.Trainer.max_epochs = 1")
    t.fit()
    assert t.counters["global_step"] == 3 and t.counters["epoch"] == 1
    assert sorted(t.seen_indices) == [0, 1, 2, 3, 4]


def test_checkpoints_config_and_tensorboard(tmp_path):
    t = make(tmp_path, "ddmr.Trainer.max_epochs = 2")
    t.fit()
    run = tmp_path / "run"
    for name in ("last.pt", "best.pt"):
        ck = torch.load(run / name, weights_only=True)
        for key in ("model", "optimizer", "scheduler", "counters", "rng", "gin_config", "input_size", "labels"):
            assert key in ck, (name, key)
        assert ck["input_size"] == [16, 16, 16] and ck["labels"] == [1, 2, 3]
    last = torch.load(run / "last.pt", weights_only=True)
    assert last["counters"]["epoch"] == 2 and last["counters"]["optimizer_steps"] == 4
    assert_same(last["model"], weights(t.model), atol=0)
    # the saved config rebuilds the model, and the best checkpoint loads into it
    assert "vxm_unet" in (run / "config.gin").read_text()
    model, ck = load_model(run / "best.pt")
    assert_same(weights(model), ck["model"], atol=0)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run / "logs"), size_guidance={"scalars": 0, "images": 0})
    ea.Reload()
    scalars, images = set(ea.Tags()["scalars"]), set(ea.Tags()["images"])
    for tag in ("train/loss", "train/terms/ncc", "train/terms/dice", "train/terms/grad_l2", "weights/ncc",
                "weights/dice", "weights/grad_l2", "train/lr", "train/grad_norm", "validation/loss",
                "validation/dice", "validation/field_error", "validation/terms/ncc"):
        assert tag in scalars, tag
    assert len(ea.Scalars("train/loss")) == 4 and len(ea.Scalars("validation/loss")) == 2
    assert ea.Scalars("train/lr")[0].value == pytest.approx(1e-3)
    for name in ("fixed", "moving", "warped", "field_magnitude"):
        assert f"validation/{name}" in images


def test_validation_pairs_repeat_training_pairs_do_not(tmp_path):
    t = make(tmp_path)
    t.setup()
    vs = default_collate([t.val_set[0]])
    ts = default_collate([t.train_set[0]])
    v0, tr0 = t.prepare(vs, train=False), t.prepare(ts, train=True)
    t.counters["epoch"] = 3
    v3, tr3 = t.prepare(vs, train=False), t.prepare(ts, train=True)
    assert torch.equal(v0["moving"], v3["moving"]) and torch.equal(v0["disp_true"], v3["disp_true"])
    assert (tr0["disp_true"] - tr3["disp_true"]).abs().max() > 0.1


def test_plateau_schedule_and_early_stopping(tmp_path, monkeypatch):
    t = make(tmp_path, "ddmr.datasets.synthetic.subjects = (2, 1, 1)", "ddmr.Trainer.max_epochs = 50",
             "ddmr.Trainer.plateau_patience = 1", "ddmr.Trainer.early_stopping_patience = 3")
    monkeypatch.setattr(t, "validate", lambda: {"loss": 1.0})
    summary = t.fit()
    # epoch 1 improves (inf -> 1); epochs 2-4 do not. ReduceLROnPlateau(patience 1) cuts the
    # rate after the 2nd bad epoch (epoch 3); early stopping fires after the 3rd (epoch 4).
    assert summary["stopped"] == "early_stopping" and t.counters["epoch"] == 4
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)
    assert torch.load(tmp_path / "run" / "best.pt", weights_only=True)["counters"]["epoch"] == 1


def test_patience_runs_only_after_the_initial_steps(tmp_path, monkeypatch):
    """A run that sits on a plateau at its start keeps its rate and is not stopped there."""
    flat = ("ddmr.datasets.synthetic.subjects = (2, 1, 1)", "ddmr.Trainer.max_epochs = 50",
            "ddmr.Trainer.plateau_patience = 1", "ddmr.Trainer.early_stopping_patience = 3")
    probe = make(tmp_path, *flat, run="probe", max_steps=1)
    probe.setup()
    per_epoch = len(probe.train_set) // (probe.batch_size * probe.accumulate)
    t = make(tmp_path, *flat, f"ddmr.Trainer.patience_after_steps = {3 * per_epoch}")
    monkeypatch.setattr(t, "validate", lambda: {"loss": 1.0})
    summary = t.fit()
    # epoch 1 improves; epoch 2 ends before step 3*per_epoch and does not count; epochs 3-5 are
    # the three bad ones (the scheduler first sees epoch 3, so its cut comes at epoch 5).
    assert summary["stopped"] == "early_stopping" and t.counters["epoch"] == 5
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)
    with pytest.raises(ConfigError, match="patience_after_steps"):
        make(tmp_path, "ddmr.Trainer.patience_after_steps = -1", run="bad")


def test_the_model_is_told_its_optimiser_step_before_each_pass(tmp_path):
    """The run's one Schedule, which the loop advances and the model reads, drives schedules
    over the run (the supervision's ramp)."""
    t = make(tmp_path, max_steps=3)
    t.setup()
    assert t.schedule is t.model.schedule
    seen = []
    compute = t.model.compute_loss
    t.model.compute_loss = lambda b: (t.model.training and seen.append(t.model.schedule.step), compute(b))[1]
    t.fit()
    # every micro-batch of optimiser step k sees k (an epoch's last group may be shorter)
    assert seen == sorted(seen) and set(seen) == {0, 1, 2} and max(map(seen.count, {0, 1, 2})) <= t.accumulate


def test_mid_epoch_stop_resumes_exactly(tmp_path):
    a = make(tmp_path, "ddmr.Trainer.max_epochs = 1", run="a")
    a.fit()
    b = make(tmp_path, "ddmr.Trainer.max_epochs = 1", run="b", max_steps=1)
    b.fit()
    ck = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert ck["counters"]["batch_in_epoch"] == 2 and ck["counters"]["epoch"] == 0
    c = make(tmp_path, "ddmr.Trainer.max_epochs = 1", run="b", resume=True)
    c.fit()
    assert c.counters["optimizer_steps"] == 2
    assert_same(weights(a.model), weights(c.model))
    assert sorted(c.seen_indices) == sorted(a.seen_indices[2:])  # only the rest of the epoch


class _NaNAfter(torch.nn.Module):
    """An image loss that turns NaN after ``n`` training calls (validation is unaffected)."""

    inputs = "image"

    def __init__(self, n):
        super().__init__()
        self.n, self.calls = n, 0

    def forward(self, warped, fixed):
        loss = ((warped - fixed) ** 2).mean()
        if self.training:
            self.calls += 1
            if self.calls > self.n:
                return loss * float("nan")
        return loss


def test_nonfinite_steps_are_skipped_then_stop(tmp_path):
    from ddmr_core.model.build import build_model

    t = make(tmp_path, "ddmr.Trainer.max_nonfinite = 2", "ddmr.Trainer.max_epochs = 5")
    model = build_model()
    model.losses["mse"] = _NaNAfter(4)  # epoch 1: 4 good micro-batches (2 steps)
    model.loss_names.append("mse")
    t.model = model
    with pytest.raises(TrainingError, match="non-finite in 2 optimiser steps in a row"):
        t.fit()
    run = tmp_path / "run"
    ck = torch.load(run / "last.pt", weights_only=True)
    assert ck["counters"]["epoch"] == 1 and ck["counters"]["nonfinite_total"] == 0
    # the skipped steps left the weights as after epoch 1, all finite
    assert_same(weights(t.model), ck["model"], atol=0)
    assert all(torch.isfinite(v).all() for v in ck["model"].values())
    assert t.counters["nonfinite_total"] == 2 and t.counters["optimizer_steps"] == 2


def test_two_step_finetuning(tmp_path):
    src = make(tmp_path, "ddmr.Trainer.max_epochs = 1", run="src")
    src.fit()
    src_w = torch.load(tmp_path / "src" / "best.pt", weights_only=True)["model"]
    bind = ["ddmr.Trainer.transfer = @ddmr.finetune()", f"ddmr.finetune.checkpoint = '{tmp_path / 'src' / 'best.pt'}'",
            "ddmr.finetune.strategy = 'two_step'", "ddmr.finetune.decoder_epochs = 1"]
    t = make(tmp_path, *bind, "ddmr.Trainer.max_epochs = 1", run="ft")
    t.setup()
    assert_same({k: v for k, v in weights(t.model).items()}, src_w, atol=0)  # starts from the source
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)
    enc = {id(p) for p in t.model.backbone.parameter_groups()["encoder"]}
    names = {n for n, p in t.model.named_parameters() if id(p) in enc}
    t.fit()
    after1 = weights(t.model)
    assert all(torch.equal(after1[n], src_w[n]) for n in names)  # encoder frozen in step 1
    assert any(not torch.equal(after1[n], src_w[n]) for n in after1 if n.startswith("backbone.decoder"))
    assert t.counters["phase"] == 1
    # step 2 (resumed from the checkpoint): the whole model trains
    t2 = make(tmp_path, *bind, "ddmr.Trainer.max_epochs = 2", run="ft", resume=True)
    t2.fit()
    after2 = weights(t2.model)
    assert all(not torch.equal(after2[n], after1[n]) for n in names)


def test_full_finetuning_starts_from_checkpoint(tmp_path):
    src = make(tmp_path, "ddmr.Trainer.max_epochs = 1", run="src")
    src.fit()
    t = make(tmp_path, "ddmr.Trainer.transfer = @ddmr.finetune()",
             f"ddmr.finetune.checkpoint = '{tmp_path / 'src' / 'last.pt'}'", run="ft", max_steps=1)
    t.setup()
    assert_same(weights(t.model), weights(src.model), atol=0)
    assert all(p.requires_grad for p in t.model.parameters())
    t.fit()
    changed = [n for n, v in weights(t.model).items() if not torch.equal(v, weights(src.model)[n])]
    assert any(n.startswith("backbone.encoder") for n in changed)
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)


def test_a_blown_up_run_never_writes_a_checkpoint_as_good(tmp_path):
    """lr 1e6 blows the weights up in the first step: the validation loss is not finite,
    so neither best.pt nor last.pt is written, and the error says there is no good one."""
    with pytest.raises(TrainingError, match="no good checkpoint"):
        make(tmp_path, "ddmr.Trainer.lr = 1e6", "ddmr.Trainer.max_epochs = 3", "ddmr.Trainer.accumulate = 1").fit()
    assert not (tmp_path / "run" / "best.pt").exists() and not (tmp_path / "run" / "last.pt").exists()
