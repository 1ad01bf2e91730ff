"""One ddmr process at a time per output folder.

Two ``ddmr train`` runs on one ``--out`` would both write ``last.pt`` and ``best.pt``
(the first finished run silently replaced, its resume broken); two ``build-testset``
runs would both pass the ``--overwrite`` check. :func:`output_lock` takes an exclusive
``flock`` on a lock file beside the output folder, ``.NAME.ddmr-lock`` in its parent
(beside, because ``register``, ``evaluate`` and ``build-testset`` replace the folder as a
whole), holding the owner's process id, host, command and start time, so the second
process stops at once with one line naming the first. The kernel drops the lock when
its process dies (also SIGKILL), so a crash never leaves a stale lock; the file is
removed when the lock is released.

Where the output's parent does not exist yet, the lock is taken in the first existing
folder above it, under a name made from the rest of the path. (Locks over network file
systems are only as good as their ``flock``.)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from pathlib import Path
from typing import Iterator

from ..errors import DdmrError


class LockedError(DdmrError):
    """Another ddmr process is writing the same output folder."""


def lock_path(out: str | Path) -> Path:
    """The lock file of output folder ``out`` (see the module docstring)."""
    out = Path(os.path.abspath(out))
    parent, rest = out.parent, [out.name]
    while not parent.is_dir() and parent != parent.parent:
        rest.insert(0, parent.name)
        parent = parent.parent
    return parent / (".%s.ddmr-lock" % "__".join(rest))


def _holder(path: Path) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        text = ""
    return text[:300] or "another ddmr process"


@contextlib.contextmanager
def output_lock(out: str | Path, command: str, option: str = "--out") -> Iterator[Path | None]:
    """Hold the lock of output folder ``out`` for the block; yields the lock file (None
    where none can be made, e.g. a read-only parent: the command's own output checks
    then report the folder).

    Raises:
        LockedError: another live process holds it, naming that process.
    """
    path = lock_path(out)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:
            fd = None
            break
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise LockedError(f"{option} {str(out)!r} is being written by {_holder(path)} (lock {str(path)!r}); "
                              "wait for it to finish or choose another folder") from None
        try:  # the file may have been removed (and re-made) by its previous holder meanwhile
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except OSError:
            same = False
        if same:
            break
        os.close(fd)
    if fd is None:
        yield None
        return
    try:
        os.ftruncate(fd, 0)
        os.write(fd, (f"`ddmr {command}` (pid {os.getpid()} on {socket.gethostname()}, since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')})").encode())
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)  # closing releases the lock
