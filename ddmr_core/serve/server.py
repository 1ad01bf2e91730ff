"""What ``ddmr serve`` does, without the web framework: models, uploads, registrations.

:class:`Server` loads every model once (:class:`ddmr_core.registration.register.Registrar`), registers
the example pair (:mod:`ddmr_core.serve.example`) or two uploaded NIfTI files with one of
them, and keeps each result (:class:`~ddmr_core.serve.view.ResultView`) in its
:class:`~ddmr_core.serve.store.ResultStore` under a random id. The Flask application
(:mod:`ddmr_core.serve.app`) only turns HTTP requests into these calls.

Uploads are saved into the request's own folder under fixed names (``fixed.nii``,
``moving.nii.gz``, ...; ``.nii.gz`` when the upload starts with the gzip magic bytes, so
that nibabel reads it as what it is), never under the name the client sent, and read by
the same code as ``ddmr register`` reads files; they are deleted once the result is in
memory. Bad input (not NIfTI, not 3-D, a label map on another grid, a constant image,
too many voxels, ...) raises :class:`ddmr_core.errors.DataError` with the client's file
names in the message instead of the server's paths.

One registration runs at a time per model (the network and its buffers are shared);
slices and downloads of finished results are served concurrently.
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError, DdmrError
from .store import ResultStore
from .view import ResultView

#: upload fields: role -> what it is (in messages)
ROLES = {"fixed": "fixed image", "moving": "moving image", "fixed_seg": "fixed label map",
         "moving_seg": "moving label map"}
#: largest volume accepted, in voxels (a NIfTI header is checked before its data is read)
MAX_VOXELS = 512 ** 3
#: output grids: the fixed image's own grid, or the model's working grid (docs/register.md)
GRIDS = ("fixed", "working")

#: models load (and the example pair builds) through gin's global config: one at a time
_gin_lock = threading.Lock()


@dataclass
class Model:
    key: str  # what the page sends back to choose it
    label: str  # what the page shows
    registrar: object
    lock: threading.Lock


def _model_label(spec: str) -> str:
    """A shipped model's name as it is; a checkpoint file by its file name only (the
    page never shows the server's folders)."""
    return Path(spec).name if Path(spec).is_file() else str(spec)


def client_name(filename: str | None, fallback: str) -> str:
    """A client's file name fit for messages: its last path component, printable
    characters, at most 80 of them (it is only ever shown, never used as a path)."""
    name = re.split(r"[\\/]", filename or "")[-1]
    name = "".join(c for c in name if c.isprintable())[:80].strip()
    return name or fallback


