"""The one device policy of every command (``--device``) and library entry point.

``ddmr train``, ``register``, ``evaluate``, ``demo`` and ``reproduce`` (and
:class:`~ddmr_core.training.trainer.Trainer`, :class:`~ddmr_core.registration.register.Registrar`,
:func:`~ddmr_core.evaluation.evaluate.evaluate`) all resolve their device here, so the same names
are accepted and refused everywhere, with the same one-line errors.
"""

from __future__ import annotations

import torch

from .errors import DdmrError

#: device types ddmr runs on
DEVICE_TYPES = ("cpu", "cuda", "mps")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def default_device() -> torch.device:
    """CUDA when a CUDA device is available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device=None, option: str = "--device") -> torch.device:
    """The ``torch.device`` a ``--device`` value names, checked against this machine.

    Args:
        device: ``None`` (:func:`default_device`), ``"cpu"``, ``"cuda"``, ``"cuda:N"``,
            ``"mps"`` (where torch has it), or a ``torch.device``. An index is kept as
            given (``"cuda"`` stays without one: the current CUDA device).
        option: how error messages name the setting.

    Raises:
        DdmrError: one line naming ``option`` and the value: not a device name, a device
            type ddmr does not run on, CUDA or MPS not available, or a CUDA index beyond
            the devices present.
    """
    if device is None:
        return default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise DdmrError(f"{option} {str(device)!r} is not a device name (e.g. cpu, cuda, cuda:1, mps)") from exc
    if dev.type not in DEVICE_TYPES:
        raise DdmrError(f"{option} {str(device)!r}: ddmr runs on {', '.join(DEVICE_TYPES)}, not {dev.type}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DdmrError(f"{option} {str(device)!r}: no CUDA device is available on this machine (use {option} cpu)")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise DdmrError(f"{option} {str(device)!r}: this machine has {count} CUDA device(s), "
                            f"cuda:0 to cuda:{count - 1}")
    if dev.type == "mps" and not _mps_available():
        raise DdmrError(f"{option} {str(device)!r}: MPS is not available on this machine (use {option} cpu)")
    return dev


def synchronize(device) -> None:
    """Wait for the device's queued work (CUDA; nothing to wait for elsewhere), so that a
    clock read next times it: ``register``'s and ``evaluate``'s runtimes."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
