"""Checkpoints: atomic writes, safe reads, and rebuilding a model from one.

A checkpoint is a dict saved with ``torch.save``:

* ``format`` = ``"ddmr-checkpoint"``, ``format_version``, ``ddmr_version``;
* ``model``: ``RegistrationModel.state_dict()`` (backbone, loss-weighting parameters);
* ``gin_config``: the model's part of the operative gin config
  (:func:`ddmr_core.config.model_config.model_config_text`: no data, augmentation or training
  bindings, no imports or includes), enough to rebuild the model;
* ``input_size``: the network grid ``[D, H, W]``; ``labels``: foreground label values;
* ``preprocess``: the preprocessing applied to inputs (dict, see ``ddmr_core.data.preprocess``);
* the trainer's ``optimizer``, ``scheduler``, ``counters``, validation ``history`` and
  ``rng`` states (:func:`training_state`, read back by :func:`load_training_state`).

Only tensors, numbers, strings, lists and dicts are stored (:func:`plain`), so it loads
with ``torch.load(weights_only=True)``.

Models are named by a checkpoint path or by a name registered through the ``ddmr_models``
plugin hook (``brain-mr``): :func:`resolve_model` turns either into what
:func:`load_checkpoint` reads.
"""

from __future__ import annotations

import random
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from .checkpoint_checks import check_card, check_metadata, verify_archive
from ..errors import CheckpointError
from ..data.files import atomic_path

FORMAT = "ddmr-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` atomically (:func:`ddmr_core.data.files.atomic_path`: a temporary file in
    the same folder, flushed to disk, then renamed; mode ``0o666 & ~umask``).

    A crash mid-write leaves the previous checkpoint intact, and the next save of the
    same name in that folder removes the temporary file a killed process left."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "ddmr_version": __version__}
    payload.update(state)
    with atomic_path(path, fsync=True) as tmp, open(tmp, "wb") as fh:
        torch.save(payload, fh)
    return path


def _is_stream(source) -> bool:
    return hasattr(source, "read") and not isinstance(source, (str, Path))


def describe(source) -> str:
    """How messages name a checkpoint: its path, or an open file's name."""
    if _is_stream(source):
        return str(getattr(source, "name", None) or "<checkpoint stream>")
    return str(source)


def resolve_model(spec, registry=None):
    """What ``--model SPEC`` names: a checkpoint file or a registered model release.

    A path to an existing file wins; otherwise ``spec``, ``NAME`` or ``NAME@VERSION``, is
    looked up among the models of the ``ddmr_models`` plugin hook
    (:func:`ddmr_core.model.zoo.lookup`: the newest release, or the version named), its weight
    file is checked against the sha256 its plugin recorded (:func:`ddmr_core.model.zoo.verify`)
    and its checkpoint (a path, or anything ``torch.load`` accepts) is returned. Paths (and
    already open files) are returned as they are, so :func:`load_checkpoint` reports a
    missing file.

    Args:
        spec: a path (``str`` or :class:`~pathlib.Path`), a model reference, or an open file.
        registry: a :class:`~ddmr_core.plugins.registry.Registry` (default: the installed plugins).

    Raises:
        UnknownNameError: ``spec`` is neither a file nor a registered model name, or names
            a version that is not shipped (the message lists what is).
        PluginError: the model's factory fails, or names a file that does not exist.
        ddmr_core.model.zoo.IntegrityError: the weight file does not match its recorded sha256.
    """
    from . import zoo

    release = zoo.lookup(spec, registry)
    if release is None:  # a checkpoint file (or a file name): not a model reference
        return spec if (_is_stream(spec) or isinstance(spec, Path) or Path(str(spec)).is_file()) else Path(str(spec))
    return zoo.verify(release).source


