"""Built-in baselines: classical registration methods scored like the networks.

Each factory builds an object with ``register(fixed, moving, spacing) -> disp`` on NumPy
``(D, H, W)`` arrays, returning a ``(3, D, H, W)`` voxel pull field (the toolkit's
convention), and ``available()`` telling whether its library is installed.
"""

from ddmr_core.plugins.hookspecs import hookimpl


@hookimpl(trylast=True)
def ddmr_baselines():
    # antspyx is imported lazily inside the ANTs baselines: listing them must not
    # need the library (``available()`` reports whether it is there).
    from .ants import ants_syn, ants_syncc
    from .identity import identity

    return {"ants_syn": ants_syn, "ants_syncc": ants_syncc, "identity": identity}
