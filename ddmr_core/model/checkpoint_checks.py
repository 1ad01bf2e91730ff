"""Checks of a checkpoint (an untrusted file) before anything of it is used.

* :func:`verify_archive`: ``torch.save`` writes a zip archive, and ``torch.load`` does not
  check its members' CRC-32, so a checkpoint with flipped bytes loads silently with
  corrupted weights. Every member is read and checked (:meth:`zipfile.ZipFile.testzip`)
  before ``torch.load`` sees the file.
* :func:`check_metadata`: every field that sizes an allocation or a computation
  (``input_size``, ``labels``, ``preprocess``, the format version, the model card) is
  checked for type and bounds, so a crafted checkpoint can neither ask for terabytes nor
  feed the network an all-zero image through a NaN intensity window.

(The sha256 of shipped model files is the model registry's check, not this module's.)
"""

from __future__ import annotations

import math
import zipfile
import zlib
from typing import Any

from ..data.guards import MAX_SPACING_MM, MIN_SPACING_MM
from ..errors import CheckpointError

#: longest side of a network grid a checkpoint may ask for (the paper's is 128)
MAX_GRID_SIDE = 1024
#: most voxels of a network grid (512^3: 0.5 GiB a float32 channel)
MAX_GRID_VOXELS = 512 ** 3
#: label values are uint8 on disk (0 is the background)
MAX_LABEL = 255
#: largest crop margin, mm
MAX_CROP_MARGIN_MM = 1000.0
#: deepest nesting of lists and dicts in a model card
MAX_CARD_DEPTH = 32


def verify_archive(source, name: str) -> None:
    """Read every member of the zip archive ``source`` (a path or a seekable binary file)
    and check its CRC-32. A file that is not a zip archive is left to ``torch.load``
    (which names it not a checkpoint, or truncated).

    Raises:
        CheckpointError: a member fails its CRC check or cannot be decompressed (a
            corrupted file), naming ``name`` and the member.
    """
    stream = hasattr(source, "read")
    if stream:
        if not (hasattr(source, "seek") and getattr(source, "seekable", lambda: True)()):
            return
        start = source.tell()
    try:
        if not zipfile.is_zipfile(source):
            return
        if stream:
            source.seek(start)
        with zipfile.ZipFile(source) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError, OSError) as exc:
        raise CheckpointError(f"checkpoint {name!r} is corrupt: its archive cannot be read "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'unreadable'})") from None
    finally:
        if stream:
            source.seek(start)
    if bad is not None:
        raise CheckpointError(f"checkpoint {name!r} is corrupt: archive member {bad!r} fails its CRC check "
                              "(a damaged or incompletely copied file); it is not used")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _grid(value, what: str, name: str) -> None:
    if not isinstance(value, (list, tuple)) or len(value) != 3 or not all(_is_int(v) for v in value):
        raise CheckpointError(f"checkpoint {name!r}: {what} must be 3 whole numbers, got {_short(value)}")
    if not all(2 <= v <= MAX_GRID_SIDE for v in value):
        raise CheckpointError(f"checkpoint {name!r}: {what} {list(value)} is outside 2..{MAX_GRID_SIDE} per axis")
    if math.prod(value) > MAX_GRID_VOXELS:
        raise CheckpointError(f"checkpoint {name!r}: {what} {list(value)} has {math.prod(value)} voxels, more than "
                              f"{MAX_GRID_VOXELS} (512^3)")


def _labels(value, what: str, name: str) -> None:
    if not isinstance(value, (list, tuple)) or len(value) > MAX_LABEL or not all(_is_int(v) for v in value):
        raise CheckpointError(f"checkpoint {name!r}: {what} must be a list of at most {MAX_LABEL} whole numbers, "
                              f"got {_short(value)}")
    if not all(1 <= v <= MAX_LABEL for v in value) or len(set(value)) != len(value):
        raise CheckpointError(f"checkpoint {name!r}: {what} must be distinct values in 1..{MAX_LABEL}, "
                              f"got {_short(value)}")


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _pair(value, what: str, name: str, low=-math.inf, high=math.inf) -> None:
    if (not isinstance(value, (list, tuple)) or len(value) != 2 or not all(_is_number(v) for v in value)
            or not low <= value[0] < value[1] <= high):
        bounds = "" if low == -math.inf else f" within {low:g}..{high:g}"
        raise CheckpointError(f"checkpoint {name!r}: {what} must be two finite numbers lo < hi{bounds}, "
                              f"got {_short(value)}")