class Server:
    """Models loaded once, and the results of the registrations run with them.

    Args:
        models: shipped model names or checkpoint paths (``ddmr serve --model``); the
            first is the default.
        device: torch device of the networks.
        store: where results are kept (default: a new :class:`ResultStore`).
        max_voxels: the largest uploaded volume accepted.

    Raises:
        DdmrError: a model that does not load (a missing checkpoint, an unknown name...).
    """

    def __init__(self, models=("brain-mr",), device="cpu", store: ResultStore | None = None,
                 max_voxels: int = MAX_VOXELS):
        from ..registration.register import Registrar

        if not models:
            raise DdmrError("ddmr serve needs at least one model")
        self.models: dict[str, Model] = {}
        for spec in models:
            with _gin_lock:
                reg = Registrar(spec, device=device)
            label = key = _model_label(str(spec))
            n = 2
            while key in self.models:  # two checkpoints of one file name
                key = f"{label} ({n})"
                n += 1
            self.models[key] = Model(key, key, reg, threading.Lock())
        self.default_model = next(iter(self.models))
        self.store = store if store is not None else ResultStore()  # an empty store is falsy
        self.max_voxels = int(max_voxels)

    def model_list(self) -> list[dict]:
        return [{"key": m.key, "label": m.label, "default": m.key == self.default_model,
                 "grid": list(m.registrar.input_size)} for m in self.models.values()]

    def example(self):
        """The example pair (built on the first call, then kept)."""
        from .example import example_pair

        with _gin_lock:
            return example_pair()

    def close(self) -> None:
        self.store.close()

    # ------------------------------------------------------------ register
    def register(self, source: str, model: str | None = None, grid: str = "fixed", uploads: dict | None = None):
        """Register the example pair (``source="example"``) or ``uploads`` (``"upload"``)
        with the model ``model`` (a key of :attr:`models`; default the first), output on
        the fixed image's own grid (``grid="fixed"``) or the model's working grid.

        ``uploads``: role (:data:`ROLES`) -> an object with ``filename`` and ``save(path)``
        (werkzeug's ``FileStorage``); ``fixed`` and ``moving`` are needed.

        Returns ``(id, ResultView)``; the view is also kept in :attr:`store`.

        Raises:
            DataError: any bad input, with a message for the client.
        """
        if source not in ("example", "upload"):
            raise DataError(f"unknown source {source!r}: use 'example' or 'upload'")
        if grid not in GRIDS:
            raise DataError(f"unknown output grid {grid!r}: use one of {', '.join(GRIDS)}")
        entry = self.models.get(model or self.default_model)
        if entry is None:
            raise DataError(f"unknown model {model!r}; available: {', '.join(self.models)}")
        t0 = time.perf_counter()
        rid, folder = self.store.new_folder()
        try:
            if source == "example":
                pair = self.example()
                args = (pair.fixed, pair.moving, pair.fixed_seg, pair.moving_seg)
                kwargs = {"fixed_affine": pair.affine, "moving_affine": pair.affine}
                names, label_names = {}, pair.label_names
                inputs = {"fixed": "example: MNI template", "moving": "example: deformed template"}
                description = pair.description
            else:
                paths, names = self._save_uploads(uploads or {}, folder / "inputs")
                args = tuple(None if paths.get(r) is None else str(paths[r]) for r in ROLES)
                kwargs, label_names, description = {}, {}, ""
                inputs = {r: names[str(paths[r])] for r in ROLES if r in paths}
            try:
                with entry.lock:
                    result = entry.registrar.register(*args, original_resolution=(grid == "fixed"), **kwargs)
            except DdmrError as exc:
                raise DataError(self._scrub(str(exc), names, folder)) from exc
            finally:
                self.discard_inputs(folder)
            info = {"id": rid, "source": source, "model": entry.label, "grid": grid, "inputs": inputs,
                    "description": description}
            view = ResultView(result, folder, label_names, info)
            view.info["server_s"] = time.perf_counter() - t0
        except BaseException:
            self.store.discard_folder(folder)
            raise
        self.store.put(rid, folder, view)
        return rid, view

    @staticmethod
    def discard_inputs(folder: Path) -> None:
        ResultStore.discard_folder(folder / "inputs")

    @staticmethod
    def _scrub(message: str, names: dict, folder: Path) -> str:
        """A library message with each saved upload's path replaced by the client's name
        for it, and no other trace of the server's folders."""
        for path, name in sorted(names.items(), key=lambda kv: -len(kv[0])):
            message = message.replace(path, name)
        return message.replace(str(folder) + os.sep, "").replace(str(folder), "")

    def _save_uploads(self, uploads: dict, inputs: Path) -> tuple[dict, dict]:
        """Save each upload under its role's fixed name; ``(role -> path, path -> client name)``."""
        import nibabel as nib

        for role in ("fixed", "moving"):
            if uploads.get(role) is None:
                raise DataError(f"no {ROLES[role]} uploaded: a fixed and a moving NIfTI file are needed")
        inputs.mkdir(mode=0o700)
        paths, names = {}, {}
        for role, what in ROLES.items():
            upload = uploads.get(role)
            if upload is None:
                continue
            name = client_name(getattr(upload, "filename", None), what)
            stream = upload.stream
            head = stream.read(2)
            stream.seek(0)
            if not head:
                raise DataError(f"the {what} upload {name!r} is empty")
            path = inputs / (role + (".nii.gz" if head == b"\x1f\x8b" else ".nii"))
            upload.save(str(path))
            paths[role], names[str(path)] = path, name
            # the header alone, before any voxel is read: refuse what would not fit in memory
            try:
                shape = nib.load(str(path)).shape
            except Exception:  # not NIfTI: the reader below says so in its own words
                continue
            voxels = 1
            for n in shape:
                voxels *= int(n)
            if voxels > self.max_voxels:
                raise DataError(f"the {what} {name!r} has {voxels} voxels {tuple(shape)}; this server accepts "
                                f"at most {self.max_voxels}")
        return paths, names
