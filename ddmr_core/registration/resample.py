"""Every output of a registration on its output grid ``T``, from the model's field ``u`` on
the working grids (fixed voxel ``x`` corresponds to the world point ``M_w (x + u(x))``, see
:mod:`.register`) and the *original* files (:func:`resample_outputs`):

* output grid ``T``: the fixed working grid (default, ``T = F_w``) or, with
  ``original_resolution``, the fixed image's original grid (``T = F0``); there the
  field is interpolated at ``x = F_w^-1 T y`` (border padding outside the working
  grid, so the transform stays continuous);
* the exported field is ``w(y) = T^-1 M_w (x + u) - y`` (:func:`carry_field`): a voxel
  pull field of the output grid into the moving image's world position, in the toolkit's
  convention (``docs/ARCHITECTURE.md``, "Tensor conventions"). Written by
  :func:`ddmr_core.data.field_io.save_field_itk`, ITK/ANTs applying it to the original
  moving file reproduce ``warped`` (when fixed and moving share a grid and no
  preprocessing moves them, ``w`` is just the network's field);
* the warped image and label maps are ``w`` applied to the **original moving image**
  (:func:`apply_field`: original intensities; label maps nearest neighbour), as
  ``ddmr warp`` applies a saved field.

"Before" is the unregistered moving image and label map on the output grid: resampled
there by the identity in world coordinates.
"""

from __future__ import annotations

import numpy as np

from ..spatial.regrid import apply_field, apply_field_to_all, carry_field


def resample_outputs(disp, Fw, Mw, T, shape, f0, fs0, F0, m0, ms0, M0, interpolate_field):
    """Every output on the grid ``(T, shape)``, from the model field ``disp`` (3, d, h, w)
    pairing the working grids ``Fw`` (fixed) and ``Mw`` (moving) and the original volumes
    (see the module docstring).

    The exported field ``w`` (:func:`carry_field`) is the one result: the warped image and
    label map are ``w`` applied to the original moving volumes (:func:`apply_field`, as ITK
    applies ``field.nii.gz``), and "before" is the identity in world coordinates (the
    unregistered moving image on the output grid). Returns numpy arrays: ``fixed``,
    ``before``, ``warped``, ``disp`` and the label maps ``fixed_seg``, ``before_seg``,
    ``warped_seg`` (``None`` without segmentations)."""
    dev = disp.device
    w = carry_field(disp, Fw, Mw, T, shape, interpolate=interpolate_field)
    out = {"disp": w}

    def on_grid(volume, affine, labels=False):
        # the volume resampled onto the output grid by the identity; itself (not a copy)
        # when it lies there already (a moving image on the fixed image's grid)
        if tuple(volume.shape) == tuple(shape) and np.allclose(np.linalg.inv(affine) @ T, np.eye(4), atol=1e-6):
            return np.asarray(volume, np.uint8 if labels else np.float32)
        return apply_field(None, T, volume, affine, shape=shape, labels=labels, device=dev)

    # the moving image and its label map share a grid: sampled at the same positions
    moving = [m0] if ms0 is None else [m0, ms0]
    warped = apply_field_to_all(w, T, moving, M0, labels=[False, True][:len(moving)], device=dev)
    out["warped"] = warped[0]
    out["before"] = on_grid(m0, M0)
    out["fixed"] = on_grid(f0, F0)
    out["warped_seg"] = None if ms0 is None else warped[1]
    out["before_seg"] = None if ms0 is None else on_grid(ms0, M0, labels=True)
    out["fixed_seg"] = None if fs0 is None else on_grid(fs0, F0, labels=True)
    return out
