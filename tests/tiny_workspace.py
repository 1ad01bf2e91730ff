"""Tiny (16^3) inputs for the bad-input table and the reliability tests (issue 17):
images, label maps, a light checkpoint and broken or hostile ones, pairs CSVs, a test set,
and outputs that exist already. Built once per session (``tests/conftest.py``)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

GRID = (16, 16, 16)
ZEN = "Beautiful is better than ugly"  # what ``import this`` prints
SECRET = "SECRET-TOKEN-4711"


def _volume(shape=GRID, seed=0):
    g = np.meshgrid(*[np.linspace(0, 1, n) for n in shape], indexing="ij")
    a, b = 2 + seed, 3 + seed
    return (np.sin(a * g[0]) * np.cos(b * g[1]) + g[2] ** 2 + 2).astype(np.float32)


def _box(shift=0):
    seg = np.zeros(GRID, np.uint8)
    seg[4 + shift:12 + shift, 4:12, 4:12] = 1
    seg[4:8, 12:15, 2:6] = 2
    return seg


class _Pwn:
    """A pickle that would create a file when unpickled (it must never be)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


def build_workspace(ws: Path) -> dict:
    """Every input the table refers to, by name; returns ``{name: path string}``."""
    from ddmr_core.model.checkpoint import save_checkpoint
    from ddmr_core.config.parsing import config_text, parse_config
    from ddmr_core.model.build import build_model
    from ddmr_core.data.preprocess import Preprocess
    from ddmr_core.data.testset import finish_testset, write_pair

    ws.mkdir(parents=True, exist_ok=True)
    aff = np.diag([1.5, 1.5, 1.5, 1.0])
    p = {"ws": str(ws)}

    def nii(name, data, affine=aff):
        nib.save(nib.Nifti1Image(data, affine), str(ws / name))
        p[name.split(".")[0]] = str(ws / name)

    nii("f.nii.gz", _volume())
    nii("m.nii.gz", _volume(seed=1))
    nii("fs.nii.gz", _box())
    nii("ms.nii.gz", _box(1))
    nii("zero.nii.gz", np.zeros(GRID, np.float32))
    nii("const.nii.gz", np.full(GRID, 7.0, np.float32))
    nan = _volume()
    nan[3, 3, 3] = np.nan
    nii("nan_image.nii.gz", nan)
    nii("four_d.nii.gz", np.zeros(GRID + (2,), np.float32))
    nii("two_d.nii.gz", np.zeros((16, 16), np.float32))
    nii("seg_small.nii.gz", np.zeros((16, 16, 8), np.uint8))
    moved = aff.copy()
    moved[0, 3] += 5.0
    nii("seg_moved.nii.gz", _box(), moved)
    nii("seg_frac.nii.gz", np.full(GRID, 0.5, np.float32))
    nii("seg_big.nii.gz", np.full(GRID, 300, np.int16))
    (ws / "junk.nii.gz").write_bytes(b"this is not a NIfTI file")
    p["junk"] = str(ws / "junk.nii.gz")

    # checkpoints: a tiny real network (light vxm_unet), then broken and hostile ones
    parse_config(text="ddmr.build_model.backbone = @ddmr.backbones.vxm_unet()\n"
                      "ddmr.backbones.vxm_unet.widths = (4, 8)\nddmr.backbones.vxm_unet.head = (4,)\n")
    model = build_model()
    good = {"model": model.state_dict(), "gin_config": config_text(), "input_size": list(GRID),
            "labels": [1, 2], "preprocess": Preprocess(spacing=None, size=GRID).to_dict()}

    def ckpt(name, **change):
        state = dict(good)
        state.update(change)
        save_checkpoint(ws / name, state)
        p[name[:-3]] = str(ws / name)

    ckpt("good.pt")
    (ws / "secret.txt").write_text(f"{SECRET} = 1\n")
    cfg = good["gin_config"]
    ckpt("import_this.pt", gin_config="import this\n" + cfg)
    ckpt("include_secret.pt", gin_config=f"include '{ws / 'secret.txt'}'\n" + cfg)
    ckpt("include_passwd.pt", gin_config="include '/etc/passwd'\n" + cfg)
    ckpt("dynamic.pt", gin_config="from __gin__ import dynamic_registration\n" + cfg)
    ckpt("dataset_ref.pt", gin_config=cfg + "\nbuild_model.backbone = @ddmr.datasets.nifti_folder()\n"
                                            f"ddmr.datasets.nifti_folder.root = '{ws}'\n")
    ckpt("macro_ref.pt", gin_config=cfg + "\nEVIL = @ddmr.datasets.nifti_folder()\nvxm_unet.size = %EVIL\n")
    ckpt("bad_config.pt", gin_config="build_model.backbone = (((\n")
    ckpt("unknown_ref.pt", gin_config="build_model.backbone = @ddmr.backbones.nope()\n")
    ckpt("nan_weights.pt", model={k: (v.clone().fill_(float("nan")) if v.is_floating_point() else v)
                                  for k, v in good["model"].items()})
    # a blown-up run (Adam at lr = 1e6): finite weights of ~1e6 give a field of ~1e30 voxels
    ckpt("huge_weights.pt", model={k: (v * 1e6 if v.is_floating_point() else v) for k, v in good["model"].items()})
    ckpt("other_arch.pt", model={"backbone.field": torch.zeros(1, 3, 8, 8, 8)})
    state = dict(good)
    state.pop("gin_config")
    save_checkpoint(ws / "no_config.pt", state)
    p["no_config"] = str(ws / "no_config.pt")
    (ws / "empty.pt").write_bytes(b"")
    (ws / "text.pt").write_text("not a checkpoint")
    torch.save({"state_dict": {"w": torch.zeros(1)}}, ws / "foreign.pt")
    torch.save({"format": "ddmr-checkpoint", "model": _Pwn(ws / "PWNED"), "gin_config": ""}, ws / "pickle.pt")
    for name in ("empty", "text", "foreign", "pickle"):
        p[name] = str(ws / f"{name}.pt")

    # pairs CSVs for `register --pairs`
    def csv_file(name, text):
        (ws / name).write_text(text)
        p[name[:-4]] = str(ws / name)

    csv_file("pairs_empty.csv", "fixed,moving\n")
    csv_file("pairs_no_moving.csv", "fixed\nf.nii.gz\n")
    csv_file("pairs_missing.csv", "fixed,moving\nf.nii.gz,gone.nii.gz\n")
    csv_file("pairs_bad_name.csv", "pair,fixed,moving\n../up,f.nii.gz,m.nii.gz\n")
    csv_file("pairs_twice.csv", "pair,fixed,moving\na,f.nii.gz,m.nii.gz\na,m.nii.gz,f.nii.gz\n")
    csv_file("pairs_constant.csv", "fixed,moving\nf.nii.gz,m.nii.gz\nf.nii.gz,const.nii.gz\n")
    csv_file("pairs_four_d.csv", "fixed,moving\nf.nii.gz,m.nii.gz\nfour_d.nii.gz,m.nii.gz\n")

    # a tiny valid test set (for evaluate, and as a test set build-testset must not overwrite)
    row = write_pair(ws / "testset", "pair_0000", _volume() / 4, _volume(seed=1) / 4,
                     np.zeros((3,) + GRID, np.float32), aff, fixed_seg=_box(), moving_seg=_box(1))
    finish_testset(ws / "testset", [row], {"dataset": "synthetic", "size": list(GRID), "seed": 0,
                                           "pairs": 1, "labels": [1, 2]})
    p["testset"] = str(ws / "testset")
    (ws / "no_manifest").mkdir()
    (ws / "no_manifest" / "testset.json").write_text("{}")
    p["no_manifest"] = str(ws / "no_manifest")

    # outputs that exist already
    (ws / "prev_out").mkdir()  # an earlier `ddmr register` output: must survive every failure
    (ws / "prev_out" / "results.json").write_text('{"earlier": "run"}')
    (ws / "prev_out" / "warped_seg.nii.gz").write_bytes(b"earlier")
    p["prev_out"] = str(ws / "prev_out")
    (ws / "foreign_dir").mkdir()  # a user's folder: never replaced
    (ws / "foreign_dir" / "notes.txt").write_text("mine")
    p["foreign_dir"] = str(ws / "foreign_dir")
    (ws / "a_file").write_text("a file, not a folder")
    p["a_file"] = str(ws / "a_file")
    p["new_out"] = str(ws / "new_out")  # must never appear
    return p


def snapshot(root: str) -> dict:
    """Every entry under ``root`` (hidden ones too): folders, file contents and modes,
    symbolic links' targets (not followed: some loop)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            key = str(path.relative_to(root))
            if path.is_symlink():
                out[key + "@"] = os.readlink(path)
            elif name in dirnames:
                out[key + "/"] = oct(path.stat().st_mode)
            else:
                out[key] = (hashlib.sha1(path.read_bytes()).hexdigest(), oct(path.stat().st_mode))
    return out
