"""``dtp``: dynamic task prioritisation (Guo et al., ECCV 2018; the paper's reference 31,
named in its discussion as future work). Beyond the paper.

Harder terms get more weight. Each loss term ``i`` has a key performance indicator
``kappa_i`` in (0, 1], from an exponential moving average ``m_i`` of its value:
``kappa_i = exp(-m_i)`` (1 for a perfect term; for ``1 - similarity`` losses near 0 it
is ``1 - m_i``, the similarity itself). Its weight is the focal-loss form of DTP,
``-(1 - kappa_i)^gamma log(kappa_i)``, renormalised so loss weights sum to 1 (equation
1). Weights are constants for back-propagation (no gradient flows through them).
Regularisers keep fixed weights (``5e-3`` as the paper). The averages update only in
training mode and live in buffers, so they are checkpointed.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from ddmr_core.errors import ConfigError

from .base import PAPER_REGULARISER_WEIGHT, Weighting


class DynamicTaskPrioritisation(Weighting):
    """Args:
        gamma: focusing parameter (0: weights ``-log kappa``; larger: focus on hard terms).
        momentum: EMA momentum of the KPI (``m <- momentum m + (1 - momentum) L``).
        regulariser_weights: ``{name: lambda}``, a float or None (``5e-3`` each).
        eps: floor of the KPI distance from 0 and 1 (keeps weights finite and non-zero).
    """

    kind = "dtp"

    def __init__(
        self,
        loss_names: Sequence[str],
        regulariser_names: Sequence[str] = (),
        gamma: float = 1.0,
        momentum: float = 0.9,
        regulariser_weights: Mapping[str, float] | float | None = None,
        eps: float = 1e-4,
    ):
        super().__init__(loss_names, regulariser_names)
        if gamma < 0 or not 0 <= momentum < 1:
            raise ConfigError(f"loss weighting 'dtp': need gamma >= 0 and 0 <= momentum < 1, got {gamma}, {momentum}")
        self.gamma, self.momentum, self.eps = float(gamma), float(momentum), float(eps)
        r = self.per_name(regulariser_weights, self.regulariser_names, PAPER_REGULARISER_WEIGHT, "regulariser_weights")
        self.register_buffer("reg_w", torch.tensor(r, dtype=torch.float32))
        n = len(self.loss_names)
        self.register_buffer("average", torch.zeros(n))
        self.register_buffer("seen", torch.zeros((), dtype=torch.bool))

    def loss_weights(self) -> torch.Tensor:
        """Current loss weights ``(N,)`` (equal before the first training step)."""
        n = len(self.loss_names)
        if not bool(self.seen):
            return torch.full((n,), 1.0 / n, device=self.average.device)
        kappa = torch.exp(-self.average.clamp(min=0)).clamp(self.eps, 1 - self.eps)
        w = -((1 - kappa) ** self.gamma) * torch.log(kappa)
        return w / w.sum()

    def forward(self, terms: Mapping[str, torch.Tensor]) -> torch.Tensor:
        self.check_terms(terms)
        losses = torch.stack([terms[n].reshape(()) for n in self.loss_names])
        if self.training:
            with torch.no_grad():
                value = losses.detach().float()
                if bool(self.seen):
                    self.average.mul_(self.momentum).add_((1 - self.momentum) * value)
                else:
                    self.average.copy_(value)
                    self.seen.fill_(True)
        total = (self.loss_weights().to(losses) * losses).sum()
        for k, n in enumerate(self.regulariser_names):
            total = total + self.reg_w[k] * terms[n]
        return total

    def weights(self) -> dict:
        w = self.loss_weights().tolist() + self.reg_w.tolist()
        return {n: float(v) for n, v in zip(self.names, w)}


def dtp(loss_names, regulariser_names=(), gamma=1.0, momentum=0.9, regulariser_weights=None,
        eps=1e-4) -> DynamicTaskPrioritisation:
    return DynamicTaskPrioritisation(loss_names, regulariser_names, gamma, momentum, regulariser_weights, eps)
