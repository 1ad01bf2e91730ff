"""Users' own NIfTI data: ``nifti_folder`` (a folder of files) and ``manifest`` (a CSV).

Any orientation and spacing: files are read with nibabel, array axes and affine kept,
and the :class:`ddmr_core.data.preprocess.Preprocess` brings every subject to the network
grid (by default 1 mm isotropic, resized to ``size``, intensities mapped to [0, 1]
between the 0.5th and 99.5th percentiles; set ``window`` for CT, ``crop_labels`` to crop
around an organ).

Folder layout for ``nifti_folder``, either::

    ROOT/images/<name>.nii.gz   ROOT/labels/<name>.nii.gz   (labels optional)

or, without an ``images`` folder, all NIfTI files in ROOT with label maps named
``<name>_seg.nii.gz`` next to them.

``manifest``: a CSV with a header; column ``image`` (required), ``seg`` (optional, may be
empty for unlabelled subjects only if no subject has one) and ``split`` (optional:
``train``, ``validation``/``val`` or ``test``; without it splits are drawn from ``seed``).
Relative paths are relative to the CSV's folder.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Sequence

from ddmr_core.errors import DataError
from ddmr_core.data.guards import check_spacing
from ddmr_core.data.io import list_nifti, load_image_and_seg, load_label_map, nifti_stem, read_csv
from ddmr_core.data.preprocess import Preprocess, as_preprocess

from .common import SPLITS, Subject, SubjectDataset, scan_labels, seeded_splits

DEFAULT_SPLITS = (0.7, 0.15, 0.15)
_SPLIT_ALIASES = {"train": "train", "training": "train", "validation": "validation", "val": "validation",
                  "valid": "validation", "test": "test", "testing": "test"}


def user_preprocess(preprocess, size) -> Preprocess:
    """Default preprocessing for users' data (1 mm, robust min-max), ``size`` applied."""
    p = as_preprocess(preprocess) or Preprocess(percentiles=(0.5, 99.5))
    if size is not None:
        p = p.replace(size=tuple(int(s) for s in size))
    return p


def _load(image: Path, seg: Path | None):
    img, lab, affine = load_image_and_seg(image, seg)
    check_spacing(affine, f"image {str(image)!r}")  # a unit mistake in a user's header
    return img, lab, affine


def _subjects(pairs: list[tuple[Path, Path | None]], source: str) -> list[Subject]:
    if not pairs:
        raise DataError(f"{source}: no NIfTI images found")
    with_seg = [p for p in pairs if p[1] is not None]
    if with_seg and len(with_seg) != len(pairs):
        missing = next(p[0] for p in pairs if p[1] is None)
        raise DataError(
            f"{source}: image {str(missing)!r} has no segmentation while others have one; "
            "give every image a segmentation or none"
        )
    for image, seg in pairs:
        for f in (image, seg):
            if f is not None and not f.is_file():
                raise DataError(f"{source}: file {str(f)!r} not found")
    return [Subject(nifti_stem(i), partial(_load, i, s), s is not None) for i, s in pairs]


def _labels(labels, subjects_pairs, source):
    if labels is not None:
        return tuple(int(v) for v in labels)
    segs = [s for _, s in subjects_pairs if s is not None]
    if not segs:
        return ()
    return scan_labels([partial(lambda p: load_label_map(p)[0], s) for s in segs], f"segmentations of {source}")


class NiftiFolderDataset(SubjectDataset):
    """A folder of NIfTI images with optional label maps (see the module docstring).

    Args:
        root: the folder.
        images: sub-folder of images (used when it exists).
        segs: sub-folder of label maps, same file names as the images.
        seg_suffix: without an ``images`` sub-folder, label maps are ``<name><suffix>.nii(.gz)``.
        splits: (train, validation, test) counts or fractions.
        seed: split seed.
        labels: foreground labels; ``None`` scans the label maps once.
        size: network grid (overrides the preprocessing's size).
        preprocess: a :class:`Preprocess` or dict; default: 1 mm, percentiles (0.5, 99.5).
    """

    def __init__(self, root: str = ".", images: str = "images", segs: str = "labels",
                 seg_suffix: str = "_seg", splits: Sequence[float] = DEFAULT_SPLITS, seed: int = 0,
                 labels: Sequence[int] | None = None, size: Sequence[int] | None = None, preprocess=None):
        root_p = Path(root)
        if not root_p.is_dir():
            raise DataError(f"nifti_folder: folder {str(root)!r} not found")
        pairs = []
        if (root_p / images).is_dir():
            seg_dir = root_p / segs
            for f in list_nifti(root_p / images):
                cands = [seg_dir / f.name, seg_dir / (nifti_stem(f) + ".nii.gz"), seg_dir / (nifti_stem(f) + ".nii")]
                pairs.append((f, next((c for c in cands if c.is_file()), None)))
        else:
            files = list_nifti(root_p)
            names = {f.name for f in files}
            for f in files:
                if nifti_stem(f).endswith(seg_suffix):
                    continue
                stem = nifti_stem(f) + seg_suffix
                seg = next((root_p / n for n in (stem + ".nii.gz", stem + ".nii") if n in names), None)
                pairs.append((f, seg))
        subjects = _subjects(pairs, f"nifti_folder {str(root)!r}")
        super().__init__(subjects, _labels(labels, pairs, str(root)), user_preprocess(preprocess, size),
                         seeded_splits(len(subjects), splits, seed))


class ManifestDataset(SubjectDataset):
    """Subjects listed in a CSV (columns ``image``, optional ``seg`` and ``split``).

    Args:
        path: the CSV file.
        splits, seed: used when the CSV has no ``split`` column.
        labels, size, preprocess: as for :class:`NiftiFolderDataset`.
    """

    def __init__(self, path: str = "manifest.csv", splits: Sequence[float] = DEFAULT_SPLITS, seed: int = 0,
                 labels: Sequence[int] | None = None, size: Sequence[int] | None = None, preprocess=None):
        csv_path = Path(path)
        header, rows = read_csv(csv_path, "manifest")
        header = [(h or "").strip() for h in header]
        if not rows:
            raise DataError(f"manifest {str(path)!r} has no rows")
        if "image" not in header:
            raise DataError(f"manifest {str(path)!r} has no 'image' column (columns: {', '.join(header)})")
        rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in rows]
        base = csv_path.parent
        pairs, split_of = [], []
        for line, r in enumerate(rows, start=2):
            if not r["image"]:
                raise DataError(f"manifest {str(path)!r} line {line}: empty image path")
            img = Path(r["image"])
            seg = Path(r["seg"]) if r.get("seg") else None
            pairs.append((img if img.is_absolute() else base / img,
                          None if seg is None else (seg if seg.is_absolute() else base / seg)))
            if "split" in header:
                s = _SPLIT_ALIASES.get(r["split"].lower())
                if s is None:
                    raise DataError(
                        f"manifest {str(path)!r} line {line}: unknown split {r['split']!r}; "
                        f"use one of {', '.join(SPLITS)}"
                    )
                split_of.append(s)
        subjects = _subjects(pairs, f"manifest {str(path)!r}")
        if split_of:
            assignment = {name: [i for i, s in enumerate(split_of) if s == name] for name in SPLITS}
        else:
            assignment = seeded_splits(len(subjects), splits, seed)
        super().__init__(subjects, _labels(labels, pairs, str(path)), user_preprocess(preprocess, size), assignment)
