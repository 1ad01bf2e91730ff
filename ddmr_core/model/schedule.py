"""Everything in a training run that depends on the optimiser step, in one object.

:class:`Schedule` holds the step-dependent factors: the learning rate's linear warm-up and
its cosine decay over the run's budget (read by the trainer's optimiser step), and the
supervision's ramp (read by :class:`~ddmr_core.model.registration_model.RegistrationModel`).
The model owns one (its ramp is part of the model's configuration); the trainer configures
its rate part at set-up and advances it after each optimiser step it takes. Out of training
(``model.eval()``, inference) nothing reads it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Schedule:
    """Attributes:
        step: optimiser steps taken so far (0 before the first); the trainer advances it.
        warmup_steps: the rate rises linearly from ``lr / warmup_steps`` to ``lr`` over the
            first optimiser steps (0: none).
        cosine: also decay the rate to 0 along a half cosine over the budget (``max_steps``
            or ``max_time``, whichever is further along).
        max_steps, max_time: the run's budget in optimiser steps and seconds (None: none).
        supervision_ramp: ``(start, end)`` optimiser steps: the supervision's weight is 0
            until ``start``, then rises linearly to full at ``end`` (``(0, 0)``: full from the
            start).
    """
    step: int = 0
    warmup_steps: int = 0
    cosine: bool = False
    max_steps: int | None = None
    max_time: float | None = None
    supervision_ramp: tuple[int, int] = (0, 0)

    def advance(self) -> None:
        """One more optimiser step taken."""
        self.step += 1

    def lr_factor(self, global_step: int, elapsed: float) -> float:
        """The factor on the scheduler's rate for the step being taken: the warm-up, times
        the cosine decay. ``global_step``: optimiser steps attempted, this one included
        (skipped non-finite steps count towards the budget); ``elapsed``: seconds of training."""
        k = self.step
        factor = (k + 1) / self.warmup_steps if k < self.warmup_steps else 1.0
        if self.cosine:
            done = 0.0
            if self.max_steps:
                # the step being taken was counted already: the first step has done = 0
                done = max(done, (global_step - 1) / self.max_steps)
            if self.max_time:
                done = max(done, elapsed / self.max_time)
            factor *= 0.5 * (1.0 + math.cos(math.pi * min(done, 1.0)))
        return factor

    def supervision_factor(self) -> float:
        """The factor on the supervision's weight at this step (the ramp)."""
        start, end = self.supervision_ramp
        if self.step >= end:
            return 1.0
        if self.step <= start:
            return 0.0
        return (self.step - start) / (end - start)
