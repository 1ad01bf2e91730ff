"""``dwa``: dynamic weight average (Liu, Johns and Davison, CVPR 2019). Beyond the paper.

Terms whose loss falls slowest get more weight. The original compares epoch averages;
ddmr's trainer steps on single samples, so each loss term keeps an exponential moving
average ``m_i`` and, every ``period`` training steps, the rate ``r_i = m_i(now) /
m_i(one period ago)`` sets the weights ``w = softmax(r / T)`` (summing to 1, equation 1).
Until two periods have passed the weights are equal. Regularisers keep fixed weights
(``5e-3`` as the paper). Weights carry no gradient; the state lives in buffers.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from ddmr_core.errors import ConfigError

from .base import PAPER_REGULARISER_WEIGHT, Weighting


class DynamicWeightAverage(Weighting):
    """Args:
        temperature: ``T``; large values give near-equal weights.
        period: training steps between two rate measurements (an "epoch").
        momentum: EMA momentum of the loss values.
        regulariser_weights: ``{name: lambda}``, a float or None (``5e-3`` each).
    """

    kind = "dwa"

    def __init__(
        self,
        loss_names: Sequence[str],
        regulariser_names: Sequence[str] = (),
        temperature: float = 2.0,
        period: int = 50,
        momentum: float = 0.9,
        regulariser_weights: Mapping[str, float] | float | None = None,
    ):
        super().__init__(loss_names, regulariser_names)
        if temperature <= 0 or period < 1 or not 0 <= momentum < 1:
            raise ConfigError(
                f"loss weighting 'dwa': need temperature > 0, period >= 1, 0 <= momentum < 1; "
                f"got {temperature}, {period}, {momentum}"
            )
        self.temperature, self.period, self.momentum = float(temperature), int(period), float(momentum)
        r = self.per_name(regulariser_weights, self.regulariser_names, PAPER_REGULARISER_WEIGHT, "regulariser_weights")
        self.register_buffer("reg_w", torch.tensor(r, dtype=torch.float32))
        n = len(self.loss_names)
        self.register_buffer("average", torch.zeros(n))
        self.register_buffer("snapshot", torch.zeros(n))  # the average one period ago
        self.register_buffer("w", torch.full((n,), 1.0 / n))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def _update(self, values: torch.Tensor) -> None:
        if int(self.steps) == 0:
            self.average.copy_(values)
        else:
            self.average.mul_(self.momentum).add_((1 - self.momentum) * values)
        self.steps += 1
        if int(self.steps) % self.period == 0:
            if int(self.steps) >= 2 * self.period:
                rate = self.average / self.snapshot.clamp_min(1e-12)
                self.w.copy_(torch.softmax(rate / self.temperature, 0))
            self.snapshot.copy_(self.average)

    def forward(self, terms: Mapping[str, torch.Tensor]) -> torch.Tensor:
        self.check_terms(terms)
        losses = torch.stack([terms[n].reshape(()) for n in self.loss_names])
        if self.training:
            self._update(losses.detach().float())
        total = (self.w.to(losses) * losses).sum()
        for k, n in enumerate(self.regulariser_names):
            total = total + self.reg_w[k] * terms[n]
        return total

    def weights(self) -> dict:
        w = self.w.tolist() + self.reg_w.tolist()
        return {n: float(v) for n, v in zip(self.names, w)}


def dwa(loss_names, regulariser_names=(), temperature=2.0, period=50, momentum=0.9,
        regulariser_weights=None) -> DynamicWeightAverage:
    return DynamicWeightAverage(loss_names, regulariser_names, temperature, period, momentum, regulariser_weights)
