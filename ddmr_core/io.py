"""NIfTI images and uint8 label maps in and out, with clear errors and atomic writes.

Arrays keep the axes nibabel loads them with (no reorientation): ``(D, H, W)`` are the
NIfTI's ``(i, j, k)`` voxel axes and the 4x4 affine maps them to RAS+ millimetres, as
``docs/ARCHITECTURE.md`` says. Spacing is the column norms of the affine.

Every problem a user can cause (missing file, unreadable file, a 2-D or 4-D image, a
label map with non-integer values, an image and segmentation on different grids) raises
:class:`ddmr_core.errors.DataError` naming the file and the problem.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import DataError

#: two affines closer than this (mm, per element) are the same grid
AFFINE_ATOL = 1e-3

NIFTI_SUFFIXES = (".nii", ".nii.gz")


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


def _load(path: str | Path, what: str):
    import nibabel as nib

    path = Path(path)
    if not path.exists():
        raise DataError(f"{what} {str(path)!r} not found")
    if not path.is_file():
        raise DataError(f"{what} {str(path)!r} is not a file")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as exc:  # nibabel raises many types for corrupt files
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{what} {str(path)!r} cannot be read as NIfTI: {first}") from exc
    # trailing singleton axes (e.g. (X, Y, Z, 1)) are harmless; anything else is not 3-D
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(
            f"{what} {str(path)!r} is {data.ndim}-D with shape {tuple(data.shape)}; "
            "a 3-D volume is needed"
        )
    if min(data.shape) < 2:
        raise DataError(f"{what} {str(path)!r} has shape {tuple(data.shape)}: a 3-D volume is needed")
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise DataError(f"{what} {str(path)!r} has a singular or invalid affine")
    return data, affine


def load_image(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a 3-D NIfTI image.

    Returns:
        ``(image float32 (D, H, W), affine float64 (4, 4))``; scaling (``scl_slope``) is
        applied, non-finite values are an error.
    """
    data, affine = _load(path, "image")
    image = np.asarray(data, dtype=np.float32)
    if not np.all(np.isfinite(image)):
        raise DataError(f"image {str(path)!r} contains NaN or infinite values")
    return image, affine


def load_label_map(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a 3-D NIfTI label map as uint8 (values 0..255, 0 = background).

    Raises:
        DataError: also when values are not whole numbers in 0..255.
    """
    data, affine = _load(path, "segmentation")
    if data.dtype == np.uint8:
        return np.ascontiguousarray(data), affine
    values = np.asarray(data)
    if not np.issubdtype(values.dtype, np.integer):
        if not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
            raise DataError(f"segmentation {str(path)!r} is not a label map: it has non-integer values")
    if values.size and (values.min() < 0 or values.max() > 255):
        raise DataError(
            f"segmentation {str(path)!r} has labels outside 0..255 "
            f"(min {values.min()}, max {values.max()})"
        )
    return values.astype(np.uint8), affine


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


# ------------------------------------------------------------------ writing
@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (same suffix); rename it to ``path`` on success.

    On an exception the temporary file is removed, so no half-written file is ever left
    under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    name = path.name
    suffix = ".nii.gz" if name.endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; these are shared data files
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write a text file through :func:`atomic_path`: readers never see a partial file."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)
    return Path(path)


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


def _to_numpy(x):
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def save_image(path: str | Path, image, affine, dtype=np.float32) -> Path:
    """Write a 3-D image (``(D, H, W)`` or ``(1, D, H, W)``) atomically as NIfTI.

    The affine goes into both sform and qform (code 1, scanner)."""
    import nibabel as nib

    image, affine = _check_volume(_to_numpy(image), _to_numpy(affine), "image")
    img = nib.Nifti1Image(image.astype(dtype, copy=False), affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return Path(path)


def save_label_map(path: str | Path, labels, affine) -> Path:
    """Write a uint8 label map atomically as NIfTI (values must be whole numbers in 0..255)."""
    labels = _to_numpy(labels)
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise DataError(f"label map for {str(path)!r} has values outside 0..255")
    return save_image(path, np.rint(labels) if labels.dtype.kind == "f" else labels, affine, np.uint8)


def list_nifti(folder: str | Path) -> list[Path]:
    """NIfTI files directly in ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"folder {str(folder)!r} not found")
    return sorted(p for p in folder.iterdir() if p.is_file() and is_nifti(p))
