"""The paper's six designs (Table 1): each parses, builds at a tiny size and trains one step.

Widths are overridden through gin bindings, as a user would, to keep the test fast.
"""

import pytest
import torch

from ddmr_core.config.parsing import config_root, parse_config
from ddmr_core.errors import ConfigError
from ddmr_core.model.build import build_model
from ddmr_core.spatial.fields import one_hot
from ddmr_plugins.datasets.synthetic import make_phantom

# Table 1: design -> (loss terms besides the regulariser, weighting class name)
TABLE_1 = {
    "bl_n": ({"ncc"}, "FixedWeighting"),
    "bl_ns": ({"ncc", "ssim"}, "FixedWeighting"),
    "sg_nd": ({"ncc", "dice"}, "FixedWeighting"),
    "sg_nsd": ({"ncc", "ssim", "dice"}, "FixedWeighting"),
    "uw_nsd": ({"ncc", "ssim", "dice"}, "UncertaintyWeighting"),
    "uw_nsdh": ({"ncc", "ssim", "dice", "hausdorff"}, "UncertaintyWeighting"),
}
TINY = [
    "SIZE = (16, 16, 16)",
    "ddmr.backbones.vxm_unet.widths = [4, 8]",
    "ddmr.backbones.vxm_unet.head = [4]",
]
LABELS = (1, 2)


def _batch():
    out = {}
    for role, seed in (("fixed", 1), ("moving", 2)):
        image, labels = make_phantom((16, 16, 16), len(LABELS), seed)
        out[role] = torch.from_numpy(image)[None, None]
        out[f"{role}_segs"] = one_hot(torch.from_numpy(labels)[None, None], LABELS)
    return out


def test_every_design_file_is_listed():
    shipped = {p.stem for p in (config_root() / "designs").glob("*.gin")}
    assert shipped == set(TABLE_1)


@pytest.mark.parametrize("design", sorted(TABLE_1))
def test_design_builds_and_trains_one_step(design):
    text = (config_root() / "designs" / f"{design}.gin").read_text()
    assert text.startswith("# Design "), "each design documents itself at its top"
    parse_config([f"designs/{design}"], bindings=TINY)
    model = build_model()
    losses, weighting = TABLE_1[design]
    assert set(model.loss_names) == losses
    assert model.regulariser_names == ["grad_l2"]
    assert type(model.weighting).__name__ == weighting
    assert model.backbone.widths == (4, 8)

    total, terms, out = model.compute_loss(_batch())
    assert set(terms) == losses | {"grad_l2"}
    assert torch.isfinite(total)
    total.backward()
    grads = [p.grad for p in model.backbone.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    weights = model.current_weights()
    assert set(weights) == set(terms)
    assert weights["grad_l2"] == pytest.approx(5e-3)  # the paper's regulariser weight
    if weighting == "UncertaintyWeighting":  # learnt by the same optimiser as the network
        assert model.weighting.log_vars.grad is not None


@pytest.mark.parametrize("design", ["sg_nd", "uw_nsdh"])
def test_segmentation_designs_without_segmentations(design):
    parse_config([f"designs/{design}"], bindings=TINY)
    model = build_model()
    with pytest.raises(ConfigError, match=r"compare segmentations.*no label maps"):
        model.check_segmentations(())  # build time: the dataset has no labels
    model.check_segmentations(LABELS)
    batch = {k: v for k, v in _batch().items() if not k.endswith("segs")}
    with pytest.raises(ConfigError, match="compares segmentations, but the batch has none"):
        model.compute_loss(batch)


def test_intensity_design_needs_no_segmentations():
    parse_config(["designs/bl_ns"], bindings=TINY)
    model = build_model()
    model.check_segmentations(())
    batch = {k: v for k, v in _batch().items() if not k.endswith("segs")}
    total, _, _ = model.compute_loss(batch)
    assert torch.isfinite(total)


def test_paper_backbone_mixin_overrides_the_light_default():
    parse_config(["designs/uw_nsd", "mixins/backbone/vxm_paper"], bindings=["SIZE = (64, 64, 64)"])
    with torch.device("meta"):  # shapes only: no memory for 85 M parameters
        model = build_model()
    assert model.backbone.widths == (32, 64, 128, 256, 512, 1024)
    parse_config(["designs/uw_nsd", "mixins/backbone/vxm_paper"], bindings=["SIZE = (32, 32, 32)"])
    with pytest.raises(ConfigError, match=r"\(32, 32, 32\).*64 = 2\^levels"):
        build_model()


@pytest.mark.parametrize("weighting,cls", [("fixed", "FixedWeighting"), ("uw", "UncertaintyWeighting"),
                                            ("dtp", "DynamicTaskPrioritisation"), ("dwa", "DynamicWeightAverage")])
def test_weighting_mixins_swap_into_a_design(weighting, cls):
    parse_config(["designs/sg_nsd", f"mixins/weighting/{weighting}"], bindings=TINY)
    model = build_model()
    assert type(model.weighting).__name__ == cls
    total, terms, _ = model.compute_loss(_batch())
    total.backward()
    assert torch.isfinite(total)
    assert set(model.current_weights()) == set(terms)
