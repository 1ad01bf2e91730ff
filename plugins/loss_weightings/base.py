"""Common base of the loss-weighting strategies: name bookkeeping and checks.

A strategy is built as ``factory(loss_names, regulariser_names, **params)`` and maps
``{name: scalar}`` to one scalar (equation 1 of the paper:
``sum_i w_i L_i + sum_j lambda_j R_j``); ``weights()`` gives the current ``{name: float}``
for logging, every step.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from ddmr_core.errors import ConfigError

#: The paper's initial regulariser weight (section 2.4).
PAPER_REGULARISER_WEIGHT = 5e-3


class Weighting(nn.Module):
    """Args:
        loss_names: names of the similarity terms (image and segmentation losses).
        regulariser_names: names of the field terms.
    """

    kind = "weighting"

    def __init__(self, loss_names: Sequence[str], regulariser_names: Sequence[str] = ()):
        super().__init__()
        self.loss_names = [str(n) for n in loss_names]
        self.regulariser_names = [str(n) for n in regulariser_names]
        names = self.loss_names + self.regulariser_names
        if not self.loss_names:
            raise ConfigError(f"loss weighting {self.kind!r}: needs at least one loss term, got none")
        if len(set(names)) != len(names):
            raise ConfigError(f"loss weighting {self.kind!r}: term names repeat: {names}")
        self.names = names

    def check_terms(self, terms: Mapping[str, torch.Tensor]) -> None:
        missing = [n for n in self.names if n not in terms]
        extra = [n for n in terms if n not in self.names]
        if missing or extra:
            raise ConfigError(
                f"loss weighting {self.kind!r} was built for terms {self.names}; "
                f"missing {missing}, unexpected {extra}"
            )

    def per_name(self, value, names: Sequence[str], default: float, what: str) -> list:
        """A float (same for all), a ``{name: float}`` mapping (default for the rest) or
        None (``default`` for all) -> one float per name; unknown names are an error."""
        if value is None:
            return [float(default)] * len(names)
        if isinstance(value, Mapping):
            unknown = [k for k in value if k not in names]
            if unknown:
                raise ConfigError(
                    f"loss weighting {self.kind!r}: {what} names {unknown} that are not terms {list(names)}"
                )
            return [float(value.get(n, default)) for n in names]
        return [float(value)] * len(names)

    def weights(self) -> dict:  # pragma: no cover - every strategy overrides it
        raise NotImplementedError
