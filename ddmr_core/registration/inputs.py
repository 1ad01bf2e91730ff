"""The two images of a registration as users give them: NIfTI paths, nibabel images, arrays
or tensors, read into ``(array (D, H, W), affine (4, 4) voxel->RAS mm)`` and checked
(:func:`read_volume`), each with its optional label map (:func:`_read_pair_side`, a
:class:`PairSide`), the moving one brought to the fixed one's axis orientation
(:func:`reorient_like`).

The names files are reported by (:func:`_describe`, :func:`_named`) are the registrar's
too: its error messages and ``results.json``'s ``inputs`` use them.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..data.io import as_image, as_label_map, check_same_grid, load_image, load_label_map, to_numpy


def _describe(obj, name: str) -> str:
    return str(obj) if isinstance(obj, (str, Path)) else name


def read_volume(obj, affine=None, *, name: str = "image", label: bool = False):
    """A path, nibabel image, array or tensor -> ``(array (D, H, W), affine (4, 4))``.

    Arrays without an affine get the identity (1 mm voxels); leading singleton axes
    (``(1, D, H, W)``, ``(1, 1, D, H, W)``) are dropped. Files are read by
    :func:`ddmr_core.data.io.load_image`/``load_label_map``, everything else checked as they
    check files (:func:`ddmr_core.data.io.as_image`/``as_label_map``): :class:`DataError`
    naming ``obj`` (or ``name``) for missing/unreadable files and non-3-D volumes."""
    if isinstance(obj, (str, Path)):
        return load_label_map(obj) if label else load_image(obj)
    if hasattr(obj, "dataobj") and hasattr(obj, "affine"):  # nibabel image
        data, aff = np.asarray(obj.dataobj), obj.affine
    else:
        data, aff = to_numpy(obj), (np.eye(4) if affine is None else affine)
    while data.ndim > 3 and data.shape[0] == 1:
        data = data[0]
    return (as_label_map if label else as_image)(data, aff, name)


def _named(what: str, name: str) -> str:
    """``"fixed image 'F.nii.gz'"`` for a file, ``"fixed image"`` for an array."""
    return what if name == what else f"{what} {name!r}"


class PairSide(NamedTuple):
    """One side of a pair as read: ``image`` ``(D, H, W)`` as :func:`read_volume` gives it,
    ``seg`` its label map on the same grid (``None``: none given), ``affine`` the
    ``(4, 4)`` voxel->RAS mm map of both, ``name`` the file's path (or ``what`` for an
    array) and ``what`` the side (``"fixed image"``, ``"moving image"``)."""

    image: np.ndarray
    seg: np.ndarray | None
    affine: np.ndarray
    name: str
    what: str

    @property
    def named(self) -> str:
        """How messages name it (:func:`_named`)."""
        return _named(self.what, self.name)


def _read_pair_side(image, seg, affine, what: str) -> PairSide:
    img_name = _describe(image, what)
    img, aff = read_volume(image, affine, name=img_name)
    if seg is None:
        return PairSide(img, None, aff, img_name, what)
    seg_name = _describe(seg, f"{what} segmentation")
    lab, seg_aff = read_volume(seg, aff, name=seg_name, label=True)
    check_same_grid(img.shape, aff, lab.shape, seg_aff, img_name, seg_name)
    return PairSide(img, lab, aff, img_name, what)


def reorient_like(image, seg, affine, reference_affine):
    """Permute/flip the array axes of ``image`` (and ``seg``) to the axis orientation of
    ``reference_affine`` (exact: no interpolation), returning the new arrays and affine.

    The network compares the two images voxel by voxel, so a moving image stored in
    another orientation (e.g. LPS vs RAS, or sagittal slices) must be brought to the
    fixed image's before it sees them."""
    import nibabel.orientations as nio

    src, dst = nio.io_orientation(affine), nio.io_orientation(reference_affine)
    if np.array_equal(src, dst):
        return image, seg, affine
    tr = nio.ornt_transform(src, dst)
    new_affine = np.asarray(affine, dtype=np.float64) @ nio.inv_ornt_aff(tr, image.shape)
    image = np.ascontiguousarray(nio.apply_orientation(image, tr))
    if seg is not None:
        seg = np.ascontiguousarray(nio.apply_orientation(seg, tr))
    return image, seg, new_affine
