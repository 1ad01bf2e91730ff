"""The shipped experiment configs: each of the six designs for brain, abdomen and the two
finetuning strategies parses, builds its model, and carries the paper's training schedule."""

import gin
import pytest

from ddmr_core.config.parsing import config_root, parse_config
from ddmr_core.data.datasets import input_size
from ddmr_core.model.build import build_model

DESIGNS = ("bl_n", "bl_ns", "sg_nd", "sg_nsd", "uw_nsd", "uw_nsdh")
GROUPS = ("brain", "abdomen", "finetune_full", "finetune_two_step")
# build the paper's 6-level U-Net with 4 filters per level so the check stays fast
SMALL = ["SIZE = (64, 64, 64)", "ddmr.backbones.vxm_unet.widths = [4, 4, 4, 4, 4, 4]",
         "ddmr.backbones.vxm_unet.head = [4]"]


def test_every_design_has_all_experiments():
    root = config_root() / "experiments"
    for g in GROUPS:
        assert sorted(p.stem for p in (root / g).glob("*.gin")) == sorted(DESIGNS), g


@pytest.mark.parametrize("group", GROUPS)
def test_experiment_configs(group):
    for design in DESIGNS:
        parse_config([f"experiments/{group}/{design}.gin"])
        # the paper's schedule (section 2.4) and grid
        assert gin.query_parameter("ddmr.Trainer.lr") == 1e-3
        assert gin.query_parameter("ddmr.Trainer.accumulate") == 8
        assert gin.query_parameter("ddmr.Trainer.batch_size") == 1
        assert gin.query_parameter("ddmr.Trainer.plateau_factor") == 0.1
        assert gin.query_parameter("ddmr.Trainer.plateau_patience") == 10
        assert input_size() == (128, 128, 128)
        data = gin.query_parameter("ddmr.build_dataset.dataset").selector
        assert data == ("ddmr.datasets.mni_brain" if group == "brain" else "ddmr.datasets.abdomen_phantom")
        if group.startswith("finetune"):
            assert gin.query_parameter("ddmr.finetune.lr") == 1e-4
            assert gin.query_parameter("ddmr.finetune.strategy") == group.split("_", 1)[1]
            assert gin.query_parameter("ddmr.finetune.checkpoint") == f"runs/brain/{design}/best.pt"
        parse_config([f"experiments/{group}/{design}.gin"], SMALL)
        model = build_model()
        # segmentation-guided and uncertainty-weighted designs compare segmentations
        assert model.needs_segmentations == (not design.startswith("bl")), design
        assert (model.weighting is not None and sum(p.numel() for p in model.weighting.parameters()) > 0) \
            == design.startswith("uw"), design


def test_input_size_from_its_binding_else_the_size_macro_else_none():
    parse_config(text="SIZE = (8, 8, 8)\nddmr.input_size.size = (16, 12, 8)")
    assert input_size() == (16, 12, 8)
    parse_config(text="SIZE = (8, 8, 8)")
    assert input_size() == (8, 8, 8)
    parse_config(text="")
    assert input_size() is None  # the trainer then takes the data's grid


def test_gin_knows_every_configurable_of_the_library_without_a_list():
    """Every ddmr_core module defining a configurable is imported before parsing."""
    import ddmr_core
    from pathlib import Path

    from ddmr_core.config.parsing import gin_modules

    names = set(gin_modules())
    assert "ddmr_core.cli" not in names and not any(n.startswith("ddmr_core.commands") for n in names)
    root = Path(ddmr_core.__file__).parent
    for path in root.rglob("*.py"):
        if "gin.configurable" in path.read_text() and path.parent.name not in ("commands", "serve"):
            module = ".".join(("ddmr_core",) + path.relative_to(root).with_suffix("").parts)
            assert module in names, path
    parse_config(text="ddmr.Trainer.lr = 0.5\nddmr.finetune.lr = 0.1\nddmr.preprocess.spacing = 2.0")
