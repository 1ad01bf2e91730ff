"""The file-transaction layer: every output file and folder is written under a temporary
name beside its destination and renamed into place only once complete (files:
:func:`atomic_path`; folders: :func:`atomic_dir`, swapped in whole), with the usual modes
(``0o666``/``0o777 & ~umask``); outputs are checked before any work
(:func:`check_output_folder`, :func:`check_output_file`).

Temporary names carry the writing process, ``.NAME.ddmr-<host>-<pid>.<random>.tmp...``, so
that the next write of the same NAME in that folder removes what a killed process left
behind (:func:`remove_stale_temporaries`) without touching a live writer's files.
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

from ..errors import DataError

#: the suffixes of a NIfTI file (what an output file of an image must end with)
NIFTI_SUFFIXES = (".nii", ".nii.gz")


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
