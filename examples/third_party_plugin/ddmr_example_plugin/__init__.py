"""Example ddmr plugin: one loss and one augmenter, registered through entry points."""

from ddmr_core.plugins.hookspecs import hookimpl

from .losses import TverskyLoss
from .augmenters import GaussianNoise


@hookimpl
def ddmr_losses():
    return {"tversky": TverskyLoss}


@hookimpl
def ddmr_augmenters():
    return {"gaussian_noise": GaussianNoise}
