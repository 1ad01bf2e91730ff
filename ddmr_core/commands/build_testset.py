"""``ddmr build-testset``: write fixed evaluation pairs once, so every method sees the same.

    ddmr build-testset --dataset abdomen_phantom --pairs 11 --size 128 --seed 0 --out testsets/abdomen

Pair ``k`` takes subject ``k mod n`` of the split (``test`` by default), resized to
``S^3`` if its grid differs, and runs it through the augmentation pipeline (built from
``--augment``, default the shipped ``mixins/augment/paper.gin``, with ``seed = K`` and
sample index ``k``): the augmented fixed image, the generated moving image, both label
maps and the ground-truth pull field are written with the fixed image's affine (see
:mod:`ddmr_core.testset` for the layout).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .prepare import build_named_dataset

NAME = "build-testset"
HELP = "write fixed evaluation pairs (images, label maps, ground-truth fields) to a folder"
ORDER = 25

DEFAULT_AUGMENT = "mixins/augment/paper.gin"


def add_arguments(parser):
    parser.add_argument("--dataset", required=True, metavar="NAME", help="dataset plugin name")
    parser.add_argument("--pairs", required=True, type=int, metavar="N", help="number of pairs")
    parser.add_argument("--size", required=True, type=int, metavar="S", help="grid S^3 of the pairs")
    parser.add_argument("--seed", required=True, type=int, metavar="K", help="augmentation seed")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--split", default="test", choices=["train", "validation", "test"],
                        help="split the fixed images come from (default: test)")
    parser.add_argument("--augment", default=DEFAULT_AUGMENT, metavar="FILE",
                        help=f"gin file of the augmentation pipeline (default: {DEFAULT_AUGMENT})")
    parser.add_argument("--config", action="append", default=[], metavar="FILE", help="extra gin file (repeatable)")
    parser.add_argument("--gin", action="append", default=[], metavar="BINDING", help="gin binding (repeatable)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing test set in DIR")


def _resize(sample: dict, size) -> dict:
    """Bring a sample to ``size`` (field of view kept) if its grid differs."""
    from ..spatial import resize_affine, resize_image

    shape = tuple(sample["image"].shape[-3:])
    if shape == tuple(size):
        return sample
    out = dict(sample)
    out["image"] = resize_image(sample["image"][None].float(), size)[0]
    if sample.get("seg") is not None:
        out["seg"] = resize_image(sample["seg"][None], size, mode="nearest")[0]
    affine = resize_affine(np.asarray(sample["affine"]), shape, size)
    out["affine"] = torch.from_numpy(affine)
    out["spacing"] = torch.from_numpy(np.linalg.norm(affine[:3, :3], axis=0).astype(np.float32))
    return out


def build_testset(dataset, pipeline, out, pairs: int, size, seed: int, split: str = "test",
                  dataset_name: str = "", log=print) -> Path:
    """Write ``pairs`` pairs from ``dataset.split(split)`` through ``pipeline`` into ``out``."""
    from ..testset import finish_testset, write_pair

    if pairs < 1:
        raise ConfigError(f"--pairs must be at least 1, got {pairs}")
    subjects = dataset.split(split)
    if len(subjects) == 0:
        raise DataError(f"dataset {dataset_name!r} has no {split!r} subjects to build a test set from")
    size = tuple(int(s) for s in size)
    out = Path(out)
    rows, t0 = [], time.perf_counter()
    labels = [int(v) for v in getattr(dataset, "labels", ())]
    for k in range(pairs):
        sample = _resize(subjects[k % len(subjects)], size)
        seg = sample.get("seg")
        # the label map goes through the pipeline as is: it is warped by nearest neighbour
        res = pipeline(
            sample["image"][None].float(),
            segs=None if seg is None else seg[None].to(torch.uint8),
            spacing=sample["spacing"][None],
            affine=sample["affine"][None],
            index=torch.tensor([k]),
        )
        affine = res["affine"][0].double().numpy()
        fixed_seg = None if res["fixed_segs"] is None else res["fixed_segs"][0, 0].to(torch.uint8)
        moving_seg = None if res["moving_segs"] is None else res["moving_segs"][0, 0].to(torch.uint8)
        rows.append(write_pair(
            out, f"pair_{k:04d}", res["fixed"][0, 0], res["moving"][0, 0], res["disp_true"][0],
            affine, res["spacing"][0], fixed_seg, moving_seg,
        ))
        log(f"  pair_{k:04d} (subject index {int(sample['index'])}) {time.perf_counter() - t0:.1f} s")
    preprocess = getattr(dataset, "preprocess", None)
    meta = {
        "dataset": dataset_name,
        "size": list(size),
        "seed": int(seed),
        "pairs": int(pairs),
        "labels": labels,
        "split": split,
        "preprocess": preprocess if isinstance(preprocess, dict) or preprocess is None else str(preprocess),
    }
    finish_testset(out, rows, meta)
    log(f"wrote {pairs} pairs to {out} in {time.perf_counter() - t0:.1f} s")
    return out


def run(args) -> int:

    from ..config import resolve_config
    from ..experiment import build_augmentation
    from ..testset import MANIFEST

    out = Path(args.out)
    if (out / MANIFEST).exists() and not args.overwrite:
        raise DataError(f"{str(out)!r} already holds a test set; pass --overwrite to replace it")
    if args.pairs < 1 or args.size < 2:
        raise ConfigError(f"--pairs must be >= 1 and --size >= 2, got {args.pairs} and {args.size}")
    augment = resolve_config(args.augment)
    bindings = list(args.gin) + [f"ddmr.build_augmentation.seed = {int(args.seed)}"]
    dataset, _ = build_named_dataset(args.dataset, [augment, *args.config], bindings, args.size)
    pipeline = build_augmentation()
    build_testset(dataset, pipeline, out, args.pairs, (args.size,) * 3, args.seed, args.split, args.dataset)
    return 0
