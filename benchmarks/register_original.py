"""Registration at the original resolution: a 182x218x182 1 mm brain pair, a ddmr model
against ANTs SyN (issue 15).

    python benchmarks/register_original.py [--model brain-mr] [--seed 7] [--device cpu]
    python benchmarks/register_original.py --model runs/brain/best.pt --spacing 6 --no-ants   # smoke test

The pair. The MNI ICBM152 2009a T1 that ships inside nilearn
(``ddmr_plugins.datasets.mni_brain.load_template``: 197x233x189 at 1 mm, labels CSF/other,
grey and white matter) is cropped to the paper's 182x218x182 1 mm grid (a box keeping
the whole brain), then the paper's augmentation (``mixins/augment/paper.gin``: TPS on an
8^3 grid up to 6 mm, rotation up to 10 degrees, translation up to 30 mm, gamma and
brightness on the moving image) runs at 1 mm (its resize step is then a no-op), as
``ddmr build-testset`` makes its pairs: the fixed image, the moving image and both label
maps, written as NIfTI to ``--work``. ``--spacing S`` builds the same pair on an S mm grid
(182x218x182 / S voxels) for quick runs.

ddmr. ``Registrar(--model).register(fixed, moving, original_resolution=True)`` on the
NIfTI files without label maps, as a user runs ``ddmr register``: the output and the
exported field lie on the 182x218x182 grid. Dice: the moving label map warped with that
field (``apply_field``, as ``ddmr warp --labels``) against the fixed one, per label and
mean. Runtime: the registration's wall clock (read, preprocess, predict, apply; the model
load is reported apart), on this machine's CPU unless ``--device`` says otherwise.

ANTs. The ``ants_syn`` baseline plugin (affine + SyN, mutual information; antspyx) on the
same two 1 mm arrays; Dice the same way; runtime: its registration plus warping the label
map. The script prints both, the runtime ratio, and writes ``results.json`` in ``--work``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

PAPER_SHAPE = (182, 218, 182)


def crop_box(brain: np.ndarray, shape) -> tuple:
    """Slices (or negative starts, for padding) of ``shape`` that keep the brain centred."""
    idx = np.argwhere(brain)
    centre = (idx.min(0) + idx.max(0)) / 2.0
    starts = []
    for c, n, t in zip(centre, brain.shape, shape):
        start = int(round(c - t / 2.0))
        starts.append(min(max(start, 0), n - t) if n >= t else (n - t) // 2)
    return tuple(starts)


def crop_or_pad(volume: np.ndarray, starts, shape) -> np.ndarray:
    out = np.zeros(shape, volume.dtype)
    src, dst = [], []
    for s, n, t in zip(starts, volume.shape, shape):
        a, b = max(s, 0), min(s + t, n)
        src.append(slice(a, b))
        dst.append(slice(a - s, b - s))
    out[tuple(dst)] = volume[tuple(src)]
    return out


def make_pair(work: Path, spacing: float, seed: int) -> dict:
    """The fixed/moving pair and label maps as NIfTI files in ``work`` (see the docstring)."""
    from ddmr_core.config.parsing import parse_config
    from ddmr_core.data.datasets import build_augmentation
    from ddmr_core.data.io import save_image, save_label_map, spacing_from_affine
    from ddmr_core.data.preprocess import Preprocess
    from ddmr_plugins.datasets.mni_brain import load_template

    t1, labels, affine = load_template()
    starts = crop_box(labels > 0, PAPER_SHAPE)
    t1, labels = crop_or_pad(t1, starts, PAPER_SHAPE), crop_or_pad(labels, starts, PAPER_SHAPE)
    shift = np.eye(4)
    shift[:3, 3] = starts
    affine = affine @ shift
    if spacing != 1.0:  # the same field of view on a coarser grid (antialiased)
        t1, labels, affine = Preprocess(spacing=spacing, size=None).apply(t1, affine, labels)
    shape = tuple(t1.shape)
    registry = parse_config(["mixins/augment/paper.gin"],
                            [f"SIZE = {shape}", f"ddmr.build_augmentation.seed = {int(seed)}"])
    del registry
    pipeline = build_augmentation()
    sp = torch.from_numpy(spacing_from_affine(affine).astype(np.float32))[None]
    with torch.no_grad():
        res = pipeline(torch.from_numpy(t1)[None, None].float(), torch.from_numpy(labels)[None, None],
                       sp, torch.from_numpy(affine)[None], torch.tensor([0]))
    affine = res["affine"][0].double().numpy()
    files = {k: str(work / f"{k}.nii.gz") for k in ("fixed", "moving", "fixed_seg", "moving_seg")}
    save_image(files["fixed"], res["fixed"][0, 0], affine)
    save_image(files["moving"], res["moving"][0, 0], affine)
    save_label_map(files["fixed_seg"], res["fixed_segs"][0, 0].to(torch.uint8), affine)
    save_label_map(files["moving_seg"], res["moving_segs"][0, 0].to(torch.uint8), affine)
    return files


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="brain-mr", help="registered model name or checkpoint (default: brain-mr)")
    ap.add_argument("--spacing", type=float, default=1.0,
                    help="build the pair on this grid spacing, mm (default 1: 182x218x182); e.g. 6 for a smoke test")
    ap.add_argument("--seed", type=int, default=7, help="augmentation seed of the pair")
    ap.add_argument("--device", default="cpu", help="torch device of the model (default: cpu)")
    ap.add_argument("--no-ants", action="store_true", help="run the model only")
    ap.add_argument("--work", default="bench_out/register_original", help="folder for the pair and results.json")
    args = ap.parse_args(argv)

    from ddmr_core.data.io import load_image, load_label_map
    from ddmr_core.registration.register import Registrar, dice_tre
    from ddmr_core.spatial.regrid import apply_field
    from ddmr_core.plugins.registry import Registry
    from ddmr_plugins.datasets.mni_brain import CSF, GREY_MATTER, WHITE_MATTER, LABEL_NAMES

    labels = (CSF, GREY_MATTER, WHITE_MATTER)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    files = make_pair(work, args.spacing, args.seed)
    fixed, affine = load_image(files["fixed"])
    moving, _ = load_image(files["moving"])
    fixed_seg, _ = load_label_map(files["fixed_seg"])
    moving_seg, _ = load_label_map(files["moving_seg"])
    print(f"pair: MNI152 T1 + the paper's augmentation (seed {args.seed}), grid {fixed.shape} at "
          f"{args.spacing:g} mm, made in {time.perf_counter() - t:.1f} s ({work})")
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
          f"{torch.get_num_threads()}")

    def score(warped_seg):
        d = dice_tre(fixed_seg, warped_seg, affine, labels)
        return d["dice_mean"], {LABEL_NAMES[int(k)]: v for k, v in d["dice"].items()}

    before, before_labels = score(moving_seg)
    print(f"before registration: mean Dice {before:.3f}")
    out = {"grid": list(fixed.shape), "spacing_mm": args.spacing, "seed": args.seed,
           "before": {"dice_mean": before, "dice": before_labels}}

    reg = Registrar(args.model, device=args.device)
    print(f"ddmr model {args.model} ({reg.name}): network grid {reg.input_size}, loaded in {reg.load_time:.2f} s")
    t = time.perf_counter()
    res = reg.register(files["fixed"], files["moving"], original_resolution=True)
    t_model = time.perf_counter() - t
    assert res.disp.shape[1:] == fixed.shape
    model_dice, model_labels = score(apply_field(res.disp, res.affine, moving_seg, affine, labels=True))
    timings = ", ".join(f"{k} {v:.2f} s" for k, v in res.timings.items())
    print(f"ddmr {args.model}: mean Dice {model_dice:.3f} ({', '.join(f'{k} {v:.3f}' for k, v in model_labels.items())})"
          f"; {t_model:.2f} s ({timings}; crop {res.inputs['crop']})")
    out["ddmr"] = {"model": args.model, "checkpoint": reg.name, "dice_mean": model_dice, "dice": model_labels,
                   "runtime_s": t_model, "timings_s": res.timings, "load_s": reg.load_time}

    if not args.no_ants:
        ants = Registry(bind_gin=False).create("baselines", "ants_syn")
        if not ants.available():
            print("ants_syn: antspyx is not installed; skipped")
        else:
            t = time.perf_counter()
            disp = ants.register(fixed, moving, tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0)))
            warped_seg = apply_field(disp, affine, moving_seg, affine, labels=True)
            t_ants = time.perf_counter() - t
            ants_dice, ants_labels = score(warped_seg)
            print(f"ants_syn: mean Dice {ants_dice:.3f} ({', '.join(f'{k} {v:.3f}' for k, v in ants_labels.items())})"
                  f"; {t_ants:.2f} s")
            print(f"Dice ddmr - ants_syn: {model_dice - ants_dice:+.3f}; runtime ants_syn / ddmr: "
                  f"{t_ants / t_model:.1f}x")
            out["ants_syn"] = {"dice_mean": ants_dice, "dice": ants_labels, "runtime_s": t_ants}
            out["runtime_ratio_ants_over_ddmr"] = t_ants / t_model
    (work / "results.json").write_text(json.dumps(out, indent=2))
    print(f"wrote {work / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
