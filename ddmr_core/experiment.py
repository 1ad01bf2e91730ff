"""gin-configurable builders that turn a config into components.

Configs bind these, e.g.::

    ddmr.build_model.backbone = @ddmr.backbones.vxm_unet()
    ddmr.build_model.losses = {'ncc': @ddmr.losses.ncc(), 'grad_l2': @ddmr.losses.grad_l2()}
    ddmr.build_model.weighting = @ddmr.loss_weightings.uw   # a factory: no ()
    ddmr.build_augmentation.steps = [@ddmr.augmenters.tps(), @ddmr.augmenters.rigid()]
    ddmr.build_dataset.dataset = @ddmr.datasets.mni_brain()
"""

from __future__ import annotations

from typing import Mapping, Sequence

import gin
from torch import nn

from .model import RegistrationModel


@gin.configurable(module="ddmr")
def build_model(
    backbone: nn.Module = gin.REQUIRED,
    losses: Mapping[str, nn.Module] | None = None,
    weighting=None,
    prealign: str | None = None,
    refine_iterations: int = 0,
    supervision: nn.Module | None = None,
    supervision_weight: float = 1.0,
    prealign_iterations=None,
    supervision_ramp_steps=0,
) -> RegistrationModel:
    """Backbone, loss terms and weighting strategy as one :class:`RegistrationModel`
    (``prealign``, ``refine_iterations``, ``supervision``: see :class:`RegistrationModel`)."""
    return RegistrationModel(backbone, losses, weighting, prealign=prealign, refine_iterations=refine_iterations,
                             supervision=supervision, supervision_weight=supervision_weight,
                             prealign_iterations=prealign_iterations,
                             supervision_ramp_steps=supervision_ramp_steps)


@gin.configurable(module="ddmr")
def build_augmentation(steps: Sequence[nn.Module] = (), seed: int = 0):
    """The on-the-fly augmentation pipeline (see :mod:`ddmr_core.augment`)."""
    from .augment import AugmentationPipeline

    return AugmentationPipeline(list(steps), seed=seed)


@gin.configurable(module="ddmr")
def build_dataset(dataset=gin.REQUIRED):
    """The dataset plugin instance named by the config."""
    return dataset


@gin.configurable(module="ddmr")
def input_size(size: Sequence[int] | None = None) -> tuple | None:
    """The network's input grid ``(D, H, W)``: ``size`` as the config binds it (experiment
    configs bind ``ddmr.input_size.size = %SIZE``), else the config's ``SIZE`` macro, else
    None (the trainer then takes the data's own grid)."""
    if size is None:
        from .config import query_macro

        size = query_macro("SIZE")
    return None if size is None else tuple(int(s) for s in size)


def build_named_dataset(name: str, configs=(), bindings=(), size: int | None = None):
    """Parse the data mix-in of ``name`` (if shipped), ``configs`` and ``bindings``, then
    build the dataset plugin ``name`` through gin (``SIZE``: ``size``, else what a config
    sets, else 128). Returns ``(dataset, registry)``; what ``ddmr prepare`` and ``ddmr
    build-testset`` build their data with.

    Raises:
        UnknownNameError: no dataset plugin ``name``; ConfigError, DataError: the configs
            or the dataset (one line)."""
    from .config import config_root, parse_config, query_macro
    from .errors import ConfigError, DataError, DdmrError
    from .registry import Registry

    registry = Registry()
    registry.entry("datasets", name)  # unknown name -> clear error listing the names
    files = []
    mixin = config_root() / "mixins" / "data" / f"{name}.gin"
    if mixin.is_file():
        files.append(mixin)
    files += list(configs)
    extra = [] if size is None else [f"SIZE = ({size}, {size}, {size})"]
    parse_config(files, list(bindings) + extra, registry=registry)
    if query_macro("SIZE") is None:  # no config set SIZE: the paper's 128^3
        parse_config(files, list(bindings) + ["SIZE = (128, 128, 128)"], registry=registry)
    try:
        dataset = registry.create("datasets", name)
    except DdmrError as exc:
        # gin appends "In call to configurable ..." lines: keep the one-line message
        # (gin re-raises a proxy subclass: rebuild the ddmr class it derives from)
        lines = str(exc).splitlines() or [""]
        cls = next((c for c in (DataError, ConfigError, DdmrError) if isinstance(exc, c)))
        raise cls(f"dataset {name!r}: {lines[0]}") from exc
    except (TypeError, ValueError) as exc:
        raise DataError(f"dataset {name!r} cannot be built: {exc}") from exc
    return dataset, registry
