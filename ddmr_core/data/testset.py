"""Fixed evaluation test sets: written once by ``ddmr build-testset``, read by the evaluator.

Layout of a test set folder ``DIR``::

    DIR/testset.json      {"dataset", "size", "seed", "pairs", "labels", ...}
    DIR/manifest.csv      pair,fixed,moving,fixed_seg,moving_seg,disp_true,disp_true_npz
    DIR/<pair>/fixed.nii.gz, moving.nii.gz, fixed_seg.nii.gz, moving_seg.nii.gz,
              disp_true.nii.gz (ITK/ANTs field), disp_true.npz (voxel field)

Paths in the manifest are relative to ``DIR``; segmentation columns are empty when the
dataset has none. ``ddmr build-testset`` writes the whole folder beside ``DIR`` and swaps it
in at the end (:func:`ddmr_core.data.files.atomic_dir`), so ``DIR`` is complete or untouched. All volumes of a pair share the fixed image's grid and affine;
``disp_true`` is the pull field from the fixed grid into the moving image
(``warp(moving, disp_true) ~= fixed``), in voxels in the ``.npz`` and in LPS millimetres in
the NIfTI (see :mod:`ddmr_core.data.field_io`). ``manifest.csv`` and ``testset.json`` are written
last, so a folder holding them is complete.

Optional columns ``fixed_original, moving_original, fixed_seg_original, moving_seg_original``
(``build-testset --original-grid``) hold the pair on the subject's isotropic 1 mm grid,
whose field of view the test grid keeps (:attr:`PairRecord.original`,
:func:`load_original`; ``ddmr evaluate --original-resolution`` scores there).
"""

from __future__ import annotations

import csv
import io as _io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import DataError
from .io import check_same_grid, load_image, load_label_map, read_csv, save_image, save_label_map, to_numpy
from .files import write_text_atomic

MANIFEST = "manifest.csv"
META = "testset.json"
COLUMNS = ("pair", "fixed", "moving", "fixed_seg", "moving_seg", "disp_true", "disp_true_npz")
#: optional: the pair on the subject's isotropic grid (``build-testset --original-grid``)
ORIGINAL_COLUMNS = ("fixed_original", "moving_original", "fixed_seg_original", "moving_seg_original")
META_KEYS = ("dataset", "size", "seed", "pairs", "labels")


#: the files of one pair folder (``*_original`` ones only with ``--original-grid``)
PAIR_FILES = ("fixed.nii.gz", "moving.nii.gz", "fixed_seg.nii.gz", "moving_seg.nii.gz", "disp_true.nii.gz",
              "disp_true.npz") + tuple(f"{c}.nii.gz" for c in ORIGINAL_COLUMNS)


def is_testset_output(folder: str | Path) -> bool:
    """Whether ``folder`` holds only what ``ddmr build-testset`` writes (``manifest.csv``,
    ``testset.json`` and pair folders of :data:`PAIR_FILES`), complete or not, so that a
    new test set may replace it."""
    def ours(e: Path) -> bool:
        return e.name.startswith(".") and ".ddmr-" in e.name  # a temporary of ours

    for e in Path(folder).iterdir():
        if e.is_symlink():
            return False
        if e.is_file() and (e.name in (MANIFEST, META) or ours(e)):
            continue
        if e.is_dir() and all(f.is_file() and not f.is_symlink() and (f.name in PAIR_FILES or ours(f))
                              for f in e.iterdir()):
            continue
        return False
    return True


def write_pair(out_dir: str | Path, pair: str, fixed, moving, disp, affine, spacing=None,
               fixed_seg=None, moving_seg=None) -> dict:
    """Write one pair's files under ``out_dir/pair`` (each atomically).

    Args:
        fixed, moving: ``(D, H, W)`` (or ``(1, D, H, W)``) images.
        disp: ``(3, D, H, W)`` voxel pull field (fixed grid -> moving image).
        affine: ``(4, 4)`` of the fixed grid (used for every file of the pair).
        spacing: ``(3,)`` mm; default: from the affine.
        fixed_seg, moving_seg: uint8 label maps or None.

    Returns:
        The manifest row (paths relative to ``out_dir``).
    """
    from .field_io import save_field_itk, save_field_npz
    from .io import spacing_from_affine

    out_dir = Path(out_dir)
    folder = out_dir / pair
    affine = to_numpy(affine).astype(np.float64)
    disp = to_numpy(disp).astype(np.float32)
    if disp.ndim == 5:
        disp = disp[0]
    spacing = spacing_from_affine(affine) if spacing is None else to_numpy(spacing).reshape(3)
    row = {"pair": pair}
    save_image(folder / "fixed.nii.gz", to_numpy(fixed), affine)
    save_image(folder / "moving.nii.gz", to_numpy(moving), affine)
    row["fixed"], row["moving"] = f"{pair}/fixed.nii.gz", f"{pair}/moving.nii.gz"
    for key, seg in (("fixed_seg", fixed_seg), ("moving_seg", moving_seg)):
        if seg is None:
            row[key] = ""
        else:
            save_label_map(folder / f"{key}.nii.gz", to_numpy(seg), affine)
            row[key] = f"{pair}/{key}.nii.gz"
    save_field_itk(folder / "disp_true.nii.gz", disp, affine)
    save_field_npz(folder / "disp_true.npz", disp, spacing, affine)
    row["disp_true"], row["disp_true_npz"] = f"{pair}/disp_true.nii.gz", f"{pair}/disp_true.npz"
    return row


