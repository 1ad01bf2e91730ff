"""Displacement fields on disk: ITK/ANTs NIfTI and NumPy ``.npz``.

In memory a field is ``(3, D, H, W)`` float32 in **voxel units of the fixed grid**,
component ``i`` along array axis ``i`` of the NIfTI as nibabel loads it, pull mapping
``warped(x) = moving(x + u(x))`` (``docs/ARCHITECTURE.md``, "Tensor conventions").

ITK (and so SimpleITK, ANTs, 3D Slicer) wants something else: a vector image whose
vectors are **physical displacements in millimetres in LPS** coordinates, on the fixed
image's grid, with the same pull meaning (``T(p) = p + v(p)`` maps a fixed-space point
into the moving image). For a voxel field ``u`` and the fixed image's voxel->RAS affine
``A``::

    v_RAS = A[:3, :3] @ u          # a voxel step along axis i moves A[:3, i] mm in RAS
    v_LPS = diag(-1, -1, 1) @ v_RAS

The file is a NIfTI of shape ``(X, Y, Z, 1, 3)`` (vector in the 5th dimension, a
singleton time axis, as the NIfTI standard wants), intent code 1007 (``NIFTI_INTENT_VECTOR``),
float32, with ``A`` as both sform and qform. ITK's NIfTI reader converts the *grid*
(affine) from RAS to LPS itself but takes the vector *values* as they are stored
(``ConvertRASVectors`` is off by default), which is why they are stored in LPS --
``tests/core/test_field_io.py`` checks this empirically with SimpleITK and ANTs on an
oblique, anisotropic grid.

Writes are atomic (:func:`ddmr_core.data.files.atomic_path`: a temporary file in the target folder,
then ``os.replace``; the usual file mode, ``0o666 & ~umask``).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import DataError
from .files import atomic_path
from .io import write_nifti

#: NIfTI intent code for a vector-valued image (``NIFTI_INTENT_VECTOR``).
INTENT_VECTOR = 1007
#: RAS <-> LPS: negate the first two physical axes (its own inverse).
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def _as_numpy_field(disp) -> np.ndarray:
    """Accept a ``(3, D, H, W)`` or ``(1, 3, D, H, W)`` array or tensor; return float32 numpy."""
    if hasattr(disp, "detach"):  # torch tensor, without importing torch here
        disp = disp.detach().cpu().numpy()
    disp = np.asarray(disp)
    if disp.ndim == 5 and disp.shape[0] == 1:
        disp = disp[0]
    if disp.ndim != 4 or disp.shape[0] != 3:
        raise ValueError(f"field must have shape (3, D, H, W), got {disp.shape}")
    return disp.astype(np.float32, copy=False)


def _as_affine(affine) -> np.ndarray:
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got {affine.shape}")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ValueError("affine is singular")
    return affine


def voxel_to_lps_mm(disp, affine) -> np.ndarray:
    """Voxel field ``(3, D, H, W)`` -> LPS millimetre vectors ``(D, H, W, 3)`` float32, in
    Fortran order (the order NIfTI stores it, so writing it copies nothing more)."""
    disp = _as_numpy_field(disp)
    m = RAS_TO_LPS @ _as_affine(affine)[:3, :3]
    # one output component at a time, in float32: no float64 copies of a field that
    # holds 100 MB at 1 mm (the matrix in float64, each product rounded once); each
    # component is transposed into the Fortran-ordered result as it is stored
    out = np.empty(disp.shape[1:] + (3,), np.float32, order="F")
    for i in range(3):
        acc = np.zeros(disp.shape[1:], np.float64 if disp.dtype == np.float64 else np.float32)
        for j in range(3):
            if m[i, j] != 0.0:
                acc += m[i, j] * disp[j]
        out[..., i] = acc
    return out


def lps_mm_to_voxel(vectors, affine) -> np.ndarray:
    """LPS millimetre vectors ``(D, H, W, 3)`` -> voxel field ``(3, D, H, W)``."""
    m = np.linalg.inv(RAS_TO_LPS @ _as_affine(affine)[:3, :3])
    return np.einsum("ij,xyzj->ixyz", m, np.asarray(vectors, dtype=np.float64)).astype(np.float32)


def save_field_itk(path, disp, affine, description: str | None = None) -> Path:
    """Write a voxel pull field as an ITK/ANTs displacement-field NIfTI.

    Args:
        path: ``.nii`` or ``.nii.gz``.
        disp: ``(3, D, H, W)`` (or ``(1, 3, D, H, W)``) voxel field, array or tensor.
        affine: the fixed image's voxel->RAS affine ``(4, 4)``.
        description: text for the header's ``descrip`` field (NIfTI-1 keeps 79 bytes of
            it: longer text is cut), e.g. which model made the field
            (:func:`ddmr_core.model.zoo.field_description`).

    Returns:
        The path written. The file is ``(D, H, W, 1, 3)`` float32, LPS millimetres,
        intent 1007, ``affine`` as sform and qform (codes 1, scanner).
    """
    path = Path(path)
    if not (path.name.endswith(".nii") or path.name.endswith(".nii.gz")):
        raise ValueError(f"field path {str(path)!r} must end with .nii or .nii.gz")
    affine = _as_affine(affine)
    vec = voxel_to_lps_mm(disp, affine)[:, :, :, None, :]  # (X, Y, Z, 1, 3)
    img = nib.Nifti1Image(vec, affine)
    hdr = img.header
    hdr.set_intent(INTENT_VECTOR, name="DISPLACEMENT")
    hdr.set_data_dtype(np.float32)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    # zooms of the time and vector axes: 1 (nibabel would otherwise leave them as set)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    hdr.set_zooms(tuple(zooms) + (1.0, 1.0))
    hdr.set_xyzt_units("mm", "sec")
    if description:
        hdr["descrip"] = description.encode("ascii", "replace")[:79]
    return write_nifti(img, path)


def load_field_itk(path):
    """Read an ITK/ANTs displacement-field NIfTI back to the toolkit's convention.

    Accepts ``(X, Y, Z, 1, 3)`` and ``(X, Y, Z, 3)`` layouts with LPS millimetre vectors
    (what :func:`save_field_itk`, ANTs and ITK write).

    Returns:
        ``(disp, affine)``: ``(3, X, Y, Z)`` float32 voxel field and the ``(4, 4)``
        voxel->RAS affine of its grid.

    Raises:
        DataError: missing/unreadable file or not a 3-D vector field.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"field file {str(path)!r} not found")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float64)
    except Exception as exc:
        raise DataError(f"field file {str(path)!r} cannot be read as NIfTI: {exc}") from exc
    if data.ndim == 5 and data.shape[3] == 1 and data.shape[4] == 3:
        data = data[:, :, :, 0, :]
    elif not (data.ndim == 4 and data.shape[3] == 3):
        raise DataError(
            f"field file {str(path)!r} has shape {data.shape}; expected (X, Y, Z, 1, 3) vectors"
        )
    affine = np.asarray(img.affine, dtype=np.float64)
    return lps_mm_to_voxel(data, affine), affine


