"""Loss-weighting strategies: equation 1 by hand, uncertainty weighting's values,
gradients and equilibrium, dynamic task prioritisation's weights."""

import math

import pytest
import torch

from ddmr_core.errors import ConfigError
from ddmr_core.plugins.registry import Registry


@pytest.fixture(scope="module")
def registry():
    return Registry()


def terms(**kw):
    return {k: torch.tensor(float(v)) for k, v in kw.items()}


def test_registered(registry):
    assert {"fixed", "uw", "dtp", "dwa"} <= set(registry.names("loss_weightings"))


# ------------------------------------------------------------------------------ fixed
def test_fixed_defaults_are_equal_losses_and_the_papers_regulariser(registry):
    w = registry.create("loss_weightings", "fixed", ["ncc", "ssim", "dice"], ["grad_l2"])
    assert w.weights() == pytest.approx({"ncc": 1 / 3, "ssim": 1 / 3, "dice": 1 / 3, "grad_l2": 5e-3})
    total = w(terms(ncc=0.3, ssim=0.6, dice=0.9, grad_l2=2.0))
    assert total.item() == pytest.approx((0.3 + 0.6 + 0.9) / 3 + 5e-3 * 2.0)


def test_fixed_equation_1_with_given_weights(registry):
    w = registry.create("loss_weightings", "fixed", ["ncc", "dice"], ["grad_l2", "bending"],
                        loss_weights={"ncc": 0.7, "dice": 0.3}, regulariser_weights={"bending": 0.1})
    t = terms(ncc=0.2, dice=0.5, grad_l2=1.0, bending=3.0)
    assert w(t).item() == pytest.approx(0.7 * 0.2 + 0.3 * 0.5 + 5e-3 * 1.0 + 0.1 * 3.0)
    assert not list(w.parameters())  # nothing to learn


def test_fixed_bad_names(registry):
    with pytest.raises(ConfigError, match="'dsc'.*not terms"):
        registry.create("loss_weightings", "fixed", ["ncc"], [], loss_weights={"dsc": 1.0})
    w = registry.create("loss_weightings", "fixed", ["ncc", "dice"], [])
    with pytest.raises(ConfigError, match=r"missing \['dice'\]"):
        w(terms(ncc=0.1))
    with pytest.raises(ConfigError, match="at least one loss"):
        registry.create("loss_weightings", "fixed", [], ["grad_l2"])


# --------------------------------------------------------------------------------- uw
def test_uw_initialisation_follows_the_paper(registry):
    w = registry.create("loss_weightings", "uw", ["ncc", "ssim", "dice"], ["grad_l2"])
    assert w.weights() == pytest.approx({"ncc": 1 / 3, "ssim": 1 / 3, "dice": 1 / 3, "grad_l2": 5e-3}, rel=1e-6)
    assert sum(p.numel() for p in w.parameters() if p.requires_grad) == 4


def test_uw_kendall_value_and_gradient_by_hand(registry):
    w = registry.create("loss_weightings", "uw", ["ncc", "dice"], ["grad_l2"])
    t = terms(ncc=0.4, dice=0.8, grad_l2=2.0)
    s = [math.log(2), math.log(2), -math.log(5e-3)]  # s = -log(initial weight)
    vals = [0.4, 0.8, 2.0]
    expected = sum(math.exp(-si) * v + si for si, v in zip(s, vals))
    total = w(t)
    assert total.item() == pytest.approx(expected, rel=1e-6)
    total.backward()
    # d/ds (exp(-s) T + s) = 1 - exp(-s) T
    grads = [1 - math.exp(-si) * v for si, v in zip(s, vals)]
    assert w.log_vars.grad.tolist() == pytest.approx(grads, rel=1e-5)


def test_uw_kendall_weights_settle_at_inverse_loss(registry):
    # constant terms: the minimum of exp(-s) T + s is at exp(-s) = 1 / T
    w = registry.create("loss_weightings", "uw", ["a", "b"], [])
    opt = torch.optim.Adam(w.parameters(), lr=0.05)
    t = terms(a=0.5, b=2.0)
    for _ in range(1500):
        opt.zero_grad()
        w(t).backward()
        opt.step()
    assert w.weights() == pytest.approx({"a": 2.0, "b": 0.5}, rel=1e-2)


