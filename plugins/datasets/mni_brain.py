"""``mni_brain``: the MNI ICBM152 2009a symmetric template that ships inside ``nilearn``.

The files ``nilearn/datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz``
are part of the installed ``nilearn`` wheel, so this dataset needs no network. The
template is the atlas the paper registered IXI to (section 2.1); IXI itself cannot be
downloaded here.

Label map (uint8), derived from the T1 (skull-stripped, zero outside the brain) and the
grey/white-matter probability maps, at each voxel inside the brain (T1 > 0):

* 2 = grey matter where ``p_gm + p_wm >= 0.5`` and ``p_gm >= p_wm``;
* 3 = white matter where ``p_gm + p_wm >= 0.5`` and ``p_wm > p_gm``;
* 1 = CSF / other intracranial tissue (ventricles, sulci, brainstem edges): the rest
  of the brain mask;
* 0 = background.

There is ONE template: every "subject" of every split is the same volume under a
different sample ``index``. Per-subject variation comes from the augmentation pipeline,
whose randomness is seeded by ``(seed, index)``, so each index still gives a different
fixed/moving pair. Split sizes only set how many distinct augmentation seeds an epoch
(or a test set) uses.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from ddmr_core.errors import DataError
from ddmr_core.data.io import load_image
from ddmr_core.data.preprocess import Preprocess, as_preprocess

from .common import Subject, SubjectDataset, make_sample, seeded_splits

CSF, GREY_MATTER, WHITE_MATTER = 1, 2, 3
LABEL_NAMES = {1: "CSF/other", 2: "grey matter", 3: "white matter"}
_PREFIX = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"


def template_files() -> dict[str, Path]:
    """Paths of the T1, GM and WM maps inside the installed nilearn package."""
    try:
        import nilearn.datasets
    except ImportError as exc:  # pragma: no cover - nilearn is a dependency
        raise DataError("mni_brain needs the nilearn package (pip install nilearn)") from exc
    data = Path(nilearn.datasets.__file__).parent / "data"
    files = {k: data / _PREFIX.format(k) for k in ("t1", "gm", "wm")}
    for k, f in files.items():
        if not f.is_file():
            raise DataError(f"mni_brain: nilearn's packaged template file {str(f)!r} not found")
    return files


@lru_cache(maxsize=1)
def load_template() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(t1 float32 in [0, 1], labels uint8, affine)`` on the template's 1 mm grid."""
    files = template_files()
    t1, affine = load_image(files["t1"])
    gm, _ = load_image(files["gm"])
    wm, _ = load_image(files["wm"])
    scale = 255.0 if max(t1.max(), gm.max(), wm.max()) > 1.5 else 1.0  # stored as uint8 0..255
    t1, gm, wm = t1 / scale, gm / scale, wm / scale
    labels = np.zeros(t1.shape, np.uint8)
    brain = t1 > 0
    tissue = (gm + wm) >= 0.5
    labels[brain] = CSF
    labels[brain & tissue & (gm >= wm)] = GREY_MATTER
    labels[brain & tissue & (wm > gm)] = WHITE_MATTER
    return t1.astype(np.float32), labels, affine


def _load():
    t1, labels, affine = load_template()
    return t1, labels, affine


class MniBrainDataset(SubjectDataset):
    """Copies of the MNI ICBM152 2009a template, one per sample index (see module docstring).

    Args:
        subjects: (train, validation, test) counts of template copies.
        seed: split seed (the copies are identical; it only orders indices).
        size: network grid (overrides the preprocessing's size).
        preprocess: a :class:`Preprocess` or dict; default: crop to the brain with a 4 mm
            margin, 1 mm, resized to ``size``, min-max to [0, 1].
    """

    def __init__(self, subjects: Sequence[int] = (64, 8, 8), seed: int = 0,
                 size: Sequence[int] | None = None, preprocess=None):
        p = as_preprocess(preprocess) or Preprocess(spacing=1.0, crop_labels="all", crop_margin=4.0)
        if size is not None:
            p = p.replace(size=tuple(int(s) for s in size))
        n = int(sum(subjects))
        super().__init__([Subject(f"mni152_{i:04d}", _load) for i in range(n)],
                         (CSF, GREY_MATTER, WHITE_MATTER), p, seeded_splits(n, subjects, seed))
        self._prepared = None
        self._lock = threading.Lock()

    def __getstate__(self):  # DataLoader workers: drop the lock, keep the cache
        state = dict(self.__dict__)
        state.pop("_lock")
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def sample(self, position: int) -> dict:
        # every subject is the same template: preprocess it once per process
        with self._lock:
            if self._prepared is None:
                t1, labels, affine = load_template()
                self._prepared = self.preprocessing.apply(t1, affine, labels, name="mni_brain template")
        image, seg, affine = self._prepared
        return make_sample(image.copy(), seg.copy(), affine.copy(), position)
