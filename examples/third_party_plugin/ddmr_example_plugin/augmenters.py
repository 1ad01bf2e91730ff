"""Additive Gaussian noise on the moving image, an intensity augmenter.

It follows ddmr's augmenter contract (``ddmr_core.data.augment``): a module mapping the
pipeline's state dict to a state dict, drawing its random numbers through
``ddmr_core.data.augment.draw`` so pairs stay reproducible from (seed, sample index).
"""

import torch
from torch import nn

from ddmr_core.data.augment import check_non_negative, draw


class GaussianNoise(nn.Module):
    """Args:
        max_sigma: the noise standard deviation is ``U(0, max_sigma)`` per sample
            (intensities are in [0, 1]); the result is clipped to [0, 1].
    """

    def __init__(self, max_sigma: float = 0.05):
        super().__init__()
        check_non_negative("gaussian_noise", "max_sigma", max_sigma)
        self.max_sigma = float(max_sigma)

    def forward(self, state):
        moving = state["moving"]
        shape = tuple(moving.shape[1:])
        sigma = draw(state, lambda g: torch.rand(1, generator=g) * self.max_sigma)
        noise = draw(state, lambda g: torch.randn(shape, generator=g))
        state["moving"] = (moving + sigma.view(-1, 1, 1, 1, 1) * noise).clamp(0, 1)
        return state
