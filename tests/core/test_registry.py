"""Plugin manager, registry, gin binding and the error messages users see."""

import importlib
import textwrap

import gin
import pytest
import torch

from ddmr_core.config.parsing import parse_config, resolve_config
from ddmr_core.errors import ConfigError, PluginError, UnknownNameError
from ddmr_core.plugins.hookspecs import hookimpl
from ddmr_core.plugins.manager import get_plugin_manager
from ddmr_core.plugins.registry import Registry


def test_builtins_come_from_the_ddmr_distribution():
    reg = Registry(get_plugin_manager(autoload=False))
    entry = reg.entry("datasets", "synthetic")
    assert entry.distribution == "ddmr"
    assert entry.plugin.startswith("builtin_")
    assert entry.gin_name == "ddmr.datasets.synthetic"


def test_two_plugins_giving_one_name_is_an_error_naming_both():
    class A:
        @hookimpl
        def ddmr_losses(self):
            return {"dup": torch.nn.L1Loss}

    class B:
        @hookimpl
        def ddmr_losses(self):
            return {"dup": torch.nn.MSELoss}

    pm = get_plugin_manager(autoload=False, extra_plugins=[("alpha", A()), ("beta", B())])
    with pytest.raises(PluginError) as err:
        Registry(pm)
    assert "'dup'" in str(err.value) and "alpha" in str(err.value) and "beta" in str(err.value)


def test_hook_returning_a_non_mapping_is_reported():
    class Bad:
        @hookimpl
        def ddmr_metrics(self):
            return ["not", "a", "mapping"]

    with pytest.raises(PluginError, match="bad_plugin.*mapping"):
        Registry(get_plugin_manager(autoload=False, extra_plugins=[("bad_plugin", Bad())]))


def test_unknown_name_lists_available_names():
    reg = Registry(get_plugin_manager(autoload=False))
    with pytest.raises(UnknownNameError) as err:
        reg.get("datasets", "synthetc")
    msg = str(err.value)
    assert "synthetc" in msg and "did you mean 'synthetic'" in msg and "available datasets: " in msg


def test_unknown_name_in_a_config_lists_available_names():
    with pytest.raises(UnknownNameError) as err:
        parse_config(bindings=["ddmr.build_dataset.dataset = @ddmr.datasets.nosuch()"])
    assert "unknown datasets name 'nosuch'" in str(err.value)
    assert "synthetic" in str(err.value)


def test_malformed_gin_names_the_file(tmp_path):
    bad = tmp_path / "bad.gin"
    bad.write_text("ddmr.build_dataset.dataset = \nthis is not gin\n")
    with pytest.raises(ConfigError) as err:
        parse_config([bad])
    assert str(bad) in str(err.value) and "invalid gin config" in str(err.value)


def test_unknown_parameter_is_a_config_error():
    with pytest.raises(ConfigError, match="parameter named 'nonsense'"):
        parse_config(bindings=["ddmr.datasets.synthetic.nonsense = 3"])


def test_missing_config_file_lists_shipped_configs():
    with pytest.raises(ConfigError, match="not found"):
        resolve_config("no/such/config.gin")


def test_gin_bindings_reach_plugin_factories():
    reg = parse_config(bindings=["ddmr.datasets.synthetic.n_labels = 5", "ddmr.build_dataset.dataset = @ddmr.datasets.synthetic()"])
    from ddmr_core.data.datasets import build_dataset

    assert build_dataset().labels == (1, 2, 3, 4, 5)
    assert reg.create("datasets", "synthetic").labels == (1, 2, 3, 4, 5)


def test_a_plugin_that_fails_to_import_is_named(tmp_path, monkeypatch):
    # a real distribution whose entry point's module raises on import
    dist = tmp_path / "broken_ddmr_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-ddmr-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[ddmr]\nbroken = broken_ddmr_module\n")
    (tmp_path / "broken_ddmr_module.py").write_text("raise ImportError('missing dependency foo')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    monkeypatch.delenv("DDMR_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    with pytest.raises(PluginError) as err:
        get_plugin_manager()
    msg = str(err.value)
    assert "'broken'" in msg and "broken-ddmr-plugin" in msg and "missing dependency foo" in msg
    # switching autoloading off skips it
    monkeypatch.setenv("DDMR_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert "broken" not in get_plugin_manager().distributions


def test_third_party_plugin_is_loaded_through_entry_points(with_third_party, monkeypatch):
    reg = Registry()
    entry = reg.entry("losses", "tversky")
    assert entry.distribution == "ddmr-example-plugin"
    assert reg.entry("augmenters", "gaussian_noise").distribution == "ddmr-example-plugin"
    monkeypatch.setenv("DDMR_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert "tversky" not in Registry().names("losses")


def test_third_party_loss_used_from_a_gin_config(with_third_party, tmp_path):
    cfg = tmp_path / "exp.gin"
    cfg.write_text(textwrap.dedent("""
        # the third-party loss, configured like any built-in
        ddmr.losses.tversky.alpha = 0.7
        ddmr.losses.tversky.beta = 0.3
        LOSSES = {'tversky': @ddmr.losses.tversky()}
        probe.losses = %LOSSES
    """))

    @gin.configurable
    def probe(losses=None):
        return losses

    parse_config([cfg])
    loss = probe()["tversky"]
    assert loss.alpha == 0.7 and loss.inputs == "segmentation"
    pred = torch.zeros(1, 1, 2, 2, 2)
    target = torch.zeros(1, 1, 2, 2, 2)
    pred[..., 0, :, :] = 1          # 4 voxels predicted
    target[..., :, 0, :] = 1        # 4 voxels true, 2 of them predicted
    # TP = 2, FP = 2, FN = 2: 1 - 2 / (2 + 0.7*2 + 0.3*2) = 0.5
    assert loss(pred, target).item() == pytest.approx(0.5, abs=1e-5)


def test_third_party_augmenter_runs_in_the_pipeline(with_third_party):
    from ddmr_core.data.augment import AugmentationPipeline

    reg = Registry()
    noise = reg.create("augmenters", "gaussian_noise", max_sigma=0.1)
    pipe = AugmentationPipeline([noise], seed=3)
    image = torch.full((2, 1, 8, 8, 8), 0.5)
    out = pipe(image, index=torch.tensor([0, 1]))
    assert torch.equal(out["fixed"], image)
    assert not torch.equal(out["moving"], image)            # noise was added ...
    assert (out["moving"] - image).abs().std() < 0.1 * 1.5  # ... of sigma <= 0.1
    again = pipe(image, index=torch.tensor([0, 1]))
    assert torch.equal(again["moving"], out["moving"])     # reproducible from (seed, index)


def test_registry_without_gin_still_builds_components():
    reg = Registry(get_plugin_manager(autoload=False), bind_gin=False)
    assert reg.create("datasets", "synthetic", n_labels=2).labels == (1, 2)


def test_unbound_macro_is_named(tmp_path):
    cfg = tmp_path / "exp.gin"
    cfg.write_text("include 'designs/bl_n.gin'\n")  # uses %SIZE without setting it
    with pytest.raises(ConfigError, match=r"macro\(s\) SIZE but never sets"):
        parse_config([cfg], check_macros=True)
    parse_config([cfg], ["SIZE = (32, 32, 32)"], check_macros=True)