def finish_testset(out_dir: str | Path, rows: Sequence[dict], meta: dict) -> Path:
    """Write ``manifest.csv`` and then ``testset.json`` (atomically) for ``rows``."""
    out_dir = Path(out_dir)
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise ValueError(f"test set metadata lacks {missing}")
    columns = list(COLUMNS) + [c for c in ORIGINAL_COLUMNS if any(r.get(c) for r in rows)]
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: r.get(k, "") for k in columns})
    write_text_atomic(out_dir / MANIFEST, buf.getvalue())
    write_text_atomic(out_dir / META, json.dumps(meta, indent=2) + "\n")
    return out_dir


@dataclass
class PairRecord:
    """One row of a test set, paths resolved (``None`` for absent segmentations)."""

    pair: str
    fixed: Path
    moving: Path
    fixed_seg: Path | None
    moving_seg: Path | None
    disp_true: Path | None
    disp_true_npz: Path | None
    #: the optional original-grid volumes: ``{"fixed", "moving", "fixed_seg",
    #: "moving_seg"}`` -> path, for the columns the row fills
    original: dict = field(default_factory=dict)

    def load(self) -> dict:
        """The arrays of this pair (see :func:`load_pair`)."""
        return load_pair(self)


@dataclass
class Pair:
    """One test pair as the evaluator scores it (:meth:`TestSet.load`): images ``(D, H, W)``
    float32 in [0, 1], label maps uint8 ``(D, H, W)`` or None, ``disp_true`` ``(3, D, H, W)``
    voxels or None, ``spacing`` ``(3,)`` mm and ``affine`` ``(4, 4)`` of the fixed grid."""

    name: str
    fixed: np.ndarray
    moving: np.ndarray
    affine: np.ndarray
    spacing: np.ndarray
    fixed_seg: np.ndarray | None = None
    moving_seg: np.ndarray | None = None
    disp_true: np.ndarray | None = None
    #: volumes on their original grids (``{"fixed": (array, affine), ...}``) or None
    original: dict | None = None


def _unit_range(image: np.ndarray) -> np.ndarray:
    """Images are compared in [0, 1], as the networks see them; a test set written by
    ``build-testset`` already is, anything else is min-max scaled."""
    lo, hi = float(image.min()), float(image.max())
    if lo >= 0.0 and hi <= 1.0:
        return image.astype(np.float32)
    return ((image - lo) / (hi - lo if hi > lo else 1.0)).astype(np.float32)


@dataclass
class TestSet:
    """A test set folder: its metadata and pair records (:func:`read_testset`), and its pairs
    loaded as the evaluator scores them (:meth:`load`)."""

    __test__ = False  # not a pytest test class, despite its name

    root: Path
    meta: dict
    records: list = field(default_factory=list)
    #: the manifest has the ``fixed_original`` and ``moving_original`` columns
    has_original: bool = False

    @property
    def labels(self) -> tuple:
        return tuple(int(v) for v in self.meta.get("labels", ()))

    def __len__(self):
        return len(self.records)

    def __iter__(self):
        return iter(self.records)

    def __getitem__(self, i) -> PairRecord:
        return self.records[i]

    def names(self) -> list[str]:
        return [r.pair for r in self.records]

    def load(self, index: int, original: bool = False) -> Pair:
        """Pair ``index`` with its images in [0, 1] and constant images refused; ``original``
        also reads the original-grid volumes (when the manifest names them).

        Raises:
            DataError: naming the missing, unreadable or constant file."""
        from .io import check_not_constant

        record = self.records[index]
        d = load_pair(record)
        check_not_constant(d["fixed"], f"image {str(record.fixed)!r}")
        check_not_constant(d["moving"], f"image {str(record.moving)!r}")
        pair = Pair(d["pair"], _unit_range(d["fixed"]), _unit_range(d["moving"]), d["affine"],
                    np.asarray(d["spacing"], np.float64), d["fixed_seg"], d["moving_seg"], d["disp_true"])
        if original and self.has_original and {"fixed", "moving"} <= set(record.original):
            pair.original = {key: (arr if key.endswith("seg") else _unit_range(arr), aff)
                             for key, (arr, aff) in load_original(record).items()}
        return pair


