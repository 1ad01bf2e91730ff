"""NIfTI images and uint8 label maps in and out, with clear errors; written atomically
through :mod:`ddmr_core.data.files`.

Arrays keep the axes nibabel loads them with (no reorientation): ``(D, H, W)`` are the
NIfTI's ``(i, j, k)`` voxel axes and the 4x4 affine maps them to RAS+ millimetres, as
``docs/ARCHITECTURE.md`` says. Spacing is the column norms of the affine.

Every problem a user can cause (missing file, unreadable file, a 2-D or 4-D image, a
label map with non-integer values, an image and segmentation on different grids) raises
:class:`ddmr_core.errors.DataError` naming the file and the problem.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np

from ..errors import DataError
from .files import NIFTI_SUFFIXES, atomic_path

#: two affines closer than this (mm, per element) are the same grid
AFFINE_ATOL = 1e-3



def is_nifti(path: str | Path) -> bool:
    """Whether ``path`` has a NIfTI file name (``.nii`` or ``.nii.gz``)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def nifti_stem(path: str | Path) -> str:
    """File name without ``.nii``/``.nii.gz``."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def spacing_from_affine(affine: np.ndarray) -> np.ndarray:
    """Voxel spacing (mm) along each array axis: the norms of the affine's columns."""
    return np.linalg.norm(np.asarray(affine, float)[:3, :3], axis=0)


def _read_nifti(path: Path, what: str):
    """``(data, affine)`` of a NIfTI file as nibabel reads it; ``what`` names it in errors."""
    import nibabel as nib

    if not path.exists():
        raise DataError(f"{what} not found")
    if not path.is_file():
        raise DataError(f"{what} is not a file")
    try:
        img = _load_gz_nifti(path) if path.name.lower().endswith(".nii.gz") else None
        if img is None:
            img = nib.load(str(path))
        return np.asarray(img.dataobj), img.affine
    except Exception as exc:  # nibabel raises many types for corrupt files
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{what} cannot be read as NIfTI: {first}") from exc


def _load_gz_nifti(path: Path):
    """A ``.nii.gz`` file as a nibabel image held in memory, decompressed by ISA-L (faster
    than the zlib that ``nib.load`` uses), or already by :mod:`.prefetch`; None when its
    header is neither NIfTI-1 nor NIfTI-2 (``nib.load`` then reads it and says what is
    wrong)."""
    import nibabel as nib

    from .prefetch import take

    raw = take(path)
    if raw is None:
        from isal import igzip

        raw = igzip.decompress(path.read_bytes())
    kinds = {348: nib.Nifti1Image, 540: nib.Nifti2Image}  # by sizeof_hdr, either byte order
    head = raw[:4]
    kind = kinds.get(int.from_bytes(head, "little")) or kinds.get(int.from_bytes(head, "big"))
    return None if kind is None else kind.from_bytes(raw)


def check_volume(data, affine, what: str) -> tuple[np.ndarray, np.ndarray]:
    """The checks every volume passes, from a file or from memory: integer or real voxels
    (not RGB or complex), 3-D (trailing singleton axes, e.g. NIfTI's ``(X, Y, Z, 1)``, are
    dropped), at least 2 voxels per axis, a finite, invertible ``(4, 4)`` affine. ``what``
    names the volume in the one-line :class:`DataError` (e.g. ``"image 'F.nii.gz'"``).
    Returns ``(data, affine float64)``."""
    data = np.asarray(data)
    if data.dtype.kind not in "biuf":  # RGB (structured), complex, ...: no cast says what was meant
        raise DataError(f"{what} has voxels of type {data.dtype}; a volume of integer or real values is needed")
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"{what} is {data.ndim}-D with shape {tuple(data.shape)}; a 3-D volume is needed")
    if min(data.shape) < 2:
        raise DataError(f"{what} has shape {tuple(data.shape)}: a 3-D volume is needed")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise DataError(f"{what} has a singular or invalid affine")
    return data, affine


def as_image(data, affine, what: str) -> tuple[np.ndarray, np.ndarray]:
    """A volume checked as an image (:func:`check_volume`, finite values):
    ``(image float32 (D, H, W), affine float64 (4, 4))``."""
    data, affine = check_volume(data, affine, what)
    image = np.asarray(data, dtype=np.float32)
    if not np.all(np.isfinite(image)):
        raise DataError(f"{what} contains NaN or infinite values")
    return image, affine


