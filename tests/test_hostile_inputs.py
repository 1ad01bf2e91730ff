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
``mem-`` implausible spacing and memory (8), ``path-``, ``pairs-`` and ``card-``
ordinary edge cases (10).
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
EXTRA_WORDS = {"binary": ("binary.gin", "cannot be read"), "loop": ("loop_a.gin", "not found")}
BINDINGS = {
    "import-this": ("import this", ("gin bindings line 1", "`import this`", "refused")),
    "import-os": ("import os", ("gin bindings line 1", "`import os`", "refused")),
    "dynamic": ("from __gin__ import dynamic_registration", ("gin bindings", "__gin__")),
    "include-passwd": ("include '/etc/passwd'", ("gin bindings", "`include", "refused")),
    "include-secret": ("include '{hws}/secret.gin'", ("gin bindings", "`include", "refused")),
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
    Case("card-deeply-nested", "export {good} --out {new_model} --card {card_deep}", ("card_deep.json", "deeply")),
    Case("card-40-levels", "export {good} --out {new_model} --card {card_40}", ("model card", "deeper than 32")),
    Case("card-not-object", "export {good} --out {new_model} --card {card_list}", ("JSON object",)),
]


def test_the_table_covers_every_class():
    assert len(CASES) >= 150
    assert len({c.id for c in CASES}) == len(CASES)
    prefixes = {c.id.split("-")[0] for c in CASES}
    assert {"cfg", "ckpt", "jac", "field", "io", "lock", "spacing", "mem", "path", "pairs", "card"} <= prefixes


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
    from ddmr_core.locks import output_lock

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