def read_testset(path: str | Path) -> TestSet:
    """Read ``DIR/testset.json`` and ``DIR/manifest.csv`` (files are not opened yet).

    Raises:
        DataError: missing folder/files, bad JSON, missing manifest columns, no pairs.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"test set folder {str(root)!r} not found")
    meta_path, man_path = root / META, root / MANIFEST
    for p in (man_path, meta_path):
        if not p.is_file():
            raise DataError(f"test set {str(root)!r}: {p.name} not found (build it with `ddmr build-testset`)")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"test set file {str(meta_path)!r} cannot be read: {exc}") from exc
    if not isinstance(meta, dict):
        raise DataError(f"test set file {str(meta_path)!r} is not a JSON object")
    header, rows = read_csv(man_path, "test set manifest")
    missing = [c for c in ("pair", "fixed", "moving") if c not in header]
    if missing:
        raise DataError(f"test set manifest {str(man_path)!r} lacks column(s) {', '.join(missing)}")

    def resolve(value):
        value = (value or "").strip()
        if not value:
            return None
        p = Path(value)
        return p if p.is_absolute() else root / p

    records = []
    for line, r in enumerate(rows, start=2):
        if not (r.get("fixed") or "").strip() or not (r.get("moving") or "").strip():
            raise DataError(f"test set manifest {str(man_path)!r} line {line}: empty fixed or moving path")
        original = {c[: -len("_original")]: resolve(r.get(c)) for c in ORIGINAL_COLUMNS}
        records.append(PairRecord(
            pair=(r.get("pair") or f"pair_{line - 2:04d}").strip(),
            **{k: resolve(r.get(k)) for k in COLUMNS[1:]},
            original={k: p for k, p in original.items() if p is not None},
        ))
    if not records:
        raise DataError(f"test set {str(root)!r}: {MANIFEST} lists no pairs")
    return TestSet(root, meta, records, has_original=all(c in header for c in ORIGINAL_COLUMNS[:2]))


def load_original(record: PairRecord) -> dict:
    """The pair's original-grid volumes its row names (:attr:`PairRecord.original`):
    ``{"fixed", "moving" (image float32, affine), "fixed_seg", "moving_seg" (uint8 label
    map, affine)}``, each key only when the row fills it.

    Raises:
        DataError: a missing/unreadable file."""
    return {key: (load_label_map if key.endswith("seg") else load_image)(path) for key, path in record.original.items()}


def load_pair(record: PairRecord) -> dict:
    """Arrays of one pair for the evaluator.

    Returns:
        ``{"pair", "fixed", "moving" (D, H, W) float32, "fixed_seg", "moving_seg" uint8
        (D, H, W) or None, "disp_true" (3, D, H, W) float32 voxels or None,
        "spacing" (3,) float32 mm, "affine" (4, 4) float64}`` (the fixed grid).

    Raises:
        DataError: a missing/unreadable file, or files of the pair on different grids.
    """
    from .field_io import load_field_itk, load_field_npz
    from .io import spacing_from_affine

    fixed, affine = load_image(record.fixed)
    moving, m_aff = load_image(record.moving)
    check_same_grid(fixed.shape, affine, moving.shape, m_aff, str(record.fixed), str(record.moving))
    segs = {}
    for key in ("fixed_seg", "moving_seg"):
        p = getattr(record, key)
        if p is None:
            segs[key] = None
            continue
        seg, s_aff = load_label_map(p)
        check_same_grid(fixed.shape, affine, seg.shape, s_aff, str(record.fixed), str(p))
        segs[key] = seg
    disp = None
    if record.disp_true_npz is not None:
        disp, _, _ = load_field_npz(record.disp_true_npz)
    elif record.disp_true is not None:
        disp, _ = load_field_itk(record.disp_true)
    if disp is not None and tuple(disp.shape[1:]) != tuple(fixed.shape):
        raise DataError(
            f"test pair {record.pair!r}: disp_true grid {tuple(disp.shape[1:])} differs from "
            f"the fixed image's {tuple(fixed.shape)}"
        )
    return {
        "pair": record.pair,
        "fixed": fixed,
        "moving": moving,
        "fixed_seg": segs["fixed_seg"],
        "moving_seg": segs["moving_seg"],
        "disp_true": disp,
        "spacing": spacing_from_affine(affine).astype(np.float32),
        "affine": affine,
    }