def check_preprocess(pre, name: str) -> None:
    """Bounds of a checkpoint's ``preprocess`` dict (see :class:`ddmr_core.data.preprocess.Preprocess`)."""
    if pre is None:
        return
    if not isinstance(pre, dict):
        raise CheckpointError(f"checkpoint {name!r}: 'preprocess' must be a dict, got {type(pre).__name__}")
    known = ("spacing", "size", "crop_labels", "crop_margin", "window", "percentiles", "antialias")
    unknown = sorted(str(k) for k in pre if k not in known)
    if unknown:
        raise CheckpointError(f"checkpoint {name!r}: unknown preprocess setting(s) {unknown}")
    sp = pre.get("spacing")
    if sp is not None:
        values = [sp] * 3 if _is_number(sp) else sp
        if (not isinstance(values, (list, tuple)) or len(values) != 3 or not all(_is_number(v) for v in values)
                or not all(MIN_SPACING_MM <= v <= MAX_SPACING_MM for v in values)):
            raise CheckpointError(f"checkpoint {name!r}: preprocess spacing must be 3 finite values in "
                                  f"{MIN_SPACING_MM:g}..{MAX_SPACING_MM:g} mm, got {_short(sp)}")
    if pre.get("size") is not None:
        _grid(pre["size"], "preprocess size", name)
    crop = pre.get("crop_labels")
    if crop is not None and crop != "all":
        _labels([crop] if _is_int(crop) else crop, "preprocess crop_labels", name)
        if not crop:
            raise CheckpointError(f"checkpoint {name!r}: preprocess crop_labels is empty")
    if "crop_margin" in pre and not (_is_number(pre["crop_margin"]) and 0 <= pre["crop_margin"] <= MAX_CROP_MARGIN_MM):
        raise CheckpointError(f"checkpoint {name!r}: preprocess crop_margin must be a finite number in "
                              f"0..{MAX_CROP_MARGIN_MM:g} mm, got {_short(pre['crop_margin'])}")
    if pre.get("window") is not None:
        _pair(pre["window"], "preprocess window", name)
    if "percentiles" in pre:
        _pair(pre["percentiles"], "preprocess percentiles", name, 0.0, 100.0)
    if "antialias" in pre and not isinstance(pre["antialias"], bool):
        raise CheckpointError(f"checkpoint {name!r}: preprocess antialias must be true or false")


def _depth(obj, limit: int) -> int:
    """Nesting depth of lists/dicts, counted without recursion (a crafted card is deep)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        item, d = stack.pop()
        if isinstance(item, (list, tuple, dict)):
            deepest = max(deepest, d)
            if deepest > limit:
                return deepest
            stack.extend((v, d + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def check_card(card, name: str) -> None:
    """A model card: a dict of plain values nested at most :data:`MAX_CARD_DEPTH` deep."""
    if not isinstance(card, dict):
        raise CheckpointError(f"{name}: the model card must be a JSON object, got {type(card).__name__}")
    if _depth(card, MAX_CARD_DEPTH) > MAX_CARD_DEPTH:
        raise CheckpointError(f"{name}: the model card is nested deeper than {MAX_CARD_DEPTH} levels")


def check_metadata(ckpt: dict[str, Any], name: str) -> None:
    """Type and bounds of every field of a loaded checkpoint that sizes or steers work:
    ``format_version``, ``input_size``, ``labels``, ``preprocess``, ``card``, and that
    ``model`` is a state dict of tensors.

    Raises:
        CheckpointError: naming the checkpoint and the field.
    """
    from . import checkpoint as _ckpt
    import torch

    version = ckpt.get("format_version", _ckpt.FORMAT_VERSION)
    if not _is_int(version) or not 1 <= version <= _ckpt.FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {name!r} has format version {_short(version)}; this ddmr reads "
                              f"version {_ckpt.FORMAT_VERSION} (a newer ddmr wrote it?)")
    state = ckpt.get("model")
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise CheckpointError(f"checkpoint {name!r}: 'model' is not a state dict of named tensors")
    if not isinstance(ckpt.get("gin_config"), str):
        raise CheckpointError(f"checkpoint {name!r}: its gin config is not text")
    if ckpt.get("input_size") is not None:
        _grid(ckpt["input_size"], "input_size", name)
    if ckpt.get("labels") is not None:
        _labels(ckpt["labels"], "labels", name)
    check_preprocess(ckpt.get("preprocess"), name)
    if "card" in ckpt:
        check_card(ckpt["card"], f"checkpoint {name!r}")
