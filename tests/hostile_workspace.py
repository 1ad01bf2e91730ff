"""Inputs for the second round of hostile cases (issue 37), beside ``tiny_workspace``'s:
configs that import or include what they should not, checkpoints with flipped bytes or
crafted metadata, images with implausible spacing, fields that overflow, paths that loop
or are too long, outputs that are inputs. Built once per session (``tests/conftest.py``);
the cases only read them."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from conftest import TINY_TRAINING
from tiny_workspace import GRID, SECRET, _box, _volume

# conftest's tiny training config, without losses (the config tests add theirs or none)
TINY_CONFIG = TINY_TRAINING + "ddmr.Trainer.log_images = False\n"
TINY_TRAINING_CONFIG = TINY_CONFIG + "ddmr.build_model.losses = {'ncc': @ddmr.losses.ncc()}\n"

#: gin configs, by name: each refused (or broken) for the reason its name says
CONFIGS = {
    "imp_this": "import this\n",
    "imp_os": "import os\n",
    "imp_os_path": "import os.path\n",
    "imp_alias": "import subprocess as sp\n",
    "imp_from": "from os import system\n",
    "imp_numpy": "import numpy\n",
    "imp_after_binding": "ddmr.Trainer.lr = 0.1\nimport this\n",
    "dynamic": "from __gin__ import dynamic_registration\nimport os\n",
    "inc_passwd": "include '/etc/passwd'\n",
    "inc_parent": "include '../secret.gin'\n",
    "inc_link": "include 'link.gin'\n",  # link.gin -> ../secret.gin
    "inc_txt": "include 'notes.txt'\n",  # a non-.gin file of the same folder
    "inc_abs_secret": None,  # filled in: include '<hws>/secret.gin'
    "inc_self": "include 'inc_self.gin'\n",
    "inc_cycle_a": "include 'inc_cycle_b.gin'\n",
    "inc_cycle_b": "include 'inc_cycle_a.gin'\n",
    "inc_missing": "include 'nowhere/none.gin'\n",
    "inc_nested_escape": "include 'sub/escape.gin'\n",  # sub/escape.gin includes <hws>/secret.gin
    "syntax_secret": f"{SECRET} :: = (\n",
    "deep": "x = " + "[" * 5000 + "]" * 5000 + "\n",  # gin's parser recurses per bracket
}


def _nii(path: Path, data, affine) -> str:
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return str(path)


def _flip_member_byte(src: Path, dst: Path) -> None:
    """Copy ``src`` (a zip checkpoint) with one byte of its largest member's data flipped:
    the archive still opens, the member fails its CRC."""
    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as zf:
        info = max(zf.infolist(), key=lambda i: i.file_size)
    # local header: 30 bytes + name + extra, then the (stored) data
    name_len = int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little")
    extra_len = int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    data[start + info.compress_size // 2] ^= 0xFF
    dst.write_bytes(bytes(data))


def build_hostile(hws: Path, ws: dict) -> dict:
    """Every input of the hostile table, by name; ``ws`` is ``tiny_workspace``'s dict."""
    from ddmr_core.model.checkpoint import save_checkpoint

    hws.mkdir(parents=True, exist_ok=True)
    p = {"hws": str(hws)}
    aff = np.diag([1.5, 1.5, 1.5, 1.0])

    # ------------------------------------------------------------ configs
    cfg = hws / "cfg"
    (cfg / "sub").mkdir(parents=True)
    (hws / "secret.gin").write_text(f"SECRET_MACRO = '{SECRET}'\n")
    (cfg / "notes.txt").write_text(f"NOTES = '{SECRET}'\n")
    os.symlink(hws / "secret.gin", cfg / "link.gin")
    (cfg / "sub" / "escape.gin").write_text(f"include '{hws / 'secret.gin'}'\n")
    CONFIGS["inc_abs_secret"] = f"include '{hws / 'secret.gin'}'\n"
    for name, text in CONFIGS.items():
        (cfg / f"{name}.gin").write_text(text)
        p[f"cfg_{name}"] = str(cfg / f"{name}.gin")
    (cfg / "binary.gin").write_bytes(b"\x00\xff\xfe" * 40)
    p["cfg_binary"] = str(cfg / "binary.gin")
    os.symlink(cfg / "loop_a.gin", cfg / "loop_b.gin")
    os.symlink(cfg / "loop_b.gin", cfg / "loop_a.gin")
    p["cfg_loop"] = str(cfg / "loop_a.gin")
    # in a folder of its own: hws/secret.gin is outside its folder tree
    (hws / "run_cfg").mkdir()
    (hws / "run_cfg" / "tiny.gin").write_text(TINY_TRAINING_CONFIG)
    p["tiny"] = str(hws / "run_cfg" / "tiny.gin")
    (hws / "run_cfg" / "no_losses.gin").write_text(TINY_CONFIG)  # nothing to train on
    p["no_losses"] = str(hws / "run_cfg" / "no_losses.gin")
    # a user's folder whose config.gin is the config trained (train --out that folder)
    (hws / "userrun").mkdir()
    (hws / "userrun" / "config.gin").write_text(TINY_TRAINING_CONFIG)
    p["userrun"] = str(hws / "userrun")

    # ------------------------------------------------------- checkpoints
    good_path = Path(ws["good"])
    good = torch.load(good_path, weights_only=True)

    def ckpt(name, **change):
        state = {k: v for k, v in good.items() if k not in ("format", "format_version", "ddmr_version")}
        state.update(change)
        save_checkpoint(hws / f"{name}.pt", state)
        p[name] = str(hws / f"{name}.pt")

    _flip_member_byte(good_path, hws / "crc.pt")
    p["crc"] = str(hws / "crc.pt")
    data = good_path.read_bytes()
    for name, cut in (("cut_tail", data[:-10]), ("cut_third", data[: len(data) // 3]), ("cut_head", data[100:])):
        (hws / f"{name}.pt").write_bytes(cut)
        p[name] = str(hws / f"{name}.pt")
    crafted = {
        "size_huge": {"input_size": [100000, 100000, 100000]},
        "size_big_volume": {"input_size": [1000, 1000, 1000]},
        "size_zero": {"input_size": [0, 0, 0]},
        "size_negative": {"input_size": [-16, 16, 16]},
        "size_text": {"input_size": "abc"},
        "size_two": {"input_size": [16, 16]},
        "size_float": {"input_size": [16.5, 16, 16]},
        "size_bool": {"input_size": [True, 16, 16]},
        "size_nested": {"input_size": [[16], 16, 16]},
        "labels_zero": {"labels": [0, 1]},
        "labels_256": {"labels": [1, 256]},
        "labels_negative": {"labels": [-1]},
        "labels_nested": {"labels": [[1]]},
        "labels_text": {"labels": "abc"},
        "labels_many": {"labels": list(range(1, 300))},
        "labels_twice": {"labels": [1, 1]},
        "labels_float": {"labels": [1.5]},
        "pre_window_nan": {"preprocess": {"spacing": None, "size": list(GRID), "window": [float("nan"), 1.0]}},
        "pre_window_inf": {"preprocess": {"spacing": None, "size": list(GRID), "window": [0.0, float("inf")]}},
        "pre_window_reversed": {"preprocess": {"spacing": None, "size": list(GRID), "window": [300.0, -100.0]}},
        "pre_window_text": {"preprocess": {"spacing": None, "size": list(GRID), "window": "wide"}},
        "pre_window_three": {"preprocess": {"spacing": None, "size": list(GRID), "window": [0.0, 1.0, 2.0]}},
        "pre_spacing_zero": {"preprocess": {"spacing": [0.0, 1.0, 1.0], "size": list(GRID)}},
        "pre_spacing_nan": {"preprocess": {"spacing": [float("nan")] * 3, "size": list(GRID)}},
        "pre_spacing_tiny": {"preprocess": {"spacing": [1e-6] * 3, "size": list(GRID)}},
        "pre_spacing_huge": {"preprocess": {"spacing": [1e6] * 3, "size": list(GRID)}},
        "pre_size_huge": {"input_size": None, "preprocess": {"spacing": None, "size": [50000, 50000, 50000]}},
        "pre_margin_negative": {"preprocess": {"spacing": None, "size": list(GRID), "crop_margin": -5.0}},
        "pre_margin_nan": {"preprocess": {"spacing": None, "size": list(GRID), "crop_margin": float("nan")}},
        "pre_percentiles_reversed": {"preprocess": {"spacing": None, "size": list(GRID), "percentiles": [90.0, 10.0]}},
        "pre_percentiles_nan": {"preprocess": {"spacing": None, "size": list(GRID), "percentiles": [float("nan"), 99.0]}},
        "pre_percentiles_over": {"preprocess": {"spacing": None, "size": list(GRID), "percentiles": [0.0, 500.0]}},
        "pre_crop_labels": {"preprocess": {"spacing": None, "size": list(GRID), "crop_labels": [999]}},
        "pre_unknown_key": {"preprocess": {"spacing": None, "size": list(GRID), "rm_rf": True}},
        "pre_text": {"preprocess": "resample everything"},
        "pre_list": {"preprocess": [1, 2, 3]},
        "pre_antialias_text": {"preprocess": {"spacing": None, "size": list(GRID), "antialias": "yes"}},
        "version_future": {"format_version": 99},
        "version_text": {"format_version": "one"},
        "model_list": {"model": [1, 2, 3]},
        "model_values": {"model": {"w": 3}},
        "config_number": {"gin_config": 42},
        "card_deep": {"card": {"deep": json.loads("[" * 60 + "]" * 60)}},
        "card_list": {"card": ["not", "an", "object"]},
        # a config asking for a network of ~1e11 parameters: refused before it is allocated
        "arch_huge": {"gin_config": good["gin_config"].replace("(4, 8)", "(100000, 100000)")},
    }
    for name, change in crafted.items():
        ckpt(f"ck_{name}", **change)
    # version_future: save_checkpoint writes its own format_version; overwrite it after
    for name, version in (("ck_version_future", 99), ("ck_version_text", "one")):
        state = torch.load(hws / f"{name}.pt", weights_only=True)
        state["format_version"] = version
        torch.save(state, hws / f"{name}.pt")

    # ---------------------------------------------------- images, fields
    p["f_metres"] = _nii(hws / "f_metres.nii.gz", _volume(), np.diag([0.0015, 0.0015, 0.0015, 1.0]))
    p["m_metres"] = _nii(hws / "m_metres.nii.gz", _volume(seed=1), np.diag([0.0015, 0.0015, 0.0015, 1.0]))
    p["f_cm"] = _nii(hws / "f_cm.nii.gz", _volume(), np.diag([0.02, 0.02, 0.02, 1.0]))
    p["m_30mm"] = _nii(hws / "m_30mm.nii.gz", _volume(seed=1), np.diag([30.0, 30.0, 30.0, 1.0]))
    p["f_100mm_z"] = _nii(hws / "f_100mm_z.nii.gz", _volume(), np.diag([1.0, 1.0, 100.0, 1.0]))
    p["seg_metres"] = _nii(hws / "seg_metres.nii.gz", _box(), np.diag([0.0015, 0.0015, 0.0015, 1.0]))
    from ddmr_core.data.field_io import save_field_itk, save_field_npz

    zero = np.zeros((3,) + GRID, np.float32)
    save_field_npz(hws / "field_huge.npz", np.full((3,) + GRID, 1e14, np.float32), [1.5] * 3, aff)
    save_field_npz(hws / "field_ramp_huge.npz",
                   (np.arange(16, dtype=np.float32)[None, :, None, None] * np.float32(1e14)
                    * np.ones((3,) + GRID, np.float32)), [1.5] * 3, aff)
    save_field_npz(hws / "field_metres.npz", zero, [0.001] * 3, np.diag([0.001, 0.001, 0.001, 1.0]))
    np.savez(hws / "field_singular.npz", disp=zero, spacing=np.ones(3, np.float32), affine=np.zeros((4, 4)))
    save_field_itk(hws / "field_huge.nii.gz", np.full((3,) + GRID, 1e14, np.float32), aff)
    save_field_itk(hws / "field.nii.gz", zero, aff)
    save_field_npz(hws / "field.npz", zero, [1.5] * 3, aff)
    for name in ("field_huge", "field_ramp_huge", "field_metres", "field_singular"):
        p[name] = str(hws / f"{name}.npz")
    p["field_huge_nii"] = str(hws / "field_huge.nii.gz")
    p["field_nii"] = str(hws / "field.nii.gz")
    p["field_npz"] = str(hws / "field.npz")

    # -------------------------------------------------- outputs = inputs
    p["moving_copy"] = _nii(hws / "moving_copy.nii.gz", _volume(seed=1), aff)
    os.symlink(hws / "moving_copy.nii.gz", hws / "moving_link.nii.gz")
    p["moving_link"] = str(hws / "moving_link.nii.gz")
    os.link(hws / "moving_copy.nii.gz", hws / "moving_hard.nii.gz")
    p["moving_hard"] = str(hws / "moving_hard.nii.gz")
    os.symlink(hws / "field.nii.gz", hws / "field_link.nii.gz")
    p["field_link"] = str(hws / "field_link.nii.gz")
    ckpt("model_copy")
    os.symlink(hws / "model_copy.pt", hws / "model_link.pt")
    p["model_link"] = str(hws / "model_link.pt")
    # an earlier `ddmr register` output holding the images of the next registration
    reg = hws / "reg_out"
    reg.mkdir()
    (reg / "results.json").write_text("{}")
    p["reg_fixed"] = _nii(reg / "fixed.nii.gz", _volume(), aff)
    p["reg_warped"] = _nii(reg / "warped.nii.gz", _volume(seed=1), aff)
    p["reg_out"] = str(reg)
    # an earlier evaluation report; a test set; both holding an input of the next run
    ev = hws / "eval_out"
    ev.mkdir()
    (ev / "per_pair.csv").write_text("pair\n")
    (ev / "summary.md").write_text("ddmr.metrics.ncc.win = 5\n")
    p["eval_out"] = str(ev)
    # symlink loops and over-long names as --out
    os.symlink(hws / "loop_y", hws / "loop_x")
    os.symlink(hws / "loop_x", hws / "loop_y")
    p["loop"] = str(hws / "loop_x")
    p["long"] = str(hws / ("x" * 300))

    # ------------------------------------------------------------- pairs, cards
    for name, pair in (("summary_json", "summary.json"), ("summary_csv", "summary.csv"),
                       ("summary_upper", "SUMMARY.JSON"), ("pair_long", "p" * 300)):
        (hws / f"pairs_{name}.csv").write_text(f"pair,fixed,moving\n{pair},{ws['f']},{ws['m']}\n")
        p[f"pairs_{name}"] = str(hws / f"pairs_{name}.csv")
    (hws / "card_deep.json").write_text("[" * 100000 + "]" * 100000)
    (hws / "card_40.json").write_text('{"a": ' + "[" * 40 + "]" * 40 + "}")
    (hws / "card_list.json").write_text("[1, 2]")
    for name in ("card_deep", "card_40", "card_list"):
        p[name] = str(hws / f"{name}.json")
    p["new_model"] = str(hws / "new_model.pt")  # must never appear
    return p
