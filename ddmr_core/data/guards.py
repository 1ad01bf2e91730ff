"""Sanity guards run before work starts: plausible voxel spacing, enough memory, and
outputs that do not overwrite inputs.

* :func:`check_spacing`: voxel spacing outside 0.05..20 mm is almost always a unit
  mistake in the header (metres or centimetres stored as millimetres give 0.001–0.1;
  a wrong zoom gives tens); registering such an image resamples it to a grid of one voxel
  or of billions. One line names the image and the likely mistake.
* :func:`check_memory`: an estimate of what a step needs, compared with the memory
  available (``MemAvailable`` of ``/proc/meminfo``, or the ``DDMR_MEMORY_LIMIT``
  environment variable, e.g. ``8G``, whichever is smaller); commands offer
  ``--no-memory-check`` to go on anyway. Estimates are upper bounds of the right order
  (they catch requests for hundreds of gigabytes, not 20 % excess).
* :func:`check_not_input` / :func:`check_inputs_outside`: an output file that is (after
  symlinks and hard links) an input, or an output folder that would be replaced as a
  whole while holding an input, is an error before anything is written.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from ..errors import DataError

#: plausible voxel spacing in mm (also what a checkpoint's metadata may record,
#: :mod:`ddmr_core.model.checkpoint_checks`)
MIN_SPACING_MM, MAX_SPACING_MM = 0.05, 20.0

MEMORY_LIMIT_ENV = "DDMR_MEMORY_LIMIT"
_UNITS = {"": 1, "k": 2 ** 10, "m": 2 ** 20, "g": 2 ** 30, "t": 2 ** 40}


# ------------------------------------------------------------------ spacing
def check_spacing(affine, what: str) -> None:
    """Raise :class:`DataError` when a voxel spacing (column norm of ``affine``, mm) is
    outside :data:`MIN_SPACING_MM`..:data:`MAX_SPACING_MM`, suggesting the unit mistake."""
    spacing = np.linalg.norm(np.asarray(affine, float)[:3, :3], axis=0)
    shown = ", ".join(f"{s:.4g}" for s in spacing)
    if not np.all(np.isfinite(spacing)):
        raise DataError(f"{what} has a non-finite voxel spacing ({shown})")
    if spacing.min() < MIN_SPACING_MM:
        raise DataError(
            f"{what} has a voxel spacing of ({shown}) mm, below {MIN_SPACING_MM:g} mm: the header's spacing is "
            "probably in metres or centimetres instead of millimetres (NIfTI xyzt_units); fix the header "
            "(e.g. multiply pixdim by 1000 for metres)")
    if spacing.max() > MAX_SPACING_MM:
        raise DataError(
            f"{what} has a voxel spacing of ({shown}) mm, above {MAX_SPACING_MM:g} mm: the header's spacing is "
            "probably wrong (a slice count or a wrong unit stored as the spacing?); fix pixdim in the header")


# ------------------------------------------------------------------- memory
def parse_bytes(text: str) -> int:
    """``"8G"``, ``"512M"``, ``"1.5g"``, ``"1000000"`` -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([kKmMgGtT]?)i?[bB]?\s*", str(text))
    if not m:
        raise DataError(f"{MEMORY_LIMIT_ENV}={text!r}: give bytes, or a number with K, M, G or T (e.g. 8G)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation: ``MemAvailable`` (Linux), capped by
    ``DDMR_MEMORY_LIMIT``; None when neither is known."""
    limits = []
    env = os.environ.get(MEMORY_LIMIT_ENV)
    if env:
        limits.append(parse_bytes(env))
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        pass
    return min(limits) if limits else None


def _gib(n: float) -> str:
    return f"{n / 2 ** 30:.1f} GiB" if n >= 2 ** 28 else f"{n / 2 ** 20:.0f} MiB"


def check_memory(needed: float, what: str, skip: bool = False, device=None) -> None:
    """Raise :class:`DataError` when ``needed`` bytes (an estimate) exceed the memory
    available (:func:`available_memory`; on a CUDA ``device``, its free memory), unless
    ``skip`` (``--no-memory-check``)."""
    if skip:
        return
    avail = available_memory()
    if device is not None and getattr(device, "type", None) == "cuda":
        import torch

        free = int(torch.cuda.mem_get_info(device)[0])
        avail = free if avail is None or MEMORY_LIMIT_ENV not in os.environ else min(avail, free)
    if avail is not None and needed > avail:
        raise DataError(f"{what} needs about {_gib(needed)} of memory, more than the {_gib(avail)} available; "
                        "use smaller images or grids, or pass --no-memory-check to try anyway")


#: float32 volumes of the working grid a registration holds at once (images, fields,
#: the refinement's tensors and gradients, the resampled outputs): generous
FLOATS_PER_WORKING_VOXEL = 48
#: float32 values per network-grid voxel for a forward pass (U-Net features, both paths)
FLOATS_PER_NETWORK_VOXEL = 128
#: a training step keeps activations for the backward pass and gradients: more
FLOATS_PER_TRAINING_VOXEL = 512


def registration_bytes(working_shape, output_shape, network_shape) -> float:
    """Estimated bytes of one registration (``ddmr register``): the working and output
    grids' volumes and the network's activations on its grid."""
    work = max(math.prod(working_shape), math.prod(output_shape))
    return 4.0 * (FLOATS_PER_WORKING_VOXEL * work + FLOATS_PER_NETWORK_VOXEL * math.prod(network_shape))


def training_bytes(network_shape, batch_size: int, parameters: int) -> float:
    """Estimated bytes of one training micro-batch: activations and gradients on the
    network grid, and the weights with Adam's two moments and their gradients."""
    return 4.0 * (FLOATS_PER_TRAINING_VOXEL * math.prod(network_shape) * max(1, batch_size) + 4 * parameters)


# ------------------------------------------------------------- in and out
def _same_file(a: Path, b: Path) -> bool:
    try:
        if os.path.realpath(a) == os.path.realpath(b):
            return True
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_not_input(out, inputs: Mapping[str, object], option: str = "--out") -> None:
    """Raise :class:`DataError` if the output file ``out`` is one of ``inputs`` (name ->
    path or None), after symlinks and hard links: writing it would destroy that input."""
    out = Path(out)
    for name, path in inputs.items():
        if path is not None and not hasattr(path, "read") and _same_file(out, Path(str(path))):
            raise DataError(f"{option} {str(out)!r} is the {name} {str(path)!r}; writing it would destroy the "
                            "input: choose another output name")


def check_inputs_outside(folder, inputs: Mapping[str, object] | Iterable, option: str = "--out") -> None:
    """Raise :class:`DataError` if an input lies in the output ``folder`` (or is it),
    after symlinks: the folder is replaced (or written) as a whole, which would destroy it."""
    root = Path(os.path.realpath(folder))
    items = inputs.items() if isinstance(inputs, Mapping) else (("input", p) for p in inputs)
    for name, path in items:
        if path is None or hasattr(path, "read"):
            continue
        real = Path(os.path.realpath(str(path)))
        if real == root or root in real.parents:
            raise DataError(f"{option} {str(folder)!r} holds the {name} {str(path)!r}; the output folder is "
                            "replaced as a whole, which would destroy the input: choose another --out")


#: glibc's mallopt parameter number of the mmap threshold (malloc.h: M_MMAP_THRESHOLD)
_M_MMAP_THRESHOLD = -3


def release_large_blocks(threshold_bytes: int = 2 << 20) -> bool:
    """Serve allocations above ``threshold_bytes`` by ``mmap``, so that each freed volume
    goes back to the system at once (glibc's ``mallopt(M_MMAP_THRESHOLD)``). By default
    glibc raises that threshold after every large free, up to 32 MB, and the volumes of a
    1 mm registration then stay in the heap once freed: the process's peak memory becomes
    the sum of its phases' peaks rather than the largest. For processes that allocate
    few, large blocks (``ddmr register``). Returns False where the C library is not glibc
    (nothing changes).

    Why 2 MB: a block mapped anew is faulted in page by page when first written (4 kB
    pages, unless it is large enough for the huge pages that PyTorch and NumPy ask for),
    and a registration's many temporaries just under 2 MB (slabs of the field's
    folding, the refinement's sampled points) are better reused from the heap. A 1 mm
    ``ddmr register`` at 1 MB: ~410k page faults, ~1.9 s of system time, peak ~855 MB; at
    2 MB: ~215k, ~1.3 s, ~0.3 s less wall time, peak ~865 MB. 4, 8 and 16 MB were no
    faster on this project's machine and peaked higher (~900, ~915 MB; 32 MB ~990 MB)."""
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold_bytes)))
    except (OSError, AttributeError):
        return False
