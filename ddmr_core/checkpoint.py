"""Checkpoints: atomic writes, safe reads, and rebuilding a model from one.

A checkpoint is a dict saved with ``torch.save``:

* ``format`` = ``"ddmr-checkpoint"``, ``format_version``, ``ddmr_version``;
* ``model``: ``RegistrationModel.state_dict()`` (backbone, loss-weighting parameters);
* ``gin_config``: the operative gin config text, enough to rebuild the model;
* ``input_size``: the network grid ``[D, H, W]``; ``labels``: foreground label values;
* ``preprocess``: the preprocessing applied to inputs (dict, see ``ddmr_core.preprocess``);
* the trainer's ``optimizer``, ``scheduler``, ``counters`` and ``rng`` states.

Only tensors, numbers, strings, lists and dicts are stored, so it loads with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .errors import CheckpointError

FORMAT = "ddmr-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` atomically: a temporary file in the same folder, then rename.

    A crash mid-write leaves the previous checkpoint intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "ddmr_version": __version__}
    payload.update(state)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location="cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``.

    Raises:
        CheckpointError: missing file, unreadable/corrupt file, or not a ddmr checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} not found")
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
            if not zipfile.is_zipfile(path):
                why = "not a PyTorch checkpoint, or corrupt or truncated"
        else:
            why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'unreadable'}"
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read ({why})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a ddmr checkpoint")
    for key in ("model", "gin_config"):
        if key not in ckpt:
            raise CheckpointError(f"checkpoint {str(path)!r} lacks {key!r}")
    return ckpt


def load_model(path: str | Path, device="cpu", registry=None):
    """Rebuild the :class:`RegistrationModel` saved in a checkpoint and load its weights.

    Parses the checkpoint's gin config (replacing the current one), builds
    ``ddmr.build_model()`` and loads the state dict strictly.

    Returns:
        ``(model, ckpt)`` with the model in eval mode on ``device``.
    """
    from .config import parse_config
    from .experiment import build_model

    ckpt = load_checkpoint(path)
    try:
        parse_config(text=ckpt["gin_config"], registry=registry)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {str(path)!r}: its config does not parse: {exc}") from exc
    model = build_model()
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not match the model its config builds "
            f"(different architecture?): {first}"
        ) from exc
    return model.to(device).eval(), ckpt
