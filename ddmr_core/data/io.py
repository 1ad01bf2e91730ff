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
import ctypes
import errno
import functools
import glob
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..errors import DataError

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


def _read_nifti(path: Path, what: str):
    """``(data, affine)`` of a NIfTI file as nibabel reads it; ``what`` names it in errors."""
    import nibabel as nib

    if not path.exists():
        raise DataError(f"{what} not found")
    if not path.is_file():
        raise DataError(f"{what} is not a file")
    try:
        img = nib.load(str(path))
        return np.asarray(img.dataobj), img.affine
    except Exception as exc:  # nibabel raises many types for corrupt files
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{what} cannot be read as NIfTI: {first}") from exc


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


# ------------------------------------------------------------------ writing
#
# Every output goes through a temporary name next to its destination and is renamed into
# place only once complete (files: :func:`atomic_path`; folders: :func:`atomic_dir`).
# Temporary names carry the writing process, ``.NAME.ddmr-<host>-<pid>.<random>.tmp...``,
# so that the next write of the same NAME in that folder removes what a killed process
# left behind (:func:`remove_stale_temporaries`) without touching a live writer's files.

_TEMP_RE = re.compile(r"\.ddmr-(?P<host>[A-Za-z0-9_-]*)-(?P<pid>\d+)\.[^.]+\.(?:tmp|old)")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40]


def _temp_prefix(name: str) -> str:
    return f".{name}.ddmr-{_host()}-{os.getpid()}."


def current_umask() -> int:
    """The process umask (read without changing it for good)."""
    old = os.umask(0o022)
    os.umask(old)
    return old


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: alive
        return True
    return True


def remove_stale_temporaries(folder: str | Path, name: str) -> list[Path]:
    """Remove the temporary files/folders that a killed ddmr process left for ``name``
    in ``folder`` (those of this host whose process is gone); returns what was removed."""
    folder = Path(folder)
    removed = []
    prefix = f".{name}."
    try:
        entries = [e for e in folder.iterdir() if e.name.startswith(prefix)]
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP_RE.match(entry.name[len(prefix) - 1:])
        if not m or m.group("host") != _host() or _pid_alive(int(m.group("pid"))):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
        except OSError:
            pass
    return removed