def save_field_npz(path, disp, spacing, affine) -> Path:
    """Write ``disp`` (``(3, D, H, W)`` voxels), ``spacing`` (3,) mm and ``affine`` (4, 4)
    to a compressed ``.npz``, atomically."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"field path {str(path)!r} must end with .npz")
    disp = _as_numpy_field(disp)
    spacing = np.asarray(spacing, dtype=np.float32).reshape(3)
    affine = _as_affine(affine)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, disp=disp, spacing=spacing, affine=affine)
    return path


def load_field_npz(path):
    """Read a field written by :func:`save_field_npz`.

    Returns:
        ``(disp, spacing, affine)``: ``(3, D, H, W)`` float32 voxels, ``(3,)`` float32 mm,
        ``(4, 4)`` float64.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"field file {str(path)!r} not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            disp, spacing, affine = z["disp"], z["spacing"], z["affine"]
    except Exception as exc:
        raise DataError(f"field file {str(path)!r} cannot be read as a ddmr .npz field: {exc}") from exc
    if disp.ndim != 4 or disp.shape[0] != 3:
        raise DataError(f"field file {str(path)!r}: 'disp' has shape {disp.shape}, expected (3, D, H, W)")
    return disp.astype(np.float32), spacing.astype(np.float32), affine.astype(np.float64)


def load_field(path):
    """Read a field file of either kind, by its name: ``.npz`` (:func:`load_field_npz`) or
    ITK/ANTs NIfTI (:func:`load_field_itk`).

    Returns:
        ``(disp, affine)``: ``(3, D, H, W)`` float32 voxel pull field and the ``(4, 4)``
        voxel->RAS affine of its (fixed) grid.

    Raises:
        DataError: missing/unreadable file, a name that is neither ``.npz`` nor
            ``.nii``/``.nii.gz``, not a 3-D vector field, or an invalid affine.
    """
    name = str(path).lower()
    if name.endswith(".npz"):
        disp, _, affine = load_field_npz(path)
    elif name.endswith((".nii", ".nii.gz")):
        disp, affine = load_field_itk(path)
    else:
        raise DataError(f"field file {str(path)!r}: expected a .nii, .nii.gz (ITK/ANTs) or .npz (ddmr) field")
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise DataError(f"field file {str(path)!r} has a singular or invalid affine")
    if not np.all(np.isfinite(disp)):
        raise DataError(f"field file {str(path)!r} contains NaN or infinite displacements")
    if min(disp.shape[1:]) < 2:
        raise DataError(f"field file {str(path)!r} has a grid of shape {tuple(disp.shape[1:])}: a 3-D grid is needed")
    return disp, affine
