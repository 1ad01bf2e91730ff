"""``runtime``: seconds to predict the field and apply it to the moving image.

The evaluator measures it (the paper timed only prediction and application, as every
other step is shared by all methods), synchronising the device before reading the clock;
this metric reports it so it lands in the same tables.
"""

from __future__ import annotations

from .base import Metric


class Runtime(Metric):
    higher_is_better = False
    title = "Runtime"
    unit = "s"

    def __call__(self, pair: dict) -> float:
        value = pair.get("runtime")
        return float("nan") if value is None else float(value)


def runtime() -> Runtime:
    """Prediction + application time in seconds (lower is better)."""
    return Runtime()
