"""Building a fixed evaluation test set (``ddmr build-testset`` as a library).

Pair ``k`` takes subject ``k mod n`` of a split (``test`` by default), resized to the
test grid if its grid differs, and runs it through the augmentation pipeline (seeded,
sample index ``k``): the augmented fixed image, the generated moving image, both label
maps and the ground-truth pull field are written with the fixed image's affine, the
folder as a whole (:func:`ddmr_core.data.files.atomic_dir`; layout: :mod:`ddmr_core.data.testset`).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError

#: the augmentation of test pairs unless told otherwise: the paper's
DEFAULT_AUGMENT = "mixins/augment/paper.gin"
#: most pairs and largest grid side of a test set (``--pairs 1e20`` would run until the disk is full)
MAX_PAIRS = 100_000
MAX_SIZE = 1024


def _resize(sample: dict, size) -> dict:
    """Bring a sample to ``size`` (field of view kept) if its grid differs."""
    from ..spatial.fields import resize_image
    from ..spatial.grids import resize_affine

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


def _original_volumes(dataset, position: int, W, out_affine: np.ndarray, out_shape) -> dict:
    """The pair on the subject's isotropic grid (the preprocessing without the resize).

    The test grid is a field-of-view-keeping resize of that grid, so the pipeline's
    rendering field ``W`` (``moving = warp(source, W)``) carries over with
    :func:`resize_field`: ``moving_original = warp(fixed_original, resize_field(W))``.
    Pointwise intensity augmentations of the moving image are not replayed there."""
    from ..spatial.fields import resize_field, warp
    from ..spatial.grids import resize_affine

    if not (hasattr(dataset, "load_raw") and hasattr(dataset, "preprocessing")):
        raise ConfigError(
            f"--original-grid needs a dataset that reads raw subjects ({type(dataset).__name__} "
            "does not; a `prepared` cache has no original grid)"
        )
    raw, seg, aff = dataset.load_raw(position)
    image1, seg1, aff1 = dataset.preprocessing.replace(size=None).apply(raw, aff, seg, name=f"subject {position}")
    shape1 = tuple(image1.shape)
    if not np.allclose(resize_affine(aff1, shape1, out_shape), out_affine, atol=1e-4):
        raise ConfigError(
            "--original-grid: the pair's grid is not a resize of the subject's isotropic grid "
            "(does the augmentation change the field of view?)"
        )
    src = torch.from_numpy(np.ascontiguousarray(image1))[None, None]
    lab = None if seg1 is None else torch.from_numpy(np.ascontiguousarray(seg1))[None, None]
    if W is None:
        moving1, mseg1 = src, lab
    else:
        W1 = resize_field(W.float().cpu(), shape1)
        moving1 = warp(src, W1, mode="linear", padding="border")
        mseg1 = None if lab is None else warp(lab, W1, mode="nearest", padding="zeros")
    return {"affine": aff1, "fixed": image1, "fixed_seg": seg1, "moving": moving1[0, 0].numpy(),
            "moving_seg": None if mseg1 is None else mseg1[0, 0].numpy()}


def _write_original(out: Path, pair: str, vols: dict) -> dict:
    from .io import save_image, save_label_map

    row = {}
    for key in ("fixed", "moving", "fixed_seg", "moving_seg"):
        if vols[key] is None:
            continue
        rel = f"{pair}/{key}_original.nii.gz"
        (save_label_map if key.endswith("seg") else save_image)(out / rel, vols[key], vols["affine"])
        row[f"{key}_original"] = rel
    return row


def build_testset(dataset, pipeline, out, pairs: int, size, seed: int, split: str = "test",
                  dataset_name: str = "", log=print, original_grid: bool = False,
                  progress: bool | None = None) -> Path:
    """Write ``pairs`` pairs from ``dataset.split(split)`` through ``pipeline`` into ``out``.

    ``log`` gets one summary line; the pairs are counted by a progress bar on stderr
    (:func:`ddmr_core.progress.bar`; ``progress``: force it on or off, ``None``: on a
    terminal only).

    ``original_grid`` also writes each pair on the subject's isotropic (1 mm) grid, as the
    optional ``*_original`` manifest columns that ``ddmr evaluate --original-resolution`` uses."""
    from .files import atomic_dir
    from .testset import is_testset_output

    if pairs < 1:
        raise ConfigError(f"--pairs must be at least 1, got {pairs}")
    subjects = dataset.split(split)
    if len(subjects) == 0:
        raise DataError(f"dataset {dataset_name!r} has no {split!r} subjects to build a test set from")
    size = tuple(int(s) for s in size)
    out = Path(out)
    t0 = time.perf_counter()
    # written beside ``out`` and swapped in whole: an interrupted run leaves ``out`` as it was
    with atomic_dir(out, "--out", replaceable=is_testset_output, what="ddmr build-testset") as tmp:
        _write_pairs(dataset, subjects, pipeline, tmp, pairs, size, seed, split, dataset_name, original_grid,
                     progress)
    log(f"wrote {pairs} pairs to {out} in {time.perf_counter() - t0:.1f} s")
    return out


def _write_pairs(dataset, subjects, pipeline, out: Path, pairs: int, size, seed: int, split: str,
                 dataset_name: str, original_grid: bool, progress: bool | None = None) -> None:
    from .testset import finish_testset, write_pair

    from ..progress import bar

    rows = []
    labels = [int(v) for v in getattr(dataset, "labels", ())]
    counter = bar(pairs, "build-testset", "pair", progress)
    for k in range(pairs):
        sample = _resize(subjects[k % len(subjects)], size)
        seg = sample.get("seg")
        # the label map goes through the pipeline as is: it is warped by nearest neighbour
        args = (sample["image"][None].float(), None if seg is None else seg[None].to(torch.uint8),
                sample["spacing"][None], sample["affine"][None], torch.tensor([k]))
        with torch.no_grad():
            # the pipeline's forward, step by step, to keep its rendering field W
            state = pipeline.initial_state(*args)
            for step in pipeline.steps:
                state = step(state)
            res = pipeline.render(state)
        affine = res["affine"][0].double().numpy()
        fixed_seg = None if res["fixed_segs"] is None else res["fixed_segs"][0, 0].to(torch.uint8)
        moving_seg = None if res["moving_segs"] is None else res["moving_segs"][0, 0].to(torch.uint8)
        name = f"pair_{k:04d}"
        row = write_pair(out, name, res["fixed"][0, 0], res["moving"][0, 0], res["disp_true"][0],
                         affine, res["spacing"][0], fixed_seg, moving_seg)
        if original_grid:
            vols = _original_volumes(dataset, int(sample["index"]), state["warp"], affine,
                                     tuple(res["fixed"].shape[2:]))
            row.update(_write_original(out, name, vols))
        rows.append(row)
        counter.update(1)
    counter.close()
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


def build_testset_named(dataset: str, pairs: int, size: int, seed: int, out, split: str = "test",
                        augment: str = DEFAULT_AUGMENT, configs=(), bindings=(), overwrite: bool = False,
                        original_grid: bool = False, log=print, progress: bool | None = None) -> Path:
    """What ``ddmr build-testset`` does: check the arguments and ``out`` before any work
    (an existing test set is replaced only with ``overwrite``), build the dataset plugin
    ``dataset`` (:func:`ddmr_core.data.datasets.build_named_dataset`, ``SIZE = size``) and the
    augmentation of the gin file ``augment`` seeded with ``seed``, then
    :func:`build_testset` ``pairs`` pairs on the grid ``size^3`` into ``out``."""
    from ..config.parsing import resolve_config
    from .datasets import build_augmentation, build_named_dataset
    from .guards import check_inputs_outside
    from .files import check_output_folder
    from .testset import MANIFEST, is_testset_output

    out = Path(out)
    if pairs < 1 or size < 2:
        raise ConfigError(f"--pairs must be >= 1 and --size >= 2, got {pairs} and {size}")
    if pairs > MAX_PAIRS or size > MAX_SIZE:
        raise ConfigError(f"--pairs must be at most {MAX_PAIRS} and --size at most {MAX_SIZE}, got {pairs} and "
                          f"{size} (a test set is written whole before it is used)")
    if out.is_dir() and (out / MANIFEST).exists() and not overwrite:
        raise DataError(f"{str(out)!r} already holds a test set; pass --overwrite to replace it")
    check_output_folder(out, "--out", replaceable=is_testset_output, what="ddmr build-testset")
    check_inputs_outside(out, {"--augment config": resolve_config(augment),
                               **{f"--config {c}": resolve_config(c) for c in configs}})
    bindings = list(bindings) + [f"ddmr.build_augmentation.seed = {int(seed)}"]
    data, _ = build_named_dataset(dataset, [resolve_config(augment), *configs], bindings, size)
    return build_testset(data, build_augmentation(), out, pairs, (size,) * 3, seed, split, dataset, log=log,
                         original_grid=original_grid, progress=progress)
