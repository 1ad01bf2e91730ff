"""Hostile inputs, second round (issue 37): a table of command lines that must each fail
cleanly, and the behaviours behind them.

Every case of :data:`CASES` runs ``ddmr`` in-process on the shared tiny workspaces
(``tiny_workspace`` and ``hostile_workspace``, 16^3 volumes) and must

* exit non-zero (``rc`` when a case names one),
* print exactly one line on stderr, ``ddmr: error: ...``, holding the expected words
  (so no traceback, and no 3,000 lines of recursion),
* print none of the ``forbidden`` words on stdout or stderr: nothing a hostile config
  imports runs (``import this`` would print the Zen of Python) and no file a config tries
  to include is echoed (the secret, ``/etc/passwd``'s ``root:``),
* leave both workspaces exactly as they were (every file's content and mode, every
  folder, hidden ones included): no input destroyed, no output or lock file left.

The classes, by id prefix: ``cfg-`` configs that import or include (issue points 1, 2
and 10's self-include), ``ckpt-`` corrupted and crafted checkpoints (3, 9), ``jac-`` and
``field-`` fields that overflow or have singular affines (4, 10), ``io-`` outputs that
are inputs (5, 6), ``lock-`` a second process on one output folder (7), ``spacing-`` and
``mem-`` implausible spacing and memory (8), ``path-``, ``pairs-``, ``card-`` and
``args-`` ordinary edge cases (10).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from hostile_workspace import CONFIGS
from tiny_workspace import SECRET, ZEN, snapshot

from ddmr_core.cli import main

FORBIDDEN = (ZEN, SECRET, "root:", "Traceback")
GRID3 = (16, 16, 16)


@dataclass
class Case:
    id: str
    argv: str  # {name} placeholders: entries of both workspaces
    words: tuple  # expected in the one error line
    rc: int | None = None  # None: any non-zero status
    env: dict = field(default_factory=dict)
    lock: str | None = None  # a workspace key whose output lock another holder has


# ------------------------------------------------------------------ configs
#: a command line per command that reads gin files, with {C} for the file
CONFIG_COMMANDS = {
    "train": "train {C} --out {new_out}",
    "evaluate": "evaluate --testset {testset} --baseline identity --no-figures --config {C} --out {new_out}",
    "build": "build-testset --dataset synthetic --pairs 1 --size 16 --seed 0 --config {C} --out {new_out}",
    "prepare": "prepare --dataset synthetic --size 16 --config {C} --out {new_out}",
}
BINDING_COMMANDS = {
    "train": "train {tiny} --out {new_out} --gin {B}",
    "evaluate": "evaluate --testset {testset} --baseline identity --no-figures --out {new_out} --gin {B}",
    "build": "build-testset --dataset synthetic --pairs 1 --size 16 --seed 0 --out {new_out} --gin {B}",
    "prepare": "prepare --dataset synthetic --size 16 --out {new_out} --gin {B}",
}


def _config_words(name: str) -> tuple:
    if name.startswith("imp_"):
        return ("line", "`import", "refused", "--trust-config")
    if name == "dynamic":
        return ("dynamic.gin line 1", "__gin__", "refused")
    if name in ("inc_self", "inc_cycle_a"):
        return ("line 1", "cycle")
    if name == "inc_missing":
        return ("inc_missing.gin line 1", "not found")
    if name == "syntax_secret":
        return ("syntax_secret.gin", "invalid gin config")
    return ("line 1", "`include", "refused")


CONFIG_NAMES = [n for n in CONFIGS if n != "inc_cycle_b"] + ["binary", "loop"]
EXTRA_WORDS = {"binary": ("binary.gin", "cannot be read"), "loop": ("loop_a.gin", "not found"),
               "deep": ("deep.gin", "nested too deeply")}
BINDINGS = {
    "import-this": ("import this", ("gin bindings line 1", "`import this`", "refused")),
    "import-os": ("import os", ("gin bindings line 1", "`import os`", "refused")),
    "dynamic": ("from __gin__ import dynamic_registration", ("gin bindings", "__gin__")),
    "include-passwd": ("include '/etc/passwd'", ("gin bindings", "`include", "refused")),
    "include-secret": ("include '{hws}/secret.gin'", ("gin bindings", "`include", "refused")),
    "deep": ("ddmr.Trainer.lr = " + "(" * 5000 + "1" + ")" * 5000, ("gin bindings", "nested too deeply")),
}

CASES: list[Case] = []
for cmd, line in CONFIG_COMMANDS.items():
    for name in CONFIG_NAMES:
        CASES.append(Case(f"cfg-{cmd}-{name}", line.replace("{C}", "{cfg_" + name + "}"),
                          EXTRA_WORDS.get(name) or _config_words(name)))
    for bid, (binding, words) in BINDINGS.items():
        CASES.append(Case(f"cfg-{cmd}-gin-{bid}", BINDING_COMMANDS[cmd].replace("{B}", shlex.quote(binding)), words))
for name in ("imp_this", "inc_passwd", "inc_self"):
    CASES.append(Case(f"cfg-build-augment-{name}", "build-testset --dataset synthetic --pairs 1 --size 16 --seed 0 "
                      "--augment {cfg_" + name + "} --out {new_out}", _config_words(name)))
CASES += [
    # --trust-config lifts the import/include rules, not the cycle check or the no-echo rule
    Case("cfg-trusted-self-include", "train --trust-config {cfg_inc_self} --out {new_out}", ("cycle",)),
    Case("cfg-trusted-syntax-secret", "prepare --dataset synthetic --size 16 --trust-config --config "
         "{cfg_syntax_secret} --out {new_out}", ("invalid gin config",)),
    Case("cfg-trained-passwd", "train /etc/passwd --out {new_out}", ("/etc/passwd", "invalid gin config")),
    Case("cfg-train-no-losses", "train {no_losses} --out {new_out}", ("no loss to train on",)),
]

# -------------------------------------------------------------- checkpoints
REG = "register --fixed {f} --moving {m} --out {new_out} --model "
CKPT_WORDS = {
    "crc": ("crc.pt", "corrupt", "CRC"),
    "cut_tail": ("cut_tail.pt", "cannot be read"),
    "cut_third": ("cut_third.pt", "cannot be read"),
    "cut_head": ("cut_head.pt", "cannot be read"),
    "ck_size_huge": ("input_size", "2..1024"),
    "ck_size_big_volume": ("input_size", "voxels"),
    "ck_size_zero": ("input_size",),
    "ck_size_negative": ("input_size",),
    "ck_size_text": ("input_size", "3 whole numbers"),
    "ck_size_two": ("input_size", "3 whole numbers"),
    "ck_size_float": ("input_size", "3 whole numbers"),
    "ck_size_bool": ("input_size", "3 whole numbers"),
    "ck_size_nested": ("input_size",),
    "ck_labels_zero": ("labels", "1..255"),
    "ck_labels_256": ("labels", "1..255"),
    "ck_labels_negative": ("labels", "1..255"),
    "ck_labels_nested": ("labels",),
    "ck_labels_text": ("labels",),
    "ck_labels_many": ("labels", "at most 255"),
    "ck_labels_twice": ("labels", "distinct"),
    "ck_labels_float": ("labels",),
    "ck_pre_window_nan": ("preprocess window", "finite"),
    "ck_pre_window_inf": ("preprocess window", "finite"),
    "ck_pre_window_reversed": ("preprocess window", "lo < hi"),
    "ck_pre_window_text": ("preprocess window",),
    "ck_pre_window_three": ("preprocess window",),
    "ck_pre_spacing_zero": ("preprocess spacing",),
    "ck_pre_spacing_nan": ("preprocess spacing",),
    "ck_pre_spacing_tiny": ("preprocess spacing", "0.05..20"),
    "ck_pre_spacing_huge": ("preprocess spacing", "0.05..20"),
    "ck_pre_size_huge": ("preprocess size",),
    "ck_pre_margin_negative": ("crop_margin",),
    "ck_pre_margin_nan": ("crop_margin",),
    "ck_pre_percentiles_reversed": ("percentiles",),
    "ck_pre_percentiles_nan": ("percentiles",),
    "ck_pre_percentiles_over": ("percentiles", "0..100"),
    "ck_pre_crop_labels": ("crop_labels",),
    "ck_pre_unknown_key": ("unknown preprocess", "rm_rf"),
    "ck_pre_text": ("'preprocess' must be a dict",),
    "ck_pre_list": ("'preprocess' must be a dict",),
    "ck_pre_antialias_text": ("antialias",),
    "ck_version_future": ("format version", "newer"),
    "ck_version_text": ("format version",),
    "ck_model_list": ("'model'", "state dict"),
    "ck_model_values": ("'model'", "state dict"),
    "ck_config_number": ("gin config is not text",),
    "ck_card_deep": ("model card", "deeper"),
    "ck_card_list": ("model card", "JSON object"),
    "ck_arch_huge": ("does not match", "different architecture"),
}
for name, words in CKPT_WORDS.items():
    CASES.append(Case(f"ckpt-register-{name}", REG + "{" + name + "}", words))
for name in ("crc", "cut_tail", "ck_size_huge", "ck_labels_zero", "ck_pre_window_nan", "ck_version_future",
             "ck_card_deep", "ck_arch_huge", "ck_model_values", "ck_pre_unknown_key"):
    CASES.append(Case(f"ckpt-export-{name}", "export {" + name + "} --out {new_model}", CKPT_WORDS[name]))
CASES += [
    Case("ckpt-finetune-from-crc", "train {tiny} --out {new_out} --gin 'ddmr.Trainer.transfer = @ddmr.finetune()' "
         "--gin \"ddmr.finetune.checkpoint = '{crc}'\"", ("crc.pt", "CRC")),
    Case("ckpt-register-pairs-crc", "register --pairs {pairs_constant} --out {new_out} --model {crc}", ("crc.pt", "CRC")),
]

# ----------------------------------------------------------- fields, jacobian
CASES += [
    Case("jac-field-1e14-npz", "jacobian --field {field_huge} --out {hws}/j.nii.gz", ("field_huge.npz", "not a registration")),
    Case("jac-field-ramp-1e14", "jacobian --field {field_ramp_huge} --out {hws}/j.nii.gz", ("not a registration",)),
    Case("jac-field-1e14-nii", "jacobian --field {field_huge_nii} --out {hws}/j.nii.gz", ("field_huge.nii.gz",)),
    Case("field-jac-singular-affine", "jacobian --field {field_singular} --out {hws}/j.nii.gz", ("singular",)),
    Case("field-warp-singular-affine", "warp --field {field_singular} --moving {m} --out {hws}/w.nii.gz",
         ("singular",)),
    Case("field-warp-1e14", "warp --field {field_huge} --moving {m} --out {hws}/w.nii.gz", ("not a registration",)),
]

# -------------------------------------------------------- outputs = inputs
CASES += [
    Case("io-warp-out-is-moving", "warp --field {field_nii} --moving {moving_copy} --out {moving_copy}",
         ("moving image", "destroy")),
    Case("io-warp-out-links-to-moving", "warp --field {field_nii} --moving {moving_copy} --out {moving_link}",
         ("moving image", "destroy")),
    Case("io-warp-out-hard-link-of-moving", "warp --field {field_nii} --moving {moving_copy} --out {moving_hard}",
         ("moving image", "destroy")),
    Case("io-warp-out-is-field", "warp --field {field_nii} --moving {m} --out {field_nii}", ("field", "destroy")),
    Case("io-warp-out-links-to-field", "warp --field {field_nii} --moving {m} --out {field_link}",
         ("field", "destroy")),
    Case("io-warp-labels-out-is-moving", "warp --field {field_nii} --moving {fs} --labels --out {fs}",
         ("moving image", "destroy")),
    Case("io-jac-out-is-field", "jacobian --field {field_nii} --out {field_nii}", ("field", "destroy")),
    Case("io-jac-out-links-to-field", "jacobian --field {field_nii} --out {field_link}", ("field", "destroy")),
    Case("io-export-out-is-checkpoint", "export {model_copy} --out {model_copy}", ("checkpoint", "destroy")),
    Case("io-export-out-links-to-checkpoint", "export {model_copy} --out {model_link}", ("checkpoint", "destroy")),
    Case("io-register-out-holds-fixed", "register --fixed {reg_fixed} --moving {m} --model {good} --out {reg_out}",
         ("holds the fixed", "destroy")),
    Case("io-register-out-holds-moving", "register --fixed {f} --moving {reg_warped} --model {good} --out {reg_out}",
         ("holds the moving", "destroy")),
    Case("io-evaluate-out-holds-config", "evaluate --testset {testset} --baseline identity --no-figures "
         "--config {eval_out}/summary.md --out {eval_out}", ("holds the --config", "destroy")),
    Case("io-build-out-holds-config", "build-testset --dataset synthetic --pairs 1 --size 16 --seed 0 --overwrite "
         "--config {testset}/testset.json --out {testset}", ("holds the --config", "destroy")),
    Case("io-train-out-holds-users-config", "train {userrun}/config.gin --out {userrun}",
         ("config.gin", "did not write")),
]

# ---------------------------------------------------------------- locks
LOCKED = {
    "train": "train {tiny} --out {new_out}",
    "build": "build-testset --dataset synthetic --pairs 1 --size 16 --seed 0 --out {new_out}",
    "prepare": "prepare --dataset synthetic --size 16 --out {new_out}",
    "evaluate": "evaluate --testset {testset} --baseline identity --no-figures --out {new_out}",
    "register": "register --fixed {f} --moving {m} --model {good} --out {new_out}",
}
for cmd, line in LOCKED.items():
    CASES.append(Case(f"lock-{cmd}", line, ("being written by", "ddmr test-holder", "pid"), lock="new_out"))
CASES.append(Case("lock-build-overwrite", "build-testset --dataset synthetic --pairs 1 --size 16 --seed 0 --overwrite "
                  "--out {testset}", ("being written by",), lock="testset"))

# ------------------------------------------------------- spacing, memory
CASES += [
    Case("spacing-fixed-in-metres", "register --fixed {f_metres} --moving {m} --model {good} --out {new_out}",
         ("f_metres", "below 0.05 mm", "metres")),
    Case("spacing-moving-in-metres", "register --fixed {f} --moving {m_metres} --model {good} --out {new_out}",
         ("m_metres", "below 0.05 mm")),
    Case("spacing-both-in-metres-with-labels", "register --fixed {f_metres} --fixed-seg {seg_metres} "
         "--moving {m_metres} --model {good} --out {new_out}", ("below 0.05 mm",)),
    Case("spacing-fixed-in-cm", "register --fixed {f_cm} --moving {m} --model {good} --out {new_out}",
         ("f_cm", "below 0.05 mm")),
    Case("spacing-moving-30mm", "register --fixed {f} --moving {m_30mm} --model {good} --out {new_out}",
         ("m_30mm", "above 20 mm")),
    Case("spacing-fixed-100mm-slices", "register --fixed {f_100mm_z} --moving {m} --model {good} --out {new_out}",
         ("f_100mm_z", "above 20 mm")),
    Case("spacing-warp-moving-metres", "warp --field {field_nii} --moving {m_metres} --out {hws}/w.nii.gz",
         ("m_metres", "below 0.05 mm")),
    Case("spacing-warp-field-metres", "warp --field {field_metres} --moving {m} --out {hws}/w.nii.gz",
         ("field_metres", "below 0.05 mm")),
    Case("spacing-jac-field-metres", "jacobian --field {field_metres} --out {hws}/j.nii.gz",
         ("field_metres", "below 0.05 mm")),
    Case("mem-register", "register --fixed {f} --moving {m} --model {good} --out {new_out}",
         ("needs about", "available", "--no-memory-check"), env={"DDMR_MEMORY_LIMIT": "1M"}),
    Case("mem-register-pairs", "register --pairs {pairs_constant} --model {good} --out {new_out}",
         ("needs about", "--no-memory-check"), env={"DDMR_MEMORY_LIMIT": "1K"}),
    Case("mem-train", "train {tiny} --out {new_out}", ("training step", "needs about", "--no-memory-check"),
         env={"DDMR_MEMORY_LIMIT": "1M"}),
    Case("mem-train-huge-network", "train {tiny} --out {new_out} --gin 'ddmr.backbones.vxm_unet.widths = (100000, 100000)'",
         ("training a model of", "parameters", "--no-memory-check")),
    Case("mem-train-huge-grid", "train {tiny} --out {new_out} --gin 'SIZE = (2000, 2000, 2000)'",
         ("training step", "(2000, 2000, 2000)", "--no-memory-check")),
    Case("mem-limit-malformed-register", "register --fixed {f} --moving {m} --model {good} --out {new_out}",
         ("DDMR_MEMORY_LIMIT",), env={"DDMR_MEMORY_LIMIT": "lots"}),
    Case("mem-limit-malformed-train", "train {tiny} --out {new_out}", ("DDMR_MEMORY_LIMIT",),
         env={"DDMR_MEMORY_LIMIT": "-3G"}),
]

# -------------------------------------------------------- paths, pairs, cards
for cmd, line in {"register": "register --fixed {f} --moving {m} --model {good} --out {OUT}",
                  "evaluate": "evaluate --testset {testset} --baseline identity --no-figures --out {OUT}",
                  "build": "build-testset --dataset synthetic --pairs 1 --size 16 --seed 0 --out {OUT}",
                  "prepare": "prepare --dataset synthetic --size 16 --out {OUT}",
                  "train": "train {tiny} --out {OUT}"}.items():
    CASES.append(Case(f"path-{cmd}-out-symlink-loop", line.replace("{OUT}", "{loop}"),
                      ("loop_x", "symbolic links")))
    CASES.append(Case(f"path-{cmd}-out-too-long", line.replace("{OUT}", "{long}"), ("xxxx", "name too long")))
for cmd, line in {"warp": "warp --field {field_nii} --moving {m} --out {OUT}",
                  "jacobian": "jacobian --field {field_nii} --out {OUT}",
                  "export": "export {good} --out {OUT}"}.items():
    suffix = ".pt" if cmd == "export" else ".nii.gz"
    CASES.append(Case(f"path-{cmd}-out-too-long", line.replace("{OUT}", "{long}" + suffix), ("name too long",)))
    CASES.append(Case(f"path-{cmd}-out-symlink-loop", line.replace("{OUT}", "{hws}/loopx" + suffix),
                      ("symbolic links",)))
CASES += [
    Case("pairs-named-summary-json", "register --pairs {pairs_summary_json} --model {good} --out {new_out}",
         ("summary.json", "summary file")),
    Case("pairs-named-summary-csv", "register --pairs {pairs_summary_csv} --model {good} --out {new_out}",
         ("summary.csv", "summary file")),
    Case("pairs-named-summary-upper", "register --pairs {pairs_summary_upper} --model {good} --out {new_out}",
         ("SUMMARY.JSON", "summary file")),
    Case("pairs-name-too-long", "register --pairs {pairs_pair_long} --model {good} --out {new_out}",
         ("plain folder name",)),
    Case("args-build-pairs-endless", "build-testset --dataset synthetic --pairs 100000000000000000000 --size 16 --seed 0 "
         "--out {new_out}", ("--pairs must be at most",)),
    Case("args-build-size-huge", "build-testset --dataset synthetic --pairs 1 --size 100000 --seed 0 --out {new_out}",
         ("--size at most",)),
    Case("args-prepare-negative-subjects", "prepare --dataset synthetic --size 16 --workers 1 --out {new_out} "
         "--gin 'ddmr.datasets.synthetic.subjects = (-1, 2, 2)'", ("subjects", ">= 0")),
    Case("card-deeply-nested", "export {good} --out {new_model} --card {card_deep}", ("card_deep.json", "deeply")),
    Case("card-40-levels", "export {good} --out {new_model} --card {card_40}", ("model card", "deeper than 32")),
    Case("card-not-object", "export {good} --out {new_model} --card {card_list}", ("JSON object",)),
    Case("card-endless", "export {good} --out {new_model} --card /dev/zero", ("/dev/zero", "larger than 1 MiB")),
]


def test_the_table_covers_every_class():
    assert len(CASES) >= 150
    assert len({c.id for c in CASES}) == len(CASES)
    prefixes = {c.id.split("-")[0] for c in CASES}
    assert {"cfg", "ckpt", "jac", "field", "io", "lock", "spacing", "mem", "path", "pairs", "card", "args"} <= prefixes


@pytest.fixture(scope="module")
def loops(hostile_workspace):
    """File-name symlink loops for the file outputs (made here, once)."""
    hws = Path(hostile_workspace["hws"])
    for suffix in (".nii.gz", ".pt"):
        if not (hws / f"loopx{suffix}").is_symlink():
            os.symlink(hws / f"loopy{suffix}", hws / f"loopx{suffix}")
            os.symlink(hws / f"loopx{suffix}", hws / f"loopy{suffix}")
    return hws


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input(case, tiny_workspace, hostile_workspace, loops, capsys, monkeypatch):
    from ddmr_core.data.locks import output_lock

    names = {**tiny_workspace, **hostile_workspace}
    argv = [a.format(**names) for a in shlex.split(case.argv)]
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    zen_imported = "this" in sys.modules
    with output_lock(names[case.lock], "test-holder") if case.lock else contextlib.nullcontext():
        before = (snapshot(tiny_workspace["ws"]), snapshot(hostile_workspace["hws"]))
        capsys.readouterr()
        rc = main(argv)
        out, err = capsys.readouterr()
        after = (snapshot(tiny_workspace["ws"]), snapshot(hostile_workspace["hws"]))
    lines = err.strip().splitlines()
    assert rc != 0 and (case.rc is None or rc == case.rc), (rc, err)
    assert len(lines) == 1 and lines[0].startswith("ddmr: error: "), err
    for word in case.words:
        assert word in lines[0], (word, lines[0])
    for word in FORBIDDEN:
        assert word not in out and word not in err, word
    assert after == before  # nothing lost, nothing new, no temporary or lock left
    assert ("this" in sys.modules) == zen_imported  # `import this` never ran


# ====================================================== the behaviours behind them
TRAIN_BASE = """
ddmr.build_model.losses = {'ncc': @ddmr.losses.ncc(), 'grad_l2': @ddmr.losses.grad_l2()}
ddmr.augmenters.tps.max_displacement = 2.0
ddmr.datasets.synthetic.subjects = (8, 1, 1)   # 4 optimiser steps per epoch
ddmr.Trainer.log_images = False
"""


def test_trust_config_lets_a_config_include_and_import(tmp_path, capsys):
    """--trust-config lifts the rules: an include outside the config's folder tree and a
    module outside ddmr are then read and imported (a harmless one here)."""
    from conftest import TINY_TRAINING

    outside = tmp_path / "elsewhere" / "lr.gin"
    outside.parent.mkdir()
    outside.write_text("ddmr.Trainer.max_epochs = 0\n")
    cfg = tmp_path / "cfg" / "exp.gin"
    cfg.parent.mkdir()
    cfg.write_text(TINY_TRAINING + TRAIN_BASE + f"import json\ninclude '{outside}'\n")
    assert main(["train", str(cfg), "--out", str(tmp_path / "refused"), "--device", "cpu"]) == 2
    assert "`import json` is refused" in capsys.readouterr().err
    assert main(["train", "--trust-config", str(cfg), "--out", str(tmp_path / "run"), "--device", "cpu"]) == 0
    assert "max_epochs = 0" in (tmp_path / "run" / "config.gin").read_text()  # the included binding


def test_shipped_and_plugin_modules_may_be_imported(tmp_path):
    """ddmr's own modules are not refused: configs are data, not crippled."""
    from ddmr_core.config.parsing import parse_config

    parse_config(text="import ddmr_core.spatial.fields\nimport ddmr_plugins.losses\n")
    parse_config(["experiments/brain/uw_nsd.gin"], ["include 'mixins/backbone/default.gin'"])