def as_label_map(data, affine, what: str) -> tuple[np.ndarray, np.ndarray]:
    """A volume checked as a label map (:func:`check_volume`, whole numbers in 0..255):
    ``(labels uint8 (D, H, W), affine float64 (4, 4))``."""
    values, affine = check_volume(data, affine, what)
    if values.dtype == np.uint8:
        return np.ascontiguousarray(values), affine
    if values.dtype.kind not in "biu":
        if not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
            raise DataError(f"{what} is not a label map: it has non-integer values")
    if values.size and (values.min() < 0 or values.max() > 255):
        raise DataError(f"{what} has labels outside 0..255 (min {values.min()}, max {values.max()})")
    return values.astype(np.uint8), affine


def load_image(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a 3-D NIfTI image.

    Returns:
        ``(image float32 (D, H, W), affine float64 (4, 4))``; scaling (``scl_slope``) is
        applied, non-finite values are an error (:func:`as_image`).
    """
    what = f"image {str(path)!r}"
    return as_image(*_read_nifti(Path(path), what), what)


def load_label_map(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a 3-D NIfTI label map as uint8 (values 0..255, 0 = background).

    Raises:
        DataError: also when values are not whole numbers in 0..255 (:func:`as_label_map`).
    """
    what = f"segmentation {str(path)!r}"
    return as_label_map(*_read_nifti(Path(path), what), what)


def check_same_grid(
    shape_a, affine_a, shape_b, affine_b, name_a: str, name_b: str, atol: float = AFFINE_ATOL
) -> None:
    """Raise :class:`DataError` unless two volumes share shape and affine."""
    if tuple(shape_a) != tuple(shape_b):
        raise DataError(
            f"{name_b!r} has shape {tuple(shape_b)} but {name_a!r} has shape {tuple(shape_a)}; "
            "an image and its segmentation must share one grid"
        )
    if not np.allclose(affine_a, affine_b, atol=atol):
        diff = float(np.abs(np.asarray(affine_a) - np.asarray(affine_b)).max())
        raise DataError(
            f"{name_b!r} and {name_a!r} have different affines (max difference {diff:.3g} mm); "
            "an image and its segmentation must share one grid"
        )


def load_image_and_seg(
    image_path: str | Path, seg_path: str | Path | None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Read an image and (optionally) its label map, checking they share one grid.

    Returns ``(image float32, seg uint8 or None, affine)``."""
    image, affine = load_image(image_path)
    if seg_path is None:
        return image, None, affine
    seg, seg_affine = load_label_map(seg_path)
    check_same_grid(image.shape, affine, seg.shape, seg_affine, str(image_path), str(seg_path))
    return image, seg, affine


def check_not_constant(image: np.ndarray, what: str) -> None:
    """Raise :class:`DataError` for a constant (e.g. all-zero) image: it has nothing to
    register, and normalising it divides by zero."""
    image = np.asarray(image)
    if image.size and float(image.max()) == float(image.min()):
        raise DataError(f"{what} is constant (every voxel is {float(image.min()):g}): there is nothing to register")


def check_finite(what: str, **arrays) -> None:
    """Raise :class:`DataError` if any of ``arrays`` (name -> array or tensor) holds NaN
    or infinite values, naming ``what`` and the arrays."""
    bad = []
    for name, a in arrays.items():
        if a is None:
            continue
        if hasattr(a, "detach"):
            a = a.detach().cpu().numpy()
        a = np.asarray(a)
        if a.dtype.kind in "fc":
            n = int(a.size - np.count_nonzero(np.isfinite(a)))
            if n:
                bad.append(f"{name} ({n} of {a.size} values)")
    if bad:
        raise DataError(f"{what} gave non-finite (NaN or infinite) values in {', '.join(bad)}; "
                        "they are not a result (a model whose training diverged?)")


#: a displacement this many times the grid's extent (along an axis) is not a registration
MAX_FIELD_EXTENTS = 10


def check_field(what: str, disp) -> None:
    """Raise :class:`DataError` for a displacement field ``(3, D, H, W)`` (voxels) that is
    not finite, or that moves a voxel by more than :data:`MAX_FIELD_EXTENTS` times the
    grid's extent along an axis: both come from models whose training diverged (weights
    of ~1e6 give finite fields of ~1e30 voxels, which sample nothing but padding)."""
    check_finite(what, field=disp)
    if hasattr(disp, "detach"):
        disp = disp.detach().cpu().numpy()
    disp = np.asarray(disp)
    for axis in range(min(3, disp.shape[0])):
        extent = disp.shape[1 + axis]
        peak = float(np.abs(disp[axis]).max()) if disp[axis].size else 0.0
        if peak > MAX_FIELD_EXTENTS * extent:
            raise DataError(
                f"{what} gave a displacement of {peak:.3g} voxels along axis {axis} of a grid {extent} "
                f"voxels long; that is not a registration (a model whose training diverged?)")


def _check_volume(array: np.ndarray, affine: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    array = np.asarray(array)
    while array.ndim > 3 and array.shape[0] == 1:  # (1, D, H, W) tensors from samples
        array = array[0]
    if array.ndim != 3:
        raise DataError(f"{what} must be 3-D (D, H, W), got shape {tuple(array.shape)}")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise DataError(f"affine must be 4x4, got shape {tuple(affine.shape)}")
    return array, affine


def to_numpy(x) -> np.ndarray:
    """An array or tensor (any device) as a NumPy array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


#: gzip level of written ``.nii.gz`` files: the fastest (a 1 mm displacement field is
#: 100 MB of floats, which higher levels shrink by a few % at several times the time)
GZIP_LEVEL = 1


def write_nifti(img, path: str | Path) -> Path:
    """Write a nibabel image to ``path`` atomically (:func:`~ddmr_core.data.files.atomic_path`):
    ``.nii`` as is, ``.nii.gz`` compressed by ISA-L's gzip (``isal``: standard gzip, any
    reader opens it) at :data:`GZIP_LEVEL`, on :func:`gzip_threads` threads (blocks
    compressed in parallel into one gzip stream, as pigz does), several times faster than
    zlib's (the writing of large fields and images would otherwise dominate ``ddmr
    register``). Arrays in Fortran order are written without a transposing copy."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.name.endswith(".gz"):
            from isal import igzip_threaded

            with igzip_threaded.open(tmp, "wb", compresslevel=GZIP_LEVEL, threads=gzip_threads(),
                                     block_size=GZIP_BLOCK) as fh:
                img.to_stream(_ForwardSeeking(fh))
        else:
            img.to_filename(str(tmp))
    return path


#: bytes per block of the threaded gzip writer (a block per thread in flight)
GZIP_BLOCK = 4 << 20


def gzip_threads() -> int:
    """Threads compressing a ``.nii.gz`` (:func:`write_nifti`): the CPUs this process may
    use, at most 4 (the writer thread and the disk keep up with no more)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


class _ForwardSeeking(io.RawIOBase):
    """A write-only stream that can "seek" forward by writing zeros: nibabel seeks past
    the header's padding to the data offset, which a compressing stream cannot do.
    Closing it leaves the stream it writes to open."""

    def __init__(self, fh):
        super().__init__()
        self._fh, self._pos = fh, 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        n = self._fh.write(data)
        self._pos += len(memoryview(data).cast("B")) if n is None else n
        return n

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        target = offset if whence == 0 else self._pos + offset if whence == 1 else None
        if target is None or target < self._pos:
            raise OSError("a compressed NIfTI stream is written forward only")
        if target > self._pos:
            self.write(b"\0" * (target - self._pos))
        return self._pos

    def flush(self) -> None:
        if not self.closed:
            self._fh.flush()


def save_image(path: str | Path, image, affine, dtype=np.float32) -> Path:
    """Write a 3-D image (``(D, H, W)`` or ``(1, D, H, W)``) atomically as NIfTI.

    The affine goes into both sform and qform (code 1, scanner)."""
    import nibabel as nib

    image, affine = _check_volume(to_numpy(image), to_numpy(affine), "image")
    img = nib.Nifti1Image(image.astype(dtype, copy=False), affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    return write_nifti(img, path)


def save_label_map(path: str | Path, labels, affine) -> Path:
    """Write a uint8 label map atomically as NIfTI (values must be whole numbers in 0..255)."""
    labels = to_numpy(labels)
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise DataError(f"label map for {str(path)!r} has values outside 0..255")
    return save_image(path, np.rint(labels) if labels.dtype.kind == "f" else labels, affine, np.uint8)


def read_csv(path: str | Path, what: str) -> tuple[list[str], list[dict]]:
    """``(header, rows)`` of a CSV file with a header line, rows as ``csv.DictReader``
    gives them. ``what`` names the file in the one-line :class:`DataError`: not found, or
    cannot be read (unreadable, not text, malformed CSV)."""
    import csv

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} {str(path)!r} not found")
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            return list(reader.fieldnames or []), rows
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{what} {str(path)!r} cannot be read: {exc}") from exc


def list_nifti(folder: str | Path) -> list[Path]:
    """NIfTI files directly in ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"folder {str(folder)!r} not found")
    return sorted(p for p in folder.iterdir() if p.is_file() and is_nifti(p))
