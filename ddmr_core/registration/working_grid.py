"""The *working grid*: a user's image put through a checkpoint's recipe
(:class:`~ddmr_core.data.preprocess.Preprocess`) up to, not including, the resize to the
network grid: the crop (:func:`crop_mode`), the resampling to the recipe's spacing, but
never finer than the fixed image's own (:func:`working_spacing`), the intensities
(:func:`to_working_grid`). The registrar predicts and refines the field on the fixed
image's working grid ``F_w``; the moving image is resized to its shape, on ``M_w``
(:func:`working_grids`).
"""

from __future__ import annotations

import numpy as np

from ..data.io import spacing_from_affine
from ..data.preprocess import Preprocess
from .inputs import PairSide


def crop_mode(preprocess: Preprocess, fixed_seg, moving_seg) -> str:
    """What the recipe crops around: ``"none"`` (it does not crop), ``"labels"`` (it
    crops around labels and both images have label maps holding them, as in
    training) or ``"foreground"`` (it crops around labels but a label map is missing,
    or lacks those labels, say another atlas's numbering: each image is cropped to its
    foreground, :meth:`ddmr_core.data.preprocess.Preprocess.foreground`)."""
    if preprocess.crop_labels is None:
        return "none"
    return "labels" if preprocess.crops_around(fixed_seg) and preprocess.crops_around(moving_seg) else "foreground"


def working_spacing(preprocess: Preprocess, fixed_affine) -> tuple | None:
    """The working grid's spacing (mm per array axis) for a fixed image on
    ``fixed_affine``: the recipe's spacing, but never finer than the fixed image's own
    (a 2 mm scan is registered on a 2 mm grid, not upsampled to the recipe's 1 mm:
    8 times fewer voxels to refine and resample, and no detail the scan lacks).
    ``None``: a recipe that keeps the images' grids."""
    if preprocess.spacing is None:
        return None
    own = spacing_from_affine(np.asarray(fixed_affine, dtype=np.float64))
    return tuple(float(max(r, s)) for r, s in zip(preprocess.spacing, own))


def to_working_grid(preprocess: Preprocess, image, seg, affine, name, crop: str, shape=None, spacing=None):
    """One image through the checkpoint's recipe up to, not including, its resize to
    the network grid (that is :meth:`~ddmr_core.registration.register.Registrar.predict`'s):
    crop, resampling to ``spacing`` (:func:`working_spacing`; ``None``: the recipe's),
    intensities. ``shape``: resize to it at the end, keeping the field of view (the moving
    image goes to the fixed image's working shape). Returns ``(image float32 in [0, 1],
    affine)``."""
    pre = preprocess.replace(size=None if shape is None else tuple(int(n) for n in shape))
    if spacing is not None:
        pre = pre.replace(spacing=spacing)
    img, _, aff = pre.apply(image, affine, seg, name=name, crop="labels" if crop == "labels" else "foreground",
                            resample_seg=False)
    return img, aff


def working_grids(preprocess: Preprocess, fix: PairSide, mov: PairSide, crop: str):
    """Both images of a pair on their working grids (:func:`to_working_grid`, with ``crop``
    from :func:`crop_mode`): ``((fixed, F_w), (moving, M_w))``, float32 ``(D, H, W)`` in
    [0, 1] with their ``(4, 4)`` affines; the moving image has the fixed image's working
    shape."""
    spacing = working_spacing(preprocess, fix.affine)
    f_w, Fw = to_working_grid(preprocess, fix.image, fix.seg, fix.affine, fix.name, crop, spacing=spacing)
    m_w, Mw = to_working_grid(preprocess, mov.image, mov.seg, mov.affine, mov.name, crop, shape=f_w.shape,
                              spacing=spacing)
    return (f_w, Fw), (m_w, Mw)