def test_library_parse_config_refuses_by_default_and_trusts_on_request(tmp_path):
    from ddmr_core.config.parsing import parse_config
    from ddmr_core.config.trust import trusted_configs
    from ddmr_core.errors import ConfigError

    inc = tmp_path / "other" / "x.gin"
    inc.parent.mkdir()
    inc.write_text("ddmr.Trainer.lr = 0.5\n")
    with pytest.raises(ConfigError, match="refused"):
        parse_config(text=f"include '{inc}'")
    with trusted_configs():
        parse_config(text=f"include '{inc}'")
    parse_config(text=f"include '{inc}'", trusted=True)
    import gin

    assert gin.query_parameter("ddmr.Trainer.lr") == 0.5


def test_a_gin_syntax_error_names_file_and_line_but_not_the_content(tmp_path):
    from ddmr_core.config.parsing import parse_config
    from ddmr_core.errors import ConfigError

    cfg = tmp_path / "x.gin"
    cfg.write_text(f"ddmr.Trainer.lr = 1\n{SECRET} oops = (\n")
    with pytest.raises(ConfigError) as err:
        parse_config([cfg])
    assert "x.gin" in str(err.value) and "line 2" in str(err.value) and SECRET not in str(err.value)


def test_a_corrupted_checkpoint_is_refused_and_the_intact_one_loads(tiny_workspace, hostile_workspace):
    from ddmr_core.model.checkpoint import load_checkpoint
    from ddmr_core.errors import CheckpointError

    load_checkpoint(tiny_workspace["good"])
    with pytest.raises(CheckpointError, match="CRC"):
        load_checkpoint(hostile_workspace["crc"])
    with open(hostile_workspace["crc"], "rb") as fh:  # an open file, as a model plugin may give
        with pytest.raises(CheckpointError, match="CRC"):
            load_checkpoint(fh)


