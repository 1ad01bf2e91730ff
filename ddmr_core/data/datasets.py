"""gin-configurable builders of a run's data: the augmentation pipeline, the dataset plugin,
the network's input size (the model's builder is :func:`ddmr_core.model.build.build_model`).

Configs bind these, e.g.::

    ddmr.build_augmentation.steps = [@ddmr.augmenters.tps(), @ddmr.augmenters.rigid()]
    ddmr.build_dataset.dataset = @ddmr.datasets.mni_brain()
"""

from __future__ import annotations

from typing import Sequence

import gin
from torch import nn



@gin.configurable(module="ddmr")
def build_augmentation(steps: Sequence[nn.Module] = (), seed: int = 0):
    """The on-the-fly augmentation pipeline (see :mod:`ddmr_core.data.augment`)."""
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
        from ..config.parsing import query_macro

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
    from ..config.parsing import config_root, parse_config, query_macro
    from ..errors import ConfigError, DataError, DdmrError
    from ..plugins.registry import Registry

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
