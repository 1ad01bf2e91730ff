"""The gin builder of the registration model: :class:`RegistrationModel` itself, bound in gin
as ``ddmr.build_model``, so the model is configured in one place (its constructor: a new
option is one parameter there, nothing to mirror here).

Configs bind it, e.g.::

    ddmr.build_model.backbone = @ddmr.backbones.vxm_unet()
    ddmr.build_model.losses = {'ncc': @ddmr.losses.ncc(), 'grad_l2': @ddmr.losses.grad_l2()}
    ddmr.build_model.weighting = @ddmr.loss_weightings.uw   # a factory: no ()

and ``build_model()`` returns the configured :class:`RegistrationModel` (an instance of gin's
configurable subclass of it).
"""

from __future__ import annotations

import gin

from .registration_model import RegistrationModel

build_model = gin.external_configurable(RegistrationModel, "build_model", module="ddmr")


def check_model_memory(device) -> None:
    """Build the configured model on the ``meta`` device (nothing allocated) and refuse one
    whose weights, gradients and Adam moments (4 x 4 bytes a parameter) exceed the memory
    available on ``device`` (``--gin "ddmr.backbones.vxm_unet.widths = (100000, 100000)"``
    asked for a terabyte). Models that cannot be built on ``meta`` are not checked here.

    Raises:
        DataError: not enough memory (:func:`ddmr_core.data.guards.check_memory`)."""
    import torch

    from ..data.guards import check_memory

    try:
        with torch.device("meta"):
            params = sum(p.numel() for p in build_model().parameters())
    except Exception:  # a config error is reported by the real build
        return
    check_memory(16.0 * params, f"training a model of {params:,} parameters (weights, gradients, Adam's moments)",
                 device=device)
