"""Per-request folders and the results kept between requests, keyed by random ids.

Every registration request gets a folder of its own under the server's temporary root
(``ddmr-serve-*`` in the system's temporary folder), named by a fresh random id
(:func:`secrets.token_urlsafe`, 128 bits): the uploads are saved there under fixed names,
and the result's downloads are written there later. Nothing a client sends is ever part
of a path: an id in a URL is only a key of :class:`ResultStore`, and looked up, never
joined to the root.

Results stay for ``ttl_s`` seconds after they were last used, and at most ``max_results``
of them (the least recently used goes first); a result that goes takes its folder with
it, and :meth:`ResultStore.close` removes the root. A request that fails removes its
folder at once (:meth:`ResultStore.discard_folder`).
"""

from __future__ import annotations

import re
import secrets
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path

#: what an id looks like (token_urlsafe(16): 22 characters of [A-Za-z0-9_-])
ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{22}")


class ResultStore:
    """A bounded, expiring map ``id -> (folder, value)`` (see the module docstring).

    Args:
        root: the folder that holds the per-request folders (default: a new temporary
            folder, removed by :meth:`close`).
        max_results: how many results are kept at most.
        ttl_s: seconds a result is kept after its last use.
    """

    def __init__(self, root: str | Path | None = None, max_results: int = 8, ttl_s: float = 1800.0):
        if max_results < 1 or ttl_s <= 0:
            raise ValueError(f"max_results must be >= 1 and ttl_s > 0, got {max_results} and {ttl_s}")
        self.own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="ddmr-serve-")) if root is None else Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_results = int(max_results)
        self.ttl_s = float(ttl_s)
        self._items: OrderedDict[str, tuple[Path, object, float]] = OrderedDict()
        self._lock = threading.Lock()

    def new_folder(self) -> tuple[str, Path]:
        """A fresh id and its empty folder (mode 0700) for one request."""
        while True:
            rid = secrets.token_urlsafe(16)
            folder = self.root / rid
            try:
                folder.mkdir(mode=0o700)
                return rid, folder
            except FileExistsError:  # pragma: no cover - 128 random bits
                continue

    @staticmethod
    def discard_folder(folder: Path) -> None:
        shutil.rmtree(folder, ignore_errors=True)

    def put(self, rid: str, folder: Path, value) -> None:
        """Keep ``value`` (and ``folder``) under ``rid``; evict expired and surplus results."""
        with self._lock:
            self._items[rid] = (folder, value, time.monotonic())
            self._items.move_to_end(rid)
            self._evict()

    def get(self, rid: str):
        """The value under ``rid``, or ``None`` (unknown, malformed or expired id)."""
        if not isinstance(rid, str) or not ID_PATTERN.fullmatch(rid):
            return None
        with self._lock:
            self._evict()
            item = self._items.get(rid)
            if item is None:
                return None
            self._items[rid] = (item[0], item[1], time.monotonic())
            self._items.move_to_end(rid)
            return item[1]

    def __len__(self) -> int:
        with self._lock:
            self._evict()
            return len(self._items)

    def _evict(self) -> None:
        now = time.monotonic()
        for rid in [r for r, (_, _, used) in self._items.items() if now - used > self.ttl_s]:
            self.discard_folder(self._items.pop(rid)[0])
        while len(self._items) > self.max_results:
            _, (folder, _, _) = self._items.popitem(last=False)
            self.discard_folder(folder)

    def close(self) -> None:
        """Forget every result and remove its folder (and the root, if the store made it)."""
        with self._lock:
            for folder, _, _ in self._items.values():
                self.discard_folder(folder)
            self._items.clear()
            if self.own_root:
                shutil.rmtree(self.root, ignore_errors=True)
