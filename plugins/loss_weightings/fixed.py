"""``fixed``: equation 1 of the paper with constant weights (designs BL-* and SG-*).

``total = sum_i w_i L_i + sum_j lambda_j R_j``. By default the loss weights are equal
and sum to 1 (``w_i = 1/N``) and every regulariser gets the paper's ``5e-3``.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from ddmr_core.errors import ConfigError

from .base import PAPER_REGULARISER_WEIGHT, Weighting


class FixedWeighting(Weighting):
    """Args:
        loss_weights: ``{name: w}`` (others ``1/N``), one float for all, or None (``1/N``).
        regulariser_weights: ``{name: lambda}``, one float, or None (``5e-3`` each).
    """

    kind = "fixed"

    def __init__(
        self,
        loss_names: Sequence[str],
        regulariser_names: Sequence[str] = (),
        loss_weights: Mapping[str, float] | float | None = None,
        regulariser_weights: Mapping[str, float] | float | None = None,
    ):
        super().__init__(loss_names, regulariser_names)
        w = self.per_name(loss_weights, self.loss_names, 1.0 / len(self.loss_names), "loss_weights")
        r = self.per_name(
            regulariser_weights, self.regulariser_names, PAPER_REGULARISER_WEIGHT, "regulariser_weights"
        )
        if min(w + r, default=0.0) < 0:
            raise ConfigError(f"loss weighting 'fixed': weights must be >= 0, got {w + r}")
        # a buffer, not a parameter: saved in checkpoints, never trained
        self.register_buffer("w", torch.tensor(w + r, dtype=torch.float32))

    def forward(self, terms: Mapping[str, torch.Tensor]) -> torch.Tensor:
        self.check_terms(terms)
        return sum(self.w[k] * terms[n] for k, n in enumerate(self.names))

    def weights(self) -> dict:
        return {n: float(v) for n, v in zip(self.names, self.w.tolist())}


def fixed(loss_names, regulariser_names=(), loss_weights=None, regulariser_weights=None) -> FixedWeighting:
    return FixedWeighting(loss_names, regulariser_names, loss_weights, regulariser_weights)