def test_metadata_at_the_bounds_is_accepted(tiny_workspace):
    from ddmr_core.model.checkpoint import load_checkpoint
    from ddmr_core.model.checkpoint_checks import check_metadata

    ckpt = load_checkpoint(tiny_workspace["good"])
    ok = dict(ckpt, input_size=[2, 1024, 2], labels=list(range(1, 256)),
              preprocess={"spacing": [0.05, 20.0, 1.0], "size": [16, 16, 16], "window": [-1000.0, 3000.0],
                          "percentiles": [0.0, 100.0], "crop_labels": "all", "crop_margin": 0.0, "antialias": False})
    check_metadata(ok, "ok")


def test_export_reads_its_model_back_and_it_registers(tiny_workspace, tmp_path):
    out = tmp_path / "model.pt"
    assert main(["export", tiny_workspace["good"], "--out", str(out)]) == 0
    assert main(["register", "--fixed", tiny_workspace["f"], "--moving", tiny_workspace["m"], "--model", str(out),
                 "--out", str(tmp_path / "reg")]) == 0


def test_no_memory_check_lets_a_registration_run(tiny_workspace, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DDMR_MEMORY_LIMIT", "1M")
    argv = ["register", "--fixed", tiny_workspace["f"], "--moving", tiny_workspace["m"], "--model",
            tiny_workspace["good"], "--out", str(tmp_path / "reg")]
    assert main(argv) == 2
    assert main(argv + ["--no-memory-check"]) == 0
    monkeypatch.setenv("DDMR_MEMORY_LIMIT", "64G")
    assert main(argv) == 0


def test_memory_estimate_grows_with_the_grids():
    from ddmr_core.data.guards import registration_bytes, training_bytes

    small = registration_bytes((64,) * 3, (64,) * 3, (64,) * 3)
    assert registration_bytes((128,) * 3, (64,) * 3, (64,) * 3) == pytest.approx(
        small + 4 * 48 * (128 ** 3 - 64 ** 3))
    assert training_bytes((128,) * 3, 2, 10) > training_bytes((128,) * 3, 1, 10) > training_bytes((64,) * 3, 1, 10)


def test_the_memory_check_counts_a_coarse_scan_on_its_own_grid(monkeypatch):
    """The working grid is never finer than the fixed image's own (a 3 mm scan is registered
    on a 3 mm grid), so the memory estimate counts a coarse scan's voxels as they are, not
    resampled to the recipe's 1 mm: a 3 mm scan with a wide field of view (200^3 voxels)
    was refused as needing a 600^3 grid."""
    from ddmr_core.data.guards import registration_bytes
    from ddmr_core.errors import DataError
    from ddmr_core.registration.register import Registrar

    reg = Registrar("brain-mr")
    assert reg.preprocess.spacing == (1.0, 1.0, 1.0)  # the recipe's spacing
    shape, three_mm, half_mm = (200, 200, 200), np.diag([3.0, 3.0, 3.0, 1.0]), np.diag([0.5, 0.5, 0.5, 1.0])
    need = registration_bytes(shape, shape, reg.input_size)
    monkeypatch.setenv("DDMR_MEMORY_LIMIT", str(int(1.5 * need)))
    reg.check_memory(shape, three_mm, original_resolution=True)  # fits on its own 3 mm grid
    reg.check_memory(shape, half_mm, original_resolution=False)  # resampled to 1 mm: 100^3
    monkeypatch.setenv("DDMR_MEMORY_LIMIT", str(int(0.5 * need)))
    with pytest.raises(DataError, match=r"\(200, 200, 200\) voxels"):
        reg.check_memory(shape, three_mm, original_resolution=False)


def test_spacing_bounds(tmp_path):
    from ddmr_core.errors import DataError
    from ddmr_core.data.guards import check_spacing

    check_spacing(np.diag([0.05, 20.0, 1.0, 1.0]), "ok")
    with pytest.raises(DataError, match="metres"):
        check_spacing(np.diag([0.049, 1.0, 1.0, 1.0]), "img")
    with pytest.raises(DataError, match="above 20 mm"):
        check_spacing(np.diag([1.0, 20.5, 1.0, 1.0]), "img")


def test_jacobian_of_a_large_affine_field_is_exact(tmp_path, capsys):
    """A large but finite field (here an affine one scaling by 8: displacements up to 7
    grid extents) gives its exact determinant, computed in float64, not an overflow."""
    from ddmr_core.data.field_io import save_field_npz
    from ddmr_core.data.io import load_image

    n = 8
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64)] * 3, indexing="ij"))
    disp = (grid * np.array([7.0, 0.5, -0.5])[:, None, None, None]).astype(np.float32)  # x -> (8x, 1.5y, 0.5z)
    save_field_npz(tmp_path / "f.npz", disp, [1.0] * 3, np.eye(4))
    assert main(["jacobian", "--field", str(tmp_path / "f.npz"), "--out", str(tmp_path / "j.nii.gz")]) == 0
    jac, _ = load_image(tmp_path / "j.nii.gz")
    np.testing.assert_allclose(jac, 8 * 1.5 * 0.5, rtol=1e-6)