def test_uw_softmax_form_keeps_loss_weights_summing_to_one(registry):
    w = registry.create("loss_weightings", "uw", ["a", "b", "c"], ["r"], form="softmax")
    opt = torch.optim.SGD(w.parameters(), lr=0.5)
    for _ in range(20):
        opt.zero_grad()
        w(terms(a=0.1, b=0.5, c=1.0, r=1.0)).backward()
        opt.step()
    ws = w.weights()
    assert ws["a"] + ws["b"] + ws["c"] == pytest.approx(1.0, abs=1e-6)
    assert ws["a"] > ws["b"] > ws["c"]  # no penalty: weight moves to the smallest loss
    assert ws["r"] < 5e-3


def test_uw_rejects_unknown_form(registry):
    with pytest.raises(ConfigError, match="form"):
        registry.create("loss_weightings", "uw", ["a"], [], form="bayes")


# -------------------------------------------------------------------------------- dtp
def test_dtp_weights_follow_the_focal_form(registry):
    w = registry.create("loss_weightings", "dtp", ["easy", "hard"], ["grad_l2"], gamma=2.0, momentum=0.5)
    assert w.weights() == pytest.approx({"easy": 0.5, "hard": 0.5, "grad_l2": 5e-3})
    w.train()
    t = terms(easy=0.1, hard=0.8, grad_l2=1.0)
    w(t)  # first step: averages start at the values
    w(terms(easy=0.3, hard=0.4, grad_l2=1.0))  # average = 0.5 old + 0.5 new
    m = {"easy": 0.2, "hard": 0.6}
    raw = {k: -((1 - math.exp(-v)) ** 2) * math.log(math.exp(-v)) for k, v in m.items()}
    norm = sum(raw.values())
    expected = {k: v / norm for k, v in raw.items()}
    got = w.weights()
    assert got["easy"] == pytest.approx(expected["easy"], rel=1e-5)
    assert got["hard"] == pytest.approx(expected["hard"], rel=1e-5)
    assert got["hard"] > got["easy"]  # the harder term gets priority
    total = w(terms(easy=0.1, hard=0.1, grad_l2=2.0))
    assert total.item() == pytest.approx(0.1 + 5e-3 * 2.0, rel=1e-5)  # weights sum to 1


def test_dtp_does_not_update_in_eval_mode_and_checkpoints_its_state(registry):
    w = registry.create("loss_weightings", "dtp", ["a", "b"], [])
    w.train()
    w(terms(a=0.2, b=0.9))
    before = w.weights()
    w.eval()
    w(terms(a=5.0, b=0.0))
    assert w.weights() == before
    state = w.state_dict()
    assert {"average", "seen"} <= set(state)
    other = registry.create("loss_weightings", "dtp", ["a", "b"], [])
    other.load_state_dict(state)
    assert other.weights() == pytest.approx(before)


def test_dtp_weights_carry_no_gradient(registry):
    w = registry.create("loss_weightings", "dtp", ["a", "b"], [])
    a = torch.tensor(0.5, requires_grad=True)
    b = torch.tensor(0.2, requires_grad=True)
    w({"a": a, "b": b}).backward()
    wa = w.weights()["a"]
    assert a.grad.item() == pytest.approx(wa, rel=1e-6)  # d total / d a = w_a exactly


# -------------------------------------------------------------------------------- dwa
def test_dwa_weights_the_slowest_falling_term_by_softmax_of_rates(registry):
    w = registry.create("loss_weightings", "dwa", ["fast", "slow"], ["grad_l2"],
                        temperature=2.0, period=2, momentum=0.0)  # momentum 0: average = last value
    w.train()
    assert w.weights() == pytest.approx({"fast": 0.5, "slow": 0.5, "grad_l2": 5e-3})
    for fast, slow in [(1.0, 1.0), (1.0, 1.0), (0.5, 0.9), (0.25, 0.8)]:
        w(terms(fast=fast, slow=slow, grad_l2=1.0))
    # after 4 steps: rates = value at step 4 / value at step 2 = 0.25 and 0.8
    e = [math.exp(0.25 / 2.0), math.exp(0.8 / 2.0)]
    got = w.weights()
    assert got["fast"] == pytest.approx(e[0] / sum(e), rel=1e-5)
    assert got["slow"] == pytest.approx(e[1] / sum(e), rel=1e-5)
    assert got["fast"] + got["slow"] == pytest.approx(1.0)
    w.eval()
    w(terms(fast=9.0, slow=0.01, grad_l2=1.0))
    assert w.weights() == got  # evaluation does not move the weights