def load_checkpoint(path, map_location="cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``.

    Args:
        path: a file path, or an open binary file (what a ``ddmr_models`` factory may give).

    The zip archive is verified first (:func:`ddmr_core.model.checkpoint_checks.verify_archive`:
    every member's CRC), so a corrupted file is refused rather than loaded with damaged
    weights.

    Raises:
        CheckpointError: missing file, unreadable/corrupt file, or not a ddmr checkpoint.
    """
    stream = _is_stream(path)
    if not stream:
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"checkpoint {str(path)!r} not found")
    verify_archive(path, describe(path))  # torch.load does not check the members' CRC
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pickle-protocol chatter on non-checkpoints
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        # torch's own text suggests weights_only=False, which ddmr never does: a ddmr
        # checkpoint holds only tensors and plain values, so this file is something else.
        if isinstance(exc, EOFError):
            why = "empty or truncated file"
        elif "Weights only load failed" in str(exc):
            why = "not a ddmr checkpoint: it holds Python objects beyond tensors and plain values"
            if not stream and not zipfile.is_zipfile(path):
                why = "not a PyTorch checkpoint, or corrupt or truncated"
        else:
            why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'unreadable'}"
        raise CheckpointError(f"checkpoint {describe(path)!r} cannot be read ({why})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{describe(path)!r} is not a ddmr checkpoint")
    for key in ("model", "gin_config"):
        if key not in ckpt:
            raise CheckpointError(f"checkpoint {describe(path)!r} lacks {key!r}")
    return ckpt


def check_finite_weights(state: Any, path: str | Path) -> None:
    """Raise :class:`CheckpointError` if a floating-point tensor of ``state`` (a state
    dict) holds NaN or infinite values: such a model predicts NaN fields."""
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {str(path)!r}: 'model' is not a state dict")
    for name, t in state.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            n = int((~torch.isfinite(t)).sum())
            raise CheckpointError(
                f"checkpoint {str(path)!r} has non-finite weights ({n} NaN or infinite values in {name!r}); "
                "it cannot be used (a training run that diverged?)")


def load_model(path, device="cpu", registry=None):
    """Rebuild the :class:`RegistrationModel` saved in a checkpoint and load its weights.

    ``path``: a checkpoint file (or an open one), or a registered model name
    (:func:`resolve_model`).

    Refuses non-finite weights, then parses the checkpoint's gin config safely
    (:func:`ddmr_core.config.model_config.parse_checkpoint_config`: bindings only, no ``import`` or
    ``include``, only model components; it replaces the current config), builds
    ``ddmr.build_model()`` and loads the state dict strictly.

    Returns:
        ``(model, ckpt)`` with the model in eval mode on ``device``.
    """
    from ..config.model_config import parse_checkpoint_config
    from ..errors import DdmrError
    from .build import build_model

    path = resolve_model(path, registry)
    ckpt = load_checkpoint(path)
    check_metadata(ckpt, describe(path))  # sizes, labels, recipe: bounded before any use
    check_finite_weights(ckpt["model"], describe(path))
    try:
        # an untrusted file: values only, no import/include, nothing but model components
        parse_checkpoint_config(ckpt["gin_config"], f"checkpoint {describe(path)!r}", registry=registry)
    except DdmrError as exc:
        raise CheckpointError(str(exc)) from exc
    _check_shapes_before_building(ckpt["model"], describe(path))
    try:
        model = build_model()
    except (DdmrError, TypeError, ValueError) as exc:  # gin appends "In call to ..." lines
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {describe(path)!r}: its config does not build a model: {first}") from exc
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(
            f"checkpoint {describe(path)!r} does not match the model its config builds "
            f"(different architecture?): {first}"
        ) from exc
    return model.to(device).eval(), ckpt


def _check_shapes_before_building(state: dict, name: str) -> None:
    """Build the model of the current config on the ``meta`` device (no memory) and
    compare its parameter names and shapes with ``state``: a crafted config asking for a
    huge network is refused before anything is allocated. Models that cannot be built on
    ``meta`` are left to the strict ``load_state_dict`` after the real build."""
    from .build import build_model

    try:
        with torch.device("meta"):
            probe = build_model().state_dict()
    except Exception:  # not buildable on meta (or a config error the real build reports)
        return
    missing = sorted(set(probe) - set(state))
    unexpected = sorted(set(state) - set(probe))
    shapes = [k for k in probe if k in state and tuple(probe[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        first = (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}" if unexpected
                 else f"{shapes[0]!r}: {tuple(state[shapes[0]].shape)} in the file, {tuple(probe[shapes[0]].shape)} built")
        raise CheckpointError(f"checkpoint {name!r} does not match the model its config builds "
                              f"(different architecture?): {first}")


#: what a shipped model keeps of a training checkpoint (:func:`export_model`)
EXPORTED_KEYS = ("model", "gin_config", "input_size", "labels", "preprocess", "history")


def export_model(source, dest: str | Path, card: dict | None = None, registry=None) -> Path:
    """Write the model of checkpoint ``source`` (a path or a registered name) to ``dest``
    as a checkpoint for inference only: weights, config, grid, labels, preprocessing and
    validation history, without the optimiser, scheduler and RNG states (for the light
    U-Net about a third of a training checkpoint). ``card`` (plain values) describes the
    model: data, training command, budget, measured figures; it is stored as ``card``.

    The source is checked as :func:`load_model` checks it (archive, metadata bounds,
    finite weights, a config that builds the model its weights fit), and what is to be
    written is read back in memory first, so a shipped model always loads (nothing is
    written otherwise).
    """
    if card is not None:
        check_card(card, "--card")
    _, ckpt = load_model(source, registry=registry)  # refuses anything that would not load
    from ..config.model_config import model_config_text

    state = {k: ckpt[k] for k in EXPORTED_KEYS if k in ckpt}
    state["gin_config"] = model_config_text(ckpt["gin_config"], registry)  # older checkpoints carry all
    if card is not None:
        state["card"] = plain(card)
    _check_reloads(state, str(dest))
    return save_checkpoint(dest, state)


def _check_reloads(state: dict, name: str) -> None:
    """Serialise ``state`` in memory and read it back as :func:`load_model` reads a file
    (``weights_only``, metadata bounds): what is about to be written will load."""
    import io

    buf = io.BytesIO()
    try:
        torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, "ddmr_version": __version__, **state}, buf)
        buf.seek(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            back = torch.load(buf, map_location="cpu", weights_only=True)
    except Exception as exc:  # e.g. a value weights_only refuses
        raise CheckpointError(f"{name!r} would not load ({type(exc).__name__}); nothing was written") from exc
    check_metadata(back, name)


# ----------------------------------------------------------- training runs
def plain(obj):
    """``obj`` with NumPy values as plain Python ones, tuples as lists and keys as strings:
    what ``weights_only`` loading accepts besides tensors."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def rng_state() -> dict:
    """The torch, NumPy, Python (and CUDA) random states, as plain values and tensors."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` saved (CUDA states where CUDA is available)."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]][: torch.cuda.device_count()])


def training_state(model, optimizer, scheduler, counters: dict, history: list, input_size, labels,
                   preprocess=None) -> dict[str, Any]:
    """The checkpoint dict of a training run (keys: see the module docstring), with the
    current gin config and RNG states; :func:`save_checkpoint` adds the format keys."""
    from ..config.model_config import model_config_text
    from ..config.parsing import config_text

    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "counters": dict(counters),
        "history": plain(history),
        "rng": rng_state(),
        "gin_config": model_config_text(config_text()),  # the model's bindings only
        "input_size": list(input_size) if input_size else None,
        "labels": list(labels),
    }
    if preprocess is not None:
        state["preprocess"] = plain(preprocess)
    return state


def load_training_state(path, model, optimizer, scheduler) -> dict[str, Any]:
    """Resume a run: load ``path``'s weights (strictly), optimiser and scheduler states
    into the given objects and restore its RNG states. Returns the checkpoint (its
    ``counters`` and ``history`` are the caller's).

    Raises:
        CheckpointError: unreadable, not resumable (no optimiser, scheduler or counters),
            or made by another architecture than ``model``'s.
    """
    ckpt = load_checkpoint(path)
    for key in ("optimizer", "scheduler", "counters"):
        if key not in ckpt:
            raise CheckpointError(f"checkpoint {str(path)!r} lacks {key!r}; it cannot be resumed")
    groups = len(ckpt["optimizer"].get("param_groups", ())) if isinstance(ckpt["optimizer"], dict) else None
    if groups is not None and groups != len(optimizer.param_groups):
        raise CheckpointError(
            f"checkpoint {str(path)!r} was trained with {groups} optimiser parameter group(s), the config "
            f"builds {len(optimizer.param_groups)}; ddmr.Trainer.weighting_lr must be set as it was for the run")
    try:
        model.load_state_dict(ckpt["model"], strict=True)
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
    except (RuntimeError, ValueError, KeyError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        first = " ".join(lines[:2])[:400]
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not match the model the config builds "
            f"(different architecture?): {first}") from exc
    if "rng" in ckpt:
        set_rng_state(ckpt["rng"])
    return ckpt
