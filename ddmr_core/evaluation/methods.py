"""The methods an evaluation compares: trained models (through
:meth:`ddmr_core.registration.register.Registrar.predict`, the path ``ddmr register`` takes) and
baseline plugins, each with ``prepare()`` and ``predict(fixed, moving, spacing) -> (disp,
warped, seconds)`` on NumPy arrays ``(D, H, W)`` (``disp``: ``(3, D, H, W)`` voxels).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..devices import synchronize
from ..errors import DdmrError
from ..spatial.fields import warp


def warp_array(volume: np.ndarray, disp: np.ndarray, labels: bool = False) -> np.ndarray:
    """``volume`` ``(D, H, W)`` warped by the voxel field ``disp`` ``(3, D, H, W)`` on its own
    grid, as the evaluation does: images linearly with border padding (as the models warp
    in training), label maps by nearest neighbour with zeros outside."""
    mode, padding = ("nearest", "zeros") if labels else ("linear", "border")
    return warp(torch.from_numpy(volume)[None, None], torch.from_numpy(disp)[None], mode, padding)[0, 0].numpy()


class ModelMethod:
    """A trained network from a checkpoint (or a registered model name), predicting through
    :meth:`ddmr_core.registration.register.Registrar.predict`, the path ``ddmr register`` takes.
    ``predict`` returns ``(disp, warped, seconds)``."""

    kind = "model"

    def __init__(self, name: str, checkpoint, device="cpu", registry=None, refine: bool = True):
        self.name, self.checkpoint, self.device = name, str(checkpoint), torch.device(device)
        self.registry = registry
        self.refine = refine  # False: switch the model's instance optimisation off
        self.registrar = None

    @property
    def model(self):
        return None if self.registrar is None else self.registrar.model

    @property
    def input_size(self):
        return None if self.registrar is None else self.registrar.input_size

    def prepare(self) -> None:
        from ..registration.register import Registrar

        self.registrar = Registrar(self.checkpoint, device=self.device, registry=self.registry)
        if not self.refine:
            self.registrar.model.refine_iterations = 0

    @torch.inference_mode()
    def predict(self, fixed: np.ndarray, moving: np.ndarray, spacing) -> tuple:
        f = torch.from_numpy(fixed)[None, None].to(self.device)
        m = torch.from_numpy(moving)[None, None].to(self.device)
        synchronize(self.device)
        start = time.perf_counter()
        disp = self.registrar.predict(f, m)  # no left_right: a test set has no orientation, nothing is mirrored
        warped = warp(m, disp, mode="linear", padding="border")  # on the device: part of the runtime
        synchronize(self.device)
        seconds = time.perf_counter() - start
        return disp[0].float().cpu().numpy(), warped[0, 0].float().cpu().numpy(), seconds


class BaselineMethod:
    """A baseline plugin (``register(fixed, moving, spacing) -> disp`` on NumPy arrays)."""

    kind = "baseline"

    def __init__(self, name: str, method):
        # built up front, while the user's gin bindings are in force (loading a model's
        # checkpoint later replaces the gin config with the model's own)
        self.name, self.method = name, method

    def prepare(self) -> None:
        method = self.method
        available = getattr(method, "available", None)
        if available is not None and not available():
            hint = getattr(sys.modules.get(type(method).__module__), "INSTALL_HINT", None)
            raise DdmrError(
                f"baseline {self.name!r} cannot run: its library is not installed"
                + (f" (install it with `{hint}`)" if hint else "")
            )

    def predict(self, fixed: np.ndarray, moving: np.ndarray, spacing) -> tuple:
        start = time.perf_counter()
        disp = np.asarray(self.method.register(fixed, moving, tuple(float(s) for s in spacing)), np.float32)
        if disp.shape != (3,) + fixed.shape:
            raise ValueError(f"baseline {self.name!r} returned a field of shape {disp.shape}, expected {(3,) + fixed.shape}")
        warped = warp_array(moving, disp)
        seconds = time.perf_counter() - start
        return disp, warped, seconds


def _model_name(spec: str) -> tuple[str, str]:
    """``"NAME=MODEL"`` or ``"MODEL"`` (named after the file's stem, or the model's name),
    ``MODEL`` a checkpoint path or a registered model name."""
    if "=" in spec and not Path(spec).exists():
        name, path = spec.split("=", 1)
        return name.strip(), path.strip()
    stem = Path(spec).name
    for suffix in (".pt", ".pth", ".ckpt"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    return stem, spec


def build_methods(models: Sequence[str] = (), baselines: Sequence[str] = (), device="cpu", registry=None,
                  make: Callable | None = None, unrefined: bool = False) -> list:
    """Methods in the order given: models first, then baselines (built at once by
    ``make(kind, name)``, default: the plain factory). Names are made unique; unknown
    baseline names, and model names that are neither a file nor a registered model,
    raise :class:`~ddmr_core.errors.UnknownNameError` at once (a checkpoint that does not
    load is a failure of its rows instead).
    ``unrefined``: each model also runs with its instance optimisation off, as
    ``"NAME (no refinement)"`` (an ablation: what the network and prealignment give)."""
    from ..model.checkpoint import resolve_model
    from ..plugins.registry import Registry

    methods: list = []
    registry = registry or Registry(bind_gin=False)
    make = make or (lambda kind, name: registry.get(kind, name)())
    for spec in models:
        name, path = _model_name(spec)
        resolve_model(path, registry)  # an unknown model name stops here, before any work
        methods.append(ModelMethod(name, path, device, registry))
        if unrefined:
            methods.append(ModelMethod(f"{name} (no refinement)", path, device, registry, refine=False))
    for name in baselines:
        methods.append(BaselineMethod(name, make("baselines", name)))
    seen: dict[str, int] = {}
    for m in methods:  # two checkpoints called best.pt: best, best_2
        seen[m.name] = seen.get(m.name, 0) + 1
        if seen[m.name] > 1:
            m.name = f"{m.name}_{seen[m.name]}"
    return methods


# ===================================================================== geometry