@contextlib.contextmanager
def atomic_path(path: str | Path, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (same suffix); rename it to ``path`` on success.

    On an exception the temporary file is removed, so no half-written file is ever left
    under the final name; temporary files of killed processes for the same name are
    removed first. The file gets the usual mode for new files (``0o666 & ~umask``).
    ``fsync``: flush the file to disk before the rename (checkpoints)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    name = path.name
    remove_stale_temporaries(path.parent, name)
    suffix = ".nii.gz" if name.endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(name), suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600 files
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where
    the system or file system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _restore_swapped_out(out_dir: Path) -> None:
    """Where a process was killed between the two renames of the fallback swap, put
    the previous folder back (the new one was never complete)."""
    if out_dir.exists():
        return
    prefix = f".{out_dir.name}."
    for entry in sorted(out_dir.parent.glob(f"{glob.escape(prefix)}ddmr-*.old")):
        m = _TEMP_RE.match(entry.name[len(prefix) - 1:])
        if m and m.group("host") == _host() and not _pid_alive(int(m.group("pid"))):
            os.rename(entry, out_dir)
            return


def _probe_writable(folder: Path, option: str, path: Path) -> None:
    """Raise :class:`DataError` unless something can be created in ``folder`` (a probe
    folder made and removed: as root, ``os.access`` says yes even to ``/proc``)."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".ddmr-probe.", dir=folder))
    except OSError as exc:
        raise DataError(f"{option} {str(path)!r}: cannot write in {str(folder)!r} "
                        f"({exc.strerror or type(exc).__name__})") from exc


def _first_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _path_errors(check):
    """Turn what the file system says about an unusable output path (a name too long,
    a symlink loop -- pathlib raises ``RuntimeError`` for those --, a permission refused)
    into the one-line :class:`DataError` of ``check(path, option, ...)``."""
    @functools.wraps(check)
    def checked(path, option: str = "--out", *args, **kwargs):
        try:
            return check(path, option, *args, **kwargs)
        except (OSError, RuntimeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).split(":")[0]
            shown = str(path) if len(str(path)) <= 200 else str(path)[:200] + "..."
            raise DataError(f"{option} {shown!r} cannot be used ({why})") from exc
    return checked


def _check_link(path: Path) -> None:
    """A symlink loop raises ``OSError`` (ELOOP) here, not later mid-write; a dangling
    link is replaced like a missing file."""
    if path.is_symlink():
        try:
            os.stat(path)
        except FileNotFoundError:
            pass


@_path_errors
def check_output_folder(path: str | Path, option: str = "--out", *, replace: bool = True,
                        replaceable: Callable[[Path], bool] | None = None, what: str = "ddmr") -> Path:
    """Check, before any work starts, that the folder ``path`` can be written.

    ``replace`` (what :func:`atomic_dir` does): ``path`` is written beside itself and
    swapped in, so its parent must be writable, and an existing ``path`` must be empty
    or hold only what this writer writes (``replaceable(path)``; otherwise nothing is
    deleted and this is an error). Without ``replace`` the files go into ``path``
    itself (e.g. a resumable cache), which must then be writable.

    Raises:
        DataError: one line naming ``option``, the folder and the problem.
    """
    path = Path(path)
    _check_link(path)
    if replace and path.parent.is_dir():  # what killed runs left beside ``path``
        _restore_swapped_out(path)  # killed in the middle of a fallback swap
        remove_stale_temporaries(path.parent, path.name)
    if path.exists() and not path.is_dir():
        raise DataError(f"{option} {str(path)!r} exists and is not a folder")
    if replace and path.is_dir() and path.resolve() in (Path.cwd().resolve(), *Path.cwd().resolve().parents):
        raise DataError(f"{option} {str(path)!r} is the current folder or one above it, which would be "
                        "replaced as a whole: give a sub-folder")
    anc = _first_existing(path if not replace else path.parent)
    if not anc.is_dir():
        raise DataError(f"{option} {str(path)!r}: {str(anc)!r} is a file, not a folder")
    if replace and path.is_dir() and any(path.iterdir()):
        if replaceable is None or not replaceable(path):
            raise DataError(
                f"{option} {str(path)!r} is a folder holding files that {what} did not write; "
                "it would be replaced as a whole: choose another folder or empty it")
    _probe_writable(anc, option, path)
    return path


@_path_errors
def check_output_file(path: str | Path, option: str = "--out", suffixes=NIFTI_SUFFIXES) -> Path:
    """Check, before any work starts, that the file ``path`` can be written (through
    :func:`atomic_path`, which replaces an existing file only once the new one is complete).

    Raises:
        DataError: one line naming ``option`` and the problem: a name without one of
            ``suffixes``, an existing folder, a parent that is a file, a folder that
            cannot be written.
    """
    path = Path(path)
    _check_link(path)
    if path.is_dir():
        raise DataError(f"{option} {str(path)!r} is a folder; give a file name")
    if suffixes and not str(path).lower().endswith(tuple(suffixes)):
        raise DataError(f"{option} {str(path)!r}: the file name must end with {' or '.join(suffixes)}")
    anc = _first_existing(path.parent)
    if not anc.is_dir():
        raise DataError(f"{option} {str(path)!r}: {str(anc)!r} is a file, not a folder")
    _probe_writable(anc, option, path)
    return path


@contextlib.contextmanager
def atomic_dir(out_dir: str | Path, option: str = "--out", replaceable: Callable[[Path], bool] | None = None,
               what: str = "ddmr") -> Iterator[Path]:
    """Yield a new, empty temporary folder beside ``out_dir``; on success it becomes
    ``out_dir`` as a whole, also when ``out_dir`` exists (the two are swapped in one
    step where the system allows it, see below), so files of an earlier run never survive.

    On an exception (also Ctrl-C and SIGTERM) the temporary folder is deleted and
    ``out_dir`` is left as it was; what a killed process left beside ``out_dir`` is
    removed by the next :func:`atomic_dir` of the same folder. An existing ``out_dir``
    must be empty or ``replaceable`` (see :func:`check_output_folder`). On Linux the swap
    is ``renameat2(RENAME_EXCHANGE)``, atomic; elsewhere the old folder is renamed aside
    and the new one renamed in, two renames in a row."""
    out_dir = Path(out_dir)
    if out_dir.is_symlink():
        out_dir = out_dir.resolve()  # replace the folder it points to, keep the link
    check_output_folder(out_dir, option, replace=True, replaceable=replaceable, what=what)
    out_dir = out_dir.absolute()
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        _restore_swapped_out(out_dir)
        remove_stale_temporaries(out_dir.parent, out_dir.name)
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(out_dir.name), suffix=".tmp", dir=out_dir.parent))
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it private
    except OSError as exc:
        raise DataError(f"{option} {str(out_dir)!r}: cannot create it "
                        f"({exc.strerror or type(exc).__name__})") from exc
    try:
        yield tmp
        if not out_dir.exists():
            os.rename(tmp, out_dir)
        elif not _exchange(tmp, out_dir):
            old = tmp.with_name(tmp.name[: -len(".tmp")] + ".old")
            os.rename(out_dir, old)
            os.rename(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        # after an exchange ``tmp`` holds the previous content: removed below
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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


def to_numpy(x) -> np.ndarray:
    """An array or tensor (any device) as a NumPy array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def save_image(path: str | Path, image, affine, dtype=np.float32) -> Path:
    """Write a 3-D image (``(D, H, W)`` or ``(1, D, H, W)``) atomically as NIfTI.

    The affine goes into both sform and qform (code 1, scanner)."""
    import nibabel as nib

    image, affine = _check_volume(to_numpy(image), to_numpy(affine), "image")
    img = nib.Nifti1Image(image.astype(dtype, copy=False), affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return Path(path)


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
