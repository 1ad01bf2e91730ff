"""ddmr: deep deformable medical image registration, a plugin-based PyTorch toolkit.

Public entry points:

* :func:`ddmr_core.plugins.get_plugin_manager` -- the one factory building the pluggy manager;
* :class:`ddmr_core.registry.Registry` -- name -> factory maps per plugin kind, wired into gin;
* :mod:`ddmr_core.spatial` -- warping, field resizing/composition, Jacobians.
"""

__version__ = "0.1.0"
