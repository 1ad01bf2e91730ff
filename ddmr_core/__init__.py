"""ddmr: deep deformable medical image registration, a plugin-based PyTorch toolkit.

Public entry points:

* :func:`ddmr_core.plugins.manager.get_plugin_manager` -- the one factory building the pluggy manager;
* :class:`ddmr_core.plugins.registry.Registry` -- name -> factory maps per plugin kind, wired into gin;
* :mod:`ddmr_core.spatial.fields` -- warping, field resizing/composition, Jacobians.
"""

__version__ = "0.1.0"
