"""Adam for the optimisations that run at inference (refinement, prealignment).

``torch.optim`` is not used there: building its first optimiser imports ``torch._dynamo``,
which costs every ``ddmr register`` process more than the optimisation itself. The update
is PyTorch's ``torch.optim.Adam`` (no weight decay, no amsgrad), checked against it in
``tests/core/test_refine.py``.
"""

from __future__ import annotations

import torch


class Adam:
    """Adam (Kingma and Ba) on a list of tensors with ``requires_grad``.

    ``step()`` reads each tensor's ``.grad`` (skipped where ``None``) and updates it in
    place; ``zero_grad()`` drops the gradients."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params = list(params)
        self.lr, self.eps = float(lr), float(eps)
        self.beta1, self.beta2 = (float(b) for b in betas)
        self.t = 0
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        c1 = 1.0 - self.beta1**self.t
        c2 = 1.0 - self.beta2**self.t
        for p, m, v in zip(self.params, self.m, self.v):
            if p.grad is None:
                continue
            g = p.grad
            m.lerp_(g, 1.0 - self.beta1)
            v.mul_(self.beta2).addcmul_(g, g, value=1.0 - self.beta2)
            denom = (v.sqrt() / c2**0.5).add_(self.eps)
            p.addcdiv_(m, denom, value=-self.lr / c1)
