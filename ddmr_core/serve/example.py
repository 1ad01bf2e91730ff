"""The built-in example pair of ``ddmr serve``: the MNI template and a deformed copy.

The pair is pair 0 of the test set ``ddmr build-testset --dataset mni_brain --pairs 1
--size 64 --seed 2023`` would write (:func:`ddmr_core.data.build_testset.build_testset_named`):
the MNI ICBM152 2009a template that ships inside ``nilearn`` (no download), cropped to
the brain and resized to 64³, as the fixed image, and the same template through the
paper's augmentation (thin-plate-spline warp, rotation, translation, gamma, brightness)
as the moving image, both with their label maps (1 CSF/other, 2 grey matter, 3 white
matter). It is the kind of pair the shipped ``brain-mr`` model was measured on
(``docs/models.md``).

It is built once per process (a few seconds: it goes through a temporary folder, since
that is how the test set code writes pairs) and kept in memory.
"""

from __future__ import annotations

import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DATASET = "mni_brain"
SIZE = 64
SEED = 2023


@dataclass(frozen=True)
class ExamplePair:
    """Arrays ``(D, H, W)`` on one grid ``affine`` (voxel -> RAS, mm)."""

    fixed: np.ndarray
    moving: np.ndarray
    fixed_seg: np.ndarray
    moving_seg: np.ndarray
    affine: np.ndarray
    label_names: dict = field(default_factory=dict)
    description: str = ""


_lock = threading.Lock()
_cache: dict = {}


def label_names(dataset: str) -> dict:
    """``{label: name}`` of a dataset plugin whose module has ``LABEL_NAMES`` (else ``{}``)."""
    from ..plugins.registry import Registry

    factory = Registry(bind_gin=False).get("datasets", dataset)
    return dict(getattr(sys.modules.get(getattr(factory, "__module__", ""), None), "LABEL_NAMES", {}) or {})


def example_pair(size: int = SIZE, seed: int = SEED) -> ExamplePair:
    """The example pair (see the module docstring), built on the first call.

    Building it parses gin configs (the dataset's and the augmentation's); callers that
    also load models keep the two apart (:class:`ddmr_core.serve.server.Server` holds a lock)."""
    from ..data.build_testset import build_testset_named
    from ..registration.register import read_volume

    key = (int(size), int(seed))
    with _lock:
        if key not in _cache:
            with tempfile.TemporaryDirectory(prefix="ddmr-example-") as tmp:
                out = build_testset_named(DATASET, pairs=1, size=key[0], seed=key[1], out=Path(tmp) / "pair",
                                          log=lambda *a, **k: None)
                pair = out / "pair_0000"
                fixed, affine = read_volume(str(pair / "fixed.nii.gz"))
                moving, _ = read_volume(str(pair / "moving.nii.gz"))
                fixed_seg, _ = read_volume(str(pair / "fixed_seg.nii.gz"), label=True)
                moving_seg, _ = read_volume(str(pair / "moving_seg.nii.gz"), label=True)
            _cache[key] = ExamplePair(
                fixed, moving, fixed_seg, moving_seg, affine, label_names(DATASET),
                f"MNI ICBM152 template (nilearn) at {key[0]}³ and a copy deformed by the paper's augmentation "
                f"(seed {key[1]}), with labels",
            )
        return _cache[key]
