"""Input files read in the background while a command starts up.

A ``ddmr register`` process spends its first ~1.5 s importing torch, on one core: the
files it is about to read can be read and decompressed meanwhile on another.
:func:`prefetch` starts that (a daemon thread; ``.nii.gz`` files only, whose
decompression is most of a read), and the reader (:func:`ddmr_core.data.io.load_image`
and the like) takes the bytes with :func:`take` instead of reading the file again.

Nothing here decides what a read returns: a file that changed since it was prefetched
(size or modification time), or whose prefetch failed, is read again by the reader,
which reports any error itself. Each prefetched file is handed out once, then dropped.
No torch, nibabel or numpy here: this runs before they are imported.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

_lock = threading.Lock()
#: key (:func:`_key`) -> [event set when done, the decompressed bytes or None]
_pending: dict[tuple, list] = {}


def _key(path) -> tuple | None:
    """What identifies a file's content for :func:`take`: its resolved path, size and
    modification time (ns); None when it cannot be stat'ed."""
    try:
        p = Path(path).resolve()
        st = p.stat()
    except (OSError, ValueError):
        return None
    return (str(p), st.st_size, st.st_mtime_ns)


def _read_all(items: list) -> None:
    from isal import igzip

    for key, slot in items:
        try:
            slot[1] = igzip.decompress(Path(key[0]).read_bytes())  # ISA-L releases the GIL while it works
        except Exception:  # noqa: BLE001 - the reader reads the file again and says what is wrong
            slot[1] = None
        finally:
            slot[0].set()


def prefetch(paths) -> None:
    """Read and decompress the ``.nii.gz`` files among ``paths`` (None entries and other
    files are skipped) in a background thread, for :func:`take`."""
    items = []
    with _lock:
        for path in paths:
            if path is None or not str(path).lower().endswith(".nii.gz"):
                continue
            key = _key(path)
            if key is None or key in _pending or not os.path.isfile(key[0]):
                continue
            _pending[key] = slot = [threading.Event(), None]
            items.append((key, slot))
    if items:
        threading.Thread(target=_read_all, args=(items,), name="ddmr-prefetch", daemon=True).start()


def take(path) -> bytes | None:
    """The decompressed bytes of ``path`` if it was prefetched and has not changed since
    (waiting for its read to finish), else None (also on a second call)."""
    if not _pending:
        return None
    key = _key(path)
    with _lock:
        slot = _pending.pop(key, None) if key is not None else None
    if slot is None:
        return None
    slot[0].wait()
    return slot[1]


def discard() -> None:
    """Drop every prefetched file not taken (the thread finishes its current read): the
    command that prefetched them calls this when it ends, so that a caller running
    commands in-process (:func:`ddmr_core.cli.run`, tests) keeps no bytes of a failed run."""
    with _lock:
        _pending.clear()
