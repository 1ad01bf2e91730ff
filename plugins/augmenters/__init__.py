"""Built-in augmenters: steps of :class:`ddmr_core.data.augment.AugmentationPipeline`.

Each is an ``nn.Module`` mapping the pipeline's state dict to a new one (see
:mod:`ddmr_core.data.augment`); geometric steps (``tps``, ``rigid``) fold their field into the
ground truth, ``resize`` resamples everything, intensity steps (``gamma``, ``brightness``,
``normalize``, ``synth_contrast``) change intensities only.
"""

from ddmr_core.plugins.hookspecs import hookimpl


@hookimpl(trylast=True)
def ddmr_augmenters():
    from .brightness import Brightness
    from .contrast import SynthContrast
    from .gamma import Gamma
    from .normalize import Normalize
    from .resize import Resize
    from .rigid import Rigid
    from .tps import TPS

    return {"tps": TPS, "rigid": Rigid, "gamma": Gamma, "brightness": Brightness, "resize": Resize,
            "normalize": Normalize, "synth_contrast": SynthContrast}
