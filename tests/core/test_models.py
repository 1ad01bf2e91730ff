"""The ``models`` plugin kind (issue 15): trained models by name.

A tiny checkpoint (``tests/tiny_workspace.py``'s light U-Net) is registered through a
test plugin, or dropped into the built-in plugin's weights folder, and used by name in
``ddmr register`` and ``ddmr evaluate``; names and paths resolve through one function,
:func:`ddmr_core.model.checkpoint.resolve_model`."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest

from ddmr_core.model.checkpoint import load_model, resolve_model
from ddmr_core.cli import main
from ddmr_core.errors import PluginError, UnknownNameError
from ddmr_core.plugins.hookspecs import hookimpl
from ddmr_core.plugins.manager import get_plugin_manager
from ddmr_core.plugins.registry import Registry


class ModelPlugin:
    def __init__(self, models):
        self.models = models

    @hookimpl
    def ddmr_models(self):
        return dict(self.models)


@pytest.fixture
def install_models(monkeypatch):
    """``install_models({name: factory})``: every plugin manager (the CLI's too) gets them."""
    import ddmr_core.plugins.registry as registry

    real = registry.get_plugin_manager

    def install(models):
        def patched(autoload=None, extra_plugins=()):
            return real(autoload, list(extra_plugins) + [("test_models", ModelPlugin(models))])

        monkeypatch.setattr(registry, "get_plugin_manager", patched)

    return install


def test_names_may_hold_hyphens_but_not_dots_or_slashes():
    for bad in ("brain.mr", "a/b", "-x", ""):
        pm = get_plugin_manager(autoload=False, extra_plugins=[("bad", ModelPlugin({bad: lambda: "x.pt"}))])
        with pytest.raises(PluginError, match="not a valid model name"):
            Registry(pm, bind_gin=False)
    pm = get_plugin_manager(autoload=False, extra_plugins=[("ok", ModelPlugin({"brain-mr_2": lambda: "x.pt"}))])
    # bind_gin: models are skipped; the built-in models (distribution ddmr) are listed too
    entries = Registry(pm).entries("models")
    assert [e.name for e in entries if e.distribution != "ddmr"] == ["brain-mr_2"]


def test_resolve_model_path_wins_then_names(tiny_workspace, install_models, tmp_path, monkeypatch):
    good = Path(tiny_workspace["good"])
    install_models({"tiny-mr": lambda: good, "good": lambda: tmp_path / "other.pt"})
    assert resolve_model("tiny-mr") == good
    assert resolve_model(str(good)) == str(good)  # an existing file is that file
    monkeypatch.chdir(good.parent)
    assert resolve_model("good.pt") == "good.pt"
    (tmp_path / "w").mkdir()
    monkeypatch.chdir(tmp_path / "w")
    Path("tiny-mr").write_bytes(good.read_bytes())  # a file named like a model: the file wins
    assert resolve_model("tiny-mr") == "tiny-mr"
    # path-like values are paths: load_checkpoint reports them missing
    assert resolve_model("gone.pt") == Path("gone.pt")
    assert resolve_model("sub/tiny-mr") == Path("sub/tiny-mr")
    with pytest.raises(UnknownNameError, match=r"model 'tiny-m' is neither a checkpoint file nor a registered model "
                                               r"name \(did you mean 'tiny-mr'\?\); available models: (.+, )?good, tiny-mr$"):
        resolve_model("tiny-m")
    with pytest.raises(PluginError, match=r"model 'good' of plugin 'test_models'.*does not exist"):
        resolve_model("good")


def test_a_factory_may_return_an_open_file(tiny_workspace, install_models):
    data = Path(tiny_workspace["good"]).read_bytes()
    install_models({"streamed": lambda: io.BytesIO(data)})
    model, ckpt = load_model("streamed")
    assert ckpt["input_size"] == [16, 16, 16]
    broken = io.BytesIO(b"junk")
    broken.name = "junk-stream"
    install_models({"broken": lambda: broken})
    from ddmr_core.errors import CheckpointError

    with pytest.raises(CheckpointError, match="junk-stream"):
        load_model("broken")


def test_ddmr_plugins_lists_models(tiny_workspace, install_models, capsys):
    install_models({"tiny-mr": lambda: Path(tiny_workspace["good"])})
    assert main(["plugins", "--kind", "models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    import ddmr_plugins.models as builtin

    # the shipped models (one per weights file) are listed like the third party's
    assert [r for r in rows if r["distribution"] != "ddmr"] == [
        {"kind": "models", "name": "tiny-mr", "gin": None, "plugin": "test_models", "distribution": "<local>"}]
    assert sorted(r["name"] for r in rows if r["distribution"] == "ddmr") == sorted(builtin.shipped())
    assert main(["plugins", "--kind", "models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["KIND", "NAME", "DISTRIBUTION"]
    assert ["models", "tiny-mr", "<local>"] in [line.split()[:3] for line in lines[1:]]
    assert main(["plugins"]) == 0
    assert "tiny-mr" in capsys.readouterr().out


def test_builtin_plugin_registers_only_weight_files_that_exist(tiny_workspace, tmp_path, monkeypatch):
    import ddmr_plugins.models as builtin
    from ddmr_core.model.publish import record_sha256
    from ddmr_core.model.zoo import IntegrityError

    monkeypatch.setattr(builtin, "WEIGHTS", tmp_path / "weights")
    assert Registry(bind_gin=False).names("models") == []  # no folder: nothing listed
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "README.md").write_text("not a model")
    shutil.copy(tiny_workspace["good"], tmp_path / "weights" / "tiny-mr.pt")  # unversioned: not a release
    assert Registry(bind_gin=False).names("models") == []
    shutil.copy(tiny_workspace["good"], tmp_path / "weights" / "tiny-mr@1.pt")
    reg = Registry(bind_gin=False)
    assert reg.names("models") == ["tiny-mr"]
    entry = reg.entry("models", "tiny-mr")
    assert (entry.plugin, entry.distribution) == ("builtin_models", "ddmr")
    # a weight file without its line in SHA256SUMS is listed but never loaded
    with pytest.raises(IntegrityError, match="no sha256 in"):
        resolve_model("tiny-mr")
    record_sha256(tmp_path / "weights" / "tiny-mr@1.pt")
    assert resolve_model("tiny-mr") == tmp_path / "weights" / "tiny-mr@1.pt"
    assert resolve_model("tiny-mr@1") == tmp_path / "weights" / "tiny-mr@1.pt"
    # the shipped folder: every release's file is at most 2 MB
    for releases in builtin.shipped().values():
        for release in releases:
            assert release.size <= 2 * 1024 * 1024


def test_register_and_evaluate_take_a_name(tiny_workspace, install_models, tmp_path, capsys):
    install_models({"tiny-mr": lambda: Path(tiny_workspace["good"])})
    ws = tiny_workspace
    out = tmp_path / "out"
    rc = main(["register", "--fixed", ws["f"], "--moving", ws["m"], "--model", "tiny-mr", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    res = json.loads((out / "results.json").read_text())
    assert res["inputs"]["model"] == "tiny-mr" and res["inputs"]["checkpoint"] == ws["good"]
    assert "tiny-mr" in capsys.readouterr().out
    rc = main(["evaluate", "--testset", ws["testset"], "--model", "tiny-mr", "--model", f"named={ws['good']}",
               "--metric", "dsc", "--out", str(tmp_path / "ev"), "--no-figures"])
    assert rc == 0, capsys.readouterr().err
    rows = (tmp_path / "ev" / "per_pair.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["tiny-mr", "named"]
    assert rows[1].split(",")[3:] == rows[2].split(",")[3:]  # the same model, the same scores


def test_unknown_model_name_is_one_line(tiny_workspace, install_models, tmp_path, capsys):
    install_models({"tiny-mr": lambda: Path(tiny_workspace["good"])})
    ws = tiny_workspace
    for argv in (["register", "--fixed", ws["f"], "--moving", ws["m"], "--model", "tiny_mr", "--out",
                  str(tmp_path / "out")],
                 ["evaluate", "--testset", ws["testset"], "--model", "tiny_mr", "--out", str(tmp_path / "ev")]):
        assert main(argv) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ddmr: error: "), lines
        assert "'tiny_mr'" in lines[0] and "did you mean 'tiny-mr'" in lines[0] and "tiny-mr" in lines[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "ev").exists()


def test_finetuning_starts_from_a_registered_model_by_name(tiny_workspace, install_models):
    import copy

    import torch

    from ddmr_core.training.transfer import load_pretrained

    good = Path(tiny_workspace["good"])
    install_models({"tiny-mr": lambda: good})
    model, _ = load_model(good)
    fresh = copy.deepcopy(model)
    with torch.no_grad():
        for p in fresh.backbone.parameters():
            p.zero_()
    load_pretrained(fresh, "tiny-mr")  # ddmr.finetune.checkpoint = 'tiny-mr'
    for (name, a), b in zip(model.backbone.state_dict().items(), fresh.backbone.state_dict().values()):
        assert torch.equal(a, b), name
