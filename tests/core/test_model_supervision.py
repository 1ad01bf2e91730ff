"""RegistrationModel's optional supervision by the ground-truth field (``disp_true``)."""

import pytest
import torch

from ddmr_core.errors import ConfigError
from ddmr_core.model.registration_model import RegistrationModel
from ddmr_plugins.backbones.vxm_unet import VxmUNet
from ddmr_plugins.loss_weightings.fixed import fixed
from ddmr_plugins.losses.image import NCCLoss
from ddmr_plugins.losses.regularisers import GradL2
from ddmr_plugins.losses.supervised import EndPointError


def batch(shape=(16, 16, 16), with_truth=True):
    g = torch.Generator().manual_seed(0)
    out = {"fixed": torch.rand(1, 1, *shape, generator=g), "moving": torch.rand(1, 1, *shape, generator=g)}
    if with_truth:
        out["disp_true"] = torch.full((1, 3, *shape), 2.0)
    return out


def model(**kw):
    torch.manual_seed(0)
    return RegistrationModel(VxmUNet(widths=(4, 8), head=(4,)), {"ncc": NCCLoss(), "grad_l2": GradL2()},
                             fixed, **kw)


def test_supervision_is_added_outside_the_weighting():
    plain, supervised = model(), model(supervision=EndPointError(), supervision_weight=0.5)
    total0, terms0, out0 = plain.compute_loss(batch())
    total, terms, out = supervised.compute_loss(batch())
    assert torch.allclose(out["disp"], out0["disp"])
    expected_epe = (out["disp"] - 2.0).pow(2).sum(1).add(1e-6).sqrt().mean()
    assert terms["supervision"].item() == pytest.approx(expected_epe.item(), rel=1e-6)
    assert total.item() == pytest.approx(total0.item() + 0.5 * expected_epe.item(), rel=1e-6)
    assert set(terms) == set(terms0) | {"supervision"}
    total.backward()  # the supervised term reaches the backbone
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in supervised.backbone.parameters())


def test_supervision_ramps_in_over_training_steps_and_validates_at_full_weight():
    plain = model()
    ramped = model(supervision=EndPointError(), supervision_weight=0.5, supervision_ramp_steps=8)
    total0, _, _ = plain.compute_loss(batch())
    for step, factor in ((0, 0.0), (2, 0.25), (8, 1.0), (20, 1.0)):
        ramped.schedule.step = step
        total, terms, _ = ramped.compute_loss(batch())
        assert total.item() == pytest.approx(total0.item() + factor * 0.5 * terms["supervision"].item(), rel=1e-6)
    ramped.schedule.step = 2
    ramped.eval()  # validation: the full weight, whatever the step
    total, terms, _ = ramped.compute_loss(batch())
    assert total.item() == pytest.approx(total0.item() + 0.5 * terms["supervision"].item(), rel=1e-6)
    delayed = model(supervision=EndPointError(), supervision_ramp_steps=(4, 8))
    for step, factor in ((0, 0.0), (4, 0.0), (6, 0.5), (8, 1.0)):
        delayed.schedule.step = step
        assert delayed.supervision_scale() == factor
    switched = model(supervision=EndPointError(), supervision_ramp_steps=(5, 5))  # off, then on
    assert [(setattr(switched.schedule, "step", k), switched.supervision_scale())[1] for k in (4, 5)] == [0.0, 1.0]


def test_supervision_needs_pairs_with_a_ground_truth():
    with pytest.raises(ConfigError, match="disp_true"):
        model(supervision=EndPointError()).compute_loss(batch(with_truth=False))


@pytest.mark.parametrize("kw, words", [(dict(supervision=NCCLoss()), "inputs = 'displacement'"),
                                        (dict(supervision=EndPointError(), supervision_weight=-1), ">= 0"),
                                        (dict(supervision_ramp_steps=-1), "supervision_ramp_steps"),
                                        (dict(supervision_ramp_steps=(5, 2)), "start <= end")])
def test_bad_supervision_settings_are_config_errors(kw, words):
    with pytest.raises(ConfigError, match=words):
        model(**kw)


def test_displacement_losses_can_also_be_weighted_terms():
    net = RegistrationModel(VxmUNet(widths=(4, 8), head=(4,)), {"ncc": NCCLoss(), "epe": EndPointError()}, fixed)
    assert net.loss_names == ["ncc", "epe"]
    total, terms, _ = net.compute_loss(batch())
    assert total.item() == pytest.approx(0.5 * (terms["ncc"] + terms["epe"]).item(), rel=1e-6)


def test_loss_terms_are_float32_under_bf16_autocast():
    """Losses run in float32 whatever the forward pass ran in (bf16 autocast)."""
    from ddmr_plugins.losses.image import SSIMLoss

    net = RegistrationModel(VxmUNet(widths=(4, 8), head=(4,)), {"ncc": NCCLoss(), "ssim": SSIMLoss(win=5)}, fixed,
                            supervision=EndPointError())
    b = batch()
    ref_total, ref_terms, _ = net.compute_loss(b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, terms, _ = net.compute_loss(b)
    assert all(v.dtype == torch.float32 for v in terms.values())
    for k in ref_terms:  # only the bf16 forward pass differs
        assert terms[k].item() == pytest.approx(ref_terms[k].item(), abs=0.02), k
