"""Transfer learning: start a run from another run's checkpoint and finetune it.

The paper (section 3, experiment ii) finetunes a model trained on brain MR to
abdominal CT in one of two ways, always at a learning rate of 1e-4:

* ``full``: every parameter trains from the first step;
* ``two_step``: first the decoder (and head) with the encoder frozen, then the
  whole model.

Configs select it with::

    ddmr.Trainer.transfer = @ddmr.finetune()
    ddmr.finetune.checkpoint = 'runs/brain/uw_nsd/best.pt'
    ddmr.finetune.strategy = 'two_step'

The encoder/decoder split comes from the backbone's ``parameter_groups()`` (see the
backbone contract in :mod:`ddmr_core.plugins.hookspecs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gin
from torch import nn

from ..model.checkpoint import check_finite_weights, load_checkpoint, resolve_model
from ..errors import CheckpointError, ConfigError

STRATEGIES = ("full", "two_step")


@gin.configurable(module="ddmr")
@dataclass
class finetune:  # noqa: N801 - lower case so gin configs read ``@ddmr.finetune()``
    """How to start from a pretrained checkpoint.

    Args:
        checkpoint: path of a ddmr checkpoint (``best.pt`` of the source run) or the
            name of a registered model (``'brain-mr'``, ``ddmr plugins`` lists them).
        strategy: ``"full"`` or ``"two_step"``.
        lr: learning rate while finetuning (paper: 1e-4); replaces ``Trainer.lr``.
        decoder_epochs: ``two_step`` only: epochs of the first step (encoder frozen);
            the first step also ends early when early stopping would fire.
        load_weighting: also load the loss-weighting parameters (uncertainty
            weights) when the source run has the same loss terms.
    """

    checkpoint: str = gin.REQUIRED
    strategy: str = "full"
    lr: float = 1e-4
    decoder_epochs: int = 50
    load_weighting: bool = True

    def __post_init__(self):
        if self.checkpoint is gin.REQUIRED or not self.checkpoint:
            raise ConfigError("ddmr.finetune.checkpoint: a pretrained checkpoint path is required")
        if self.strategy not in STRATEGIES:
            raise ConfigError(
                f"ddmr.finetune.strategy: unknown strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}"
            )
        if self.lr <= 0:
            raise ConfigError(f"ddmr.finetune.lr must be positive, got {self.lr}")
        if self.decoder_epochs < 0:
            raise ConfigError(f"ddmr.finetune.decoder_epochs must be >= 0, got {self.decoder_epochs}")

    @property
    def phases(self) -> int:
        """Number of phases: 1 for ``full``, 2 for ``two_step``."""
        return 2 if self.strategy == "two_step" else 1


def load_pretrained(model: nn.Module, path: str | Path, load_weighting: bool = True) -> dict:
    """Load a checkpoint's backbone (strictly) and, if compatible, its weighting parameters.

    Raises:
        CheckpointError: missing or corrupt file, or a backbone of another architecture.

    Returns:
        the checkpoint dict.
    """
    ckpt = load_checkpoint(resolve_model(path))
    state = ckpt["model"]
    check_finite_weights(state, path)  # finetuning a blown-up model learns nothing
    backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    try:
        model.backbone.load_state_dict(backbone, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        detail = " ".join(line.strip() for line in str(exc).splitlines()[1:2])[:300]
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds a backbone of a different architecture than the "
            f"config builds: {first} {detail}".strip()
        ) from exc
    weighting = getattr(model, "weighting", None)
    if load_weighting and isinstance(weighting, nn.Module):
        wstate = {k[len("weighting."):]: v for k, v in state.items() if k.startswith("weighting.")}
        own = weighting.state_dict()
        # only when the source run weighted the very same terms
        if wstate and set(wstate) == set(own) and all(wstate[k].shape == own[k].shape for k in own):
            weighting.load_state_dict(wstate)
    return ckpt


def encoder_parameters(model: nn.Module) -> list:
    """The backbone's encoder parameters (frozen in the first step of ``two_step``)."""
    groups = getattr(model.backbone, "parameter_groups", None)
    if groups is None:
        raise ConfigError(
            f"two-step finetuning needs backbone.parameter_groups(); {type(model.backbone).__name__} has none"
        )
    return list(groups()["encoder"])


def set_phase(model: nn.Module, strategy: finetune | None, phase: int) -> None:
    """Freeze the encoder in phase 0 of ``two_step``; unfreeze everything otherwise."""
    for p in model.parameters():
        p.requires_grad_(True)
    if strategy is not None and strategy.strategy == "two_step" and phase == 0:
        for p in encoder_parameters(model):
            p.requires_grad_(False)
            p.grad = None


def next_phase(strategy: finetune | None, counters: dict, patience_out: bool) -> bool:
    """After an epoch: whether ``two_step``'s first phase (decoder only) ends now, when
    early stopping would fire (``patience_out``) or after ``decoder_epochs`` epochs. If so,
    ``counters`` enter phase 1 with fresh patience (``phase``, ``phase_epochs``,
    ``bad_epochs``); the trainer then trains the whole model from the base rate with a new
    scheduler (:func:`set_phase`)."""
    if strategy is None or strategy.strategy != "two_step" or counters["phase"] != 0:
        return False
    if not (patience_out or counters["phase_epochs"] >= strategy.decoder_epochs):
        return False
    counters.update(phase=1, phase_epochs=0, bad_epochs=0)
    return True


def trainable_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["finetune", "load_pretrained", "set_phase", "next_phase", "encoder_parameters", "trainable_count",
           "STRATEGIES"]
