"""``uw``: uncertainty weighting (Kendall, Gal and Cipolla, 2018), the paper's UW designs.

Each term ``k`` has a learnable log-variance ``s_k``, trained by the network's optimiser.

* ``form="kendall"`` (default): ``total = sum_k exp(-s_k) T_k + s_k``. The ``+ s_k``
  term keeps weights from collapsing to 0; a weight settles near ``1 / T_k``.
* ``form="softmax"``: equation 1 with its constraint kept while learning, as the
  paper's reference implementation: loss weights ``softmax(-s)`` (sum 1), regulariser
  weights ``exp(-s)``; no penalty term.

Both start from the paper's initialisation: losses equal (``1/N`` each) and each
regulariser at ``5e-3`` (``s = -log w``). ``weights()`` returns ``exp(-s)`` (kendall)
or the softmax weights (softmax).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
from torch import nn

from ddmr_core.errors import ConfigError

from .base import PAPER_REGULARISER_WEIGHT, Weighting

FORMS = ("kendall", "softmax")


class UncertaintyWeighting(Weighting):
    """Args:
        loss_init: initial loss weights, ``{name: w}``, a float or None (``1/N`` each).
        regulariser_init: initial regulariser weights, as above (None: ``5e-3``).
        form: ``"kendall"`` or ``"softmax"`` (see the module docstring).
    """

    kind = "uw"

    def __init__(
        self,
        loss_names: Sequence[str],
        regulariser_names: Sequence[str] = (),
        loss_init: Mapping[str, float] | float | None = None,
        regulariser_init: Mapping[str, float] | float | None = PAPER_REGULARISER_WEIGHT,
        form: str = "kendall",
    ):
        super().__init__(loss_names, regulariser_names)
        if form not in FORMS:
            raise ConfigError(f"loss weighting 'uw': form must be one of {FORMS}, got {form!r}")
        self.form = form
        w = self.per_name(loss_init, self.loss_names, 1.0 / len(self.loss_names), "loss_init")
        r = self.per_name(regulariser_init, self.regulariser_names, PAPER_REGULARISER_WEIGHT, "regulariser_init")
        if min(w + r) <= 0:
            raise ConfigError(f"loss weighting 'uw': initial weights must be > 0, got {w + r}")
        self.log_vars = nn.Parameter(torch.tensor([-math.log(v) for v in w + r], dtype=torch.float32))

    def _weights(self) -> torch.Tensor:
        n = len(self.loss_names)
        if self.form == "kendall":
            return torch.exp(-self.log_vars)
        return torch.cat([torch.softmax(-self.log_vars[:n], 0), torch.exp(-self.log_vars[n:])])

    def forward(self, terms: Mapping[str, torch.Tensor]) -> torch.Tensor:
        self.check_terms(terms)
        values = torch.stack([terms[n].reshape(()) for n in self.names])
        total = (self._weights() * values).sum()
        if self.form == "kendall":
            total = total + self.log_vars.sum()
        return total

    def weights(self) -> dict:
        with torch.no_grad():
            return {n: float(v) for n, v in zip(self.names, self._weights().tolist())}


def uw(loss_names, regulariser_names=(), loss_init=None, regulariser_init=PAPER_REGULARISER_WEIGHT,
       form="kendall") -> UncertaintyWeighting:
    return UncertaintyWeighting(loss_names, regulariser_names, loss_init, regulariser_init, form)
