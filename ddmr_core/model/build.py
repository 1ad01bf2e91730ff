"""The gin builder of the registration model.

Configs bind it, e.g.::

    ddmr.build_model.backbone = @ddmr.backbones.vxm_unet()
    ddmr.build_model.losses = {'ncc': @ddmr.losses.ncc(), 'grad_l2': @ddmr.losses.grad_l2()}
    ddmr.build_model.weighting = @ddmr.loss_weightings.uw   # a factory: no ()
"""

from __future__ import annotations

from typing import Mapping

import gin
from torch import nn

from .registration_model import RegistrationModel


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