def test_train_writes_its_config_copy_under_its_own_header_and_resumes(tmp_path, capsys):
    from conftest import TINY_TRAINING
    from ddmr_core.training.run_folder import CONFIG_HEADER

    cfg = tmp_path / "exp.gin"
    cfg.write_text(TINY_TRAINING + TRAIN_BASE)
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(run), "--device", "cpu", "--max-steps", "1"]) == 0
    assert (run / "config.gin").read_text().startswith(CONFIG_HEADER)
    assert main(["train", str(cfg), "--out", str(run), "--device", "cpu", "--max-steps", "2", "--resume"]) == 0
    assert not list(tmp_path.glob(".*ddmr-lock"))  # released and removed


def test_a_lock_names_its_holder_and_a_dead_holder_blocks_nobody(tmp_path):
    from ddmr_core.data.locks import LockedError, lock_path, output_lock

    out = tmp_path / "out"
    code = ("import sys, time\nfrom ddmr_core.data.locks import output_lock\n"
            "with output_lock(sys.argv[1], 'train'):\n    print('held', flush=True)\n    time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockedError, match=rf"`ddmr train` \(pid {holder.pid} "):
            with output_lock(out, "evaluate"):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert lock_path(out).exists()  # SIGKILL left the file, but not the lock
    with output_lock(out, "evaluate") as path:
        assert path == lock_path(out)
    assert not lock_path(out).exists()


def test_sigint_mid_step_saves_the_completed_step_and_resume_matches_a_straight_run(tmp_path, monkeypatch):
    """A signal that arrives while an optimiser step updates the weights and counters is
    held until the step is complete; last.pt is then that step's, and resuming from it
    gives the weights of an uninterrupted run (CPU, within 1e-6)."""
    from conftest import TINY_TRAINING, make_trainer

    config = TINY_TRAINING + TRAIN_BASE
    straight = make_trainer(tmp_path, config, run="straight", max_steps=6)
    straight.fit()

    from ddmr_core.training.loop import TrainingLoop

    t = make_trainer(tmp_path, config, run="cut", max_steps=6)
    t.setup()
    step = TrainingLoop._optimizer_step

    def step_then_signal(loop, *a, **k):
        loss = step(loop, *a, **k)
        if loop.run is t and t.counters["optimizer_steps"] == 3:
            # to this thread (the main one): os.kill's process-wide signal may be handed to a
            # torch worker thread and reach Python only after the run has gone on
            signal.raise_signal(signal.SIGINT)  # arrives inside the step's critical section
        return loss

    monkeypatch.setattr(TrainingLoop, "_optimizer_step", step_then_signal)
    # Ctrl-C as in a terminal: a process started in the background by a shell without job
    # control (`make test &`) inherits SIGINT ignored, and Python keeps it so
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            t.fit()
    finally:
        signal.signal(signal.SIGINT, previous)
    saved = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert saved["counters"]["optimizer_steps"] == 3
    assert saved["counters"]["batch_in_epoch"] == 3 * 2  # 2 micro-batches a step: the step's end

    r = make_trainer(tmp_path, config, run="cut", max_steps=6, resume=True)
    r.fit()
    assert r.counters["optimizer_steps"] == 6
    for k, v in straight.model.state_dict().items():
        torch.testing.assert_close(r.model.state_dict()[k], v, atol=1e-6, rtol=0)


def test_sigterm_during_training_saves_a_resumable_checkpoint(tmp_path):
    """``ddmr train`` killed with SIGTERM exits 143 after saving last.pt at its current
    step; ``--resume`` continues from that step."""
    from conftest import TINY_TRAINING

    cfg = tmp_path / "exp.gin"
    cfg.write_text(TINY_TRAINING + TRAIN_BASE + "ddmr.datasets.synthetic.subjects = (400, 1, 1)\n"
                   "ddmr.Trainer.max_epochs = 100\n")
    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "ddmr_core", "train", str(cfg), "--out", str(run), "--device", "cpu"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):  # the run folder's config.gin is written once set-up is done
            if (run / "config.gin").exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        time.sleep(1.0)  # some optimiser steps (or none: step 0 is a resumable state too)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert "terminated (SIGTERM)" in err and "Traceback" not in err
    saved = torch.load(run / "last.pt", weights_only=True)["counters"]
    assert f"stopped at optimiser step {saved['optimizer_steps']}" in err
    more = subprocess.run(cmd + ["--resume", "--max-steps", str(saved["global_step"] + 2)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert more.returncode == 0, more.stderr
    after = torch.load(run / "last.pt", weights_only=True)["counters"]
    assert after["global_step"] == saved["global_step"] + 2


def test_checkpoints_and_exported_models_carry_only_the_models_bindings(tmp_path, tiny_workspace, capsys):
    """A training checkpoint's config holds what builds the model, not the data, the
    augmentation, the trainer or a macro only they use; an older checkpoint carrying
    everything is pruned on export; both still load and register."""
    from conftest import TINY_TRAINING

    from ddmr_core.model.checkpoint import load_checkpoint, load_model, save_checkpoint

    cfg = tmp_path / "exp.gin"
    cfg.write_text(TINY_TRAINING + TRAIN_BASE + f"NOTE = '{SECRET}'\n")  # a macro nothing of the model uses
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(run), "--device", "cpu", "--max-steps", "1"]) == 0
    text = load_checkpoint(run / "last.pt")["gin_config"]
    for word in ("synthetic", "Trainer", "tps", "NOTE", SECRET, "import", "include", "#"):
        assert word not in text, (word, text)
    assert "vxm_unet" in text and "losses" in text
    load_model(run / "last.pt")

    full = load_checkpoint(run / "last.pt")
    full["gin_config"] = (run / "config.gin").read_text()  # as checkpoints of earlier releases
    save_checkpoint(tmp_path / "old.pt", {k: v for k, v in full.items() if k != "format"})
    assert main(["export", str(tmp_path / "old.pt"), "--out", str(tmp_path / "shared.pt")]) == 0
    shared = load_checkpoint(tmp_path / "shared.pt")["gin_config"]
    assert "synthetic" not in shared and "Trainer" not in shared and "vxm_unet" in shared
    assert main(["register", "--fixed", tiny_workspace["f"], "--moving", tiny_workspace["m"], "--model",
                 str(tmp_path / "shared.pt"), "--out", str(tmp_path / "reg")]) == 0


def test_a_users_dataset_in_metres_is_one_line(tmp_path, capsys):
    """The nifti_folder dataset checks each image's spacing as it loads it (prepare and
    train read users' images through it)."""
    import nibabel as nib

    images = tmp_path / "data" / "images"
    images.mkdir(parents=True)
    for i in range(4):
        nib.save(nib.Nifti1Image(np.random.default_rng(i).random(GRID3, dtype=np.float32) + 1,
                                 np.diag([0.001, 0.001, 0.001, 1.0])), str(images / f"s{i}.nii.gz"))
    rc = main(["prepare", "--dataset", "nifti_folder", "--gin", f"ddmr.datasets.nifti_folder.root = '{tmp_path / 'data'}'",
               "--size", "16", "--workers", "0", "--out", str(tmp_path / "cache")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "below 0.05 mm" in err[0] and "metres" in err[0], err


def test_an_error_in_a_loader_worker_is_one_line(tmp_path, capsys):
    """Training reads samples in DataLoader workers; torch re-raises a worker's error with
    the worker's traceback as its message. The CLI prints the original message alone."""
    import nibabel as nib
    from conftest import TINY_TRAINING

    images = tmp_path / "data" / "images"
    images.mkdir(parents=True)
    for i in range(6):
        nib.save(nib.Nifti1Image(np.random.default_rng(i).random(GRID3, dtype=np.float32) + 1,
                                 np.diag([0.001, 0.001, 0.001, 1.0])), str(images / f"s{i}.nii.gz"))
    cfg = tmp_path / "exp.gin"
    cfg.write_text(TINY_TRAINING + TRAIN_BASE + "ddmr.build_dataset.dataset = @ddmr.datasets.nifti_folder()\n"
                   f"ddmr.datasets.nifti_folder.root = '{tmp_path / 'data'}'\n"
                   "ddmr.Trainer.num_workers = 1\n")
    rc = main(["train", str(cfg), "--out", str(tmp_path / "run"), "--device", "cpu", "--max-steps", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("ddmr: error: image ") and "below 0.05 mm" in err[0] and "Traceback" not in err[0], err
