"""Tversky loss: 1 - TP / (TP + alpha FP + beta FN), averaged over labels.

alpha = beta = 0.5 gives the soft Dice loss."""

import torch
from torch import nn


class TverskyLoss(nn.Module):
    inputs = "segmentation"  # called with (warped_segs, fixed_segs), one-hot (B, L, D, H, W)

    def __init__(self, alpha: float = 0.5, beta: float = 0.5, eps: float = 1e-6):
        super().__init__()
        if alpha < 0 or beta < 0:
            raise ValueError(f"alpha and beta must be non-negative, got {alpha}, {beta}")
        self.alpha, self.beta, self.eps = alpha, beta, eps

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(2, pred.dim()))
        tp = (pred * target).sum(dims)
        fp = (pred * (1 - target)).sum(dims)
        fn = ((1 - pred) * target).sum(dims)
        index = (tp + self.eps) / (tp + self.alpha * fp + self.beta * fn + self.eps)
        return 1.0 - index.mean()
