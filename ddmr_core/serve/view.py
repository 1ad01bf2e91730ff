"""A registration result prepared for viewing: slices on request, metrics, downloads.

:class:`ResultView` wraps one :class:`~ddmr_core.registration.result.RegistrationResult` (arrays on
its output grid) and keeps in memory what the page shows of it, computed once:

* the volumes brought to the closest RAS orientation of the output grid (an exact
  permutation/flip, ``nibabel.orientations``), so that display axis 0 runs left-right
  (sagittal slices), 1 posterior-anterior (coronal), 2 inferior-superior (axial), whatever
  the file's orientation; the pull field's components follow the same permutation and
  signs, in voxels of the display axes;
* the Jacobian determinant of the field (:func:`ddmr_core.spatial.fields.jacobian_determinant`,
  the ``ddmr jacobian`` map) and its folding percentage
  (:func:`~ddmr_core.spatial.fields.folding_percentage`);
* the displacement length in millimetres (``|A[:3, :3] u|``, ``A`` the output grid's
  affine);
* grey-level windows: the fixed image's own, and the moving image's for both the moving
  and the warped image (they hold the moving image's intensities).

A slice (:meth:`ResultView.slice_png`) is cut from these arrays and encoded when it is
asked for (:mod:`ddmr_core.serve.slices`): a slider move costs one small PNG per panel,
never a volume. The files to download are written on the first download, by the writers
``ddmr register`` and ``ddmr jacobian`` use (:func:`ddmr_core.registration.output.write_into`,
:func:`ddmr_core.data.io.save_image`), into the result's own folder, and served from there by
their fixed names (:data:`DOWNLOADS`) only.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from . import slices as sl

#: the pictures a slice can be rendered as
VIEWS = ("fixed", "moving", "warped", "checkerboard", "overlay", "grid", "magnitude", "jacobian")
#: display axes (after the reorientation to RAS) and the slices across them
AXIS_NAMES = ("sagittal", "coronal", "axial")
#: files a result offers for download: fixed name -> what it is
DOWNLOADS = {
    "field.nii.gz": "displacement field for ITK / SimpleITK / ANTs / 3D Slicer (LPS mm)",
    "warped.nii.gz": "moving image warped onto the fixed grid",
    "warped_seg.nii.gz": "moving label map warped (nearest neighbour)",
    "jacobian.nii.gz": "Jacobian determinant of the field",
    "field.npz": "voxel field, spacing and affine (NumPy)",
    "fixed.nii.gz": "fixed image on the output grid (the reference grid)",
    "results.json": "inputs, timings and metrics",
}


def _take(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The slice ``index`` across ``axis``: a 2-D array over the other two axes, in order."""
    return np.take(volume, index, axis=axis)


class ResultView:
    """One registration result as the web page shows it (see the module docstring).

    Args:
        result: the :class:`~ddmr_core.registration.result.RegistrationResult`.
        folder: the result's own folder (the downloads are written there on demand).
        label_names: ``{label: name}`` for the metrics table (default ``"label k"``).
        info: JSON-ready facts about the run for :meth:`summary` (model, source, ...).
    """

    def __init__(self, result, folder: str | Path, label_names: dict | None = None, info: dict | None = None):
        import nibabel.orientations as nio
        import torch

        from ..spatial.fields import folding_percentage, jacobian_determinant

        self.result = result
        self.folder = Path(folder)
        self.label_names = {int(k): str(v) for k, v in (label_names or {}).items()}
        self.info = dict(info or {})
        self._files_lock = threading.Lock()
        self._files_written = False

        affine = np.asarray(result.affine, np.float64)
        ornt = nio.io_orientation(affine)  # data axis p -> display axis ornt[p, 0], flipped if ornt[p, 1] < 0

        def canon(volume):
            return None if volume is None else nio.apply_orientation(volume, ornt)

        self.fixed, self.moving, self.warped = canon(result.fixed), canon(result.moving), canon(result.warped)
        self.fixed_seg, self.moving_seg = canon(result.fixed_seg), canon(result.moving_seg)
        self.warped_seg = canon(result.warped_seg)
        disp = np.asarray(result.disp, np.float32)  # (3, D, H, W) voxels of the output grid
        self.disp = [None, None, None]
        for p in range(3):
            # a flipped axis counts its voxels backwards: its component changes sign
            self.disp[int(ornt[p, 0])] = np.float32(ornt[p, 1]) * canon(disp[p])
        self.jacobian_data = jacobian_determinant(torch.from_numpy(disp)[None])[0].numpy()
        self.jacobian = canon(self.jacobian_data)
        mm = np.einsum("ij,jxyz->ixyz", affine[:3, :3].astype(np.float32), disp)
        self.magnitude = canon(np.sqrt((mm ** 2).sum(axis=0)))
        self.magnitude_max = float(np.percentile(self.magnitude, 99.5)) if self.magnitude.size else 0.0
        spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        self.spacing = [0.0] * 3
        for p in range(3):
            self.spacing[int(ornt[p, 0])] = float(spacing[p])
        self.shape = tuple(int(n) for n in self.fixed.shape)
        self.fixed_window = sl.window(self.fixed)
        self.moving_window = sl.window(self.moving)
        folded = int(np.count_nonzero(self.jacobian_data <= 0))
        self.jacobian_stats = {
            "folding_percent": folding_percentage(self.jacobian_data),
            "folded_voxels": folded,
            "voxels": int(self.jacobian_data.size),
            "min": float(self.jacobian_data.min()),
            "median": float(np.median(self.jacobian_data)),
            "max": float(self.jacobian_data.max()),
        }

    @property
    def has_labels(self) -> bool:
        return self.fixed_seg is not None and self.warped_seg is not None

    # -------------------------------------------------------------- slices
    def check_slice(self, axis: int, index: int) -> None:
        """Raise ``ValueError`` for an axis or slice index outside the volume."""
        if axis not in (0, 1, 2):
            raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
        if not 0 <= index < self.shape[axis]:
            raise ValueError(f"slice {index} is outside 0..{self.shape[axis] - 1} of axis {axis}")

    def picture(self, view: str, axis: int, index: int, labels: bool = False) -> np.ndarray:
        """The slice ``index`` across display ``axis`` as ``view`` (one of :data:`VIEWS`),
        an RGB ``uint8`` picture in screen order (:func:`ddmr_core.serve.slices.display`).
        ``labels`` blends the label maps over the fixed, moving and warped images."""
        if view not in VIEWS:
            raise ValueError(f"unknown view {view!r}; one of {', '.join(VIEWS)}")
        self.check_slice(axis, index)

        def fixed8():
            return sl.grey(_take(self.fixed, axis, index), *self.fixed_window)

        def moving8(volume):
            return sl.grey(_take(volume, axis, index), *self.moving_window)

        def with_labels(picture, seg):
            return sl.label_overlay(picture, _take(seg, axis, index)) if labels and seg is not None else picture

        if view == "fixed":
            pic = with_labels(sl.rgb(fixed8()), self.fixed_seg)
        elif view == "moving":
            pic = with_labels(sl.rgb(moving8(self.moving)), self.moving_seg)
        elif view == "warped":
            pic = with_labels(sl.rgb(moving8(self.warped)), self.warped_seg)
        elif view == "checkerboard":
            pic = sl.checkerboard_rgb(fixed8(), moving8(self.warped))
        elif view == "overlay":
            pic = sl.colour_overlay(fixed8(), moving8(self.warped))
        elif view == "grid":
            a, b = (i for i in range(3) if i != axis)
            pic = sl.grid_rgb(fixed8(), _take(self.disp[a], axis, index), _take(self.disp[b], axis, index))
        elif view == "magnitude":
            pic = sl.magnitude_rgb(_take(self.magnitude, axis, index), self.magnitude_max)
        else:
            pic = sl.jacobian_rgb(_take(self.jacobian, axis, index))
        return sl.display(pic)

    def slice_png(self, view: str, axis: int, index: int, labels: bool = False) -> bytes:
        """:meth:`picture` as PNG bytes."""
        return sl.png(self.picture(view, axis, index, labels))

    # ----------------------------------------------------------- downloads
    def available_downloads(self) -> list[str]:
        return [name for name in DOWNLOADS if name != "warped_seg.nii.gz" or self.result.warped_seg is not None]

    def download_path(self, name: str) -> Path | None:
        """The file ``name`` (one of :data:`DOWNLOADS`) in the result's folder, written on
        the first call; ``None`` for any other name. ``name`` only selects among the fixed
        names: it is never joined to a path itself."""
        from ..data.io import save_image
        from ..registration.output import write_into

        fixed_name = next((n for n in self.available_downloads() if n == name), None)
        if fixed_name is None:
            return None
        out = self.folder / "outputs"
        with self._files_lock:
            if not self._files_written:
                out.mkdir(parents=True, exist_ok=True)
                write_into(self.result, out)
                save_image(out / "jacobian.nii.gz", self.jacobian_data, self.result.affine)
                self._files_written = True
        return out / fixed_name

    # ------------------------------------------------------------- summary
    def metrics(self) -> dict:
        """NCC before/after, Dice (and TRE) per label with names, folding and the Jacobian."""
        before, after = self.result.metrics.get("before", {}), self.result.metrics.get("after", {})
        out = {"ncc": {"before": before.get("ncc"), "after": after.get("ncc")}, "jacobian": self.jacobian_stats}
        if "dice" in after:
            labels = sorted({int(k) for k in after["dice"]} | {int(k) for k in before.get("dice", {})})
            out["dice"] = [{"label": lab, "name": self.label_names.get(lab, f"label {lab}"),
                            "before": before.get("dice", {}).get(str(lab)), "after": after["dice"].get(str(lab)),
                            "tre_mm_before": before.get("tre_mm", {}).get(str(lab)),
                            "tre_mm_after": after.get("tre_mm", {}).get(str(lab))} for lab in labels]
            out["dice_mean"] = {"before": before.get("dice_mean"), "after": after.get("dice_mean")}
            out["tre_mm_mean"] = {"before": before.get("tre_mm_mean"), "after": after.get("tre_mm_mean")}
        return out

    def summary(self) -> dict:
        """What the page needs, JSON-ready: grid, axes, views, metrics, timings, downloads."""
        from ..registration.result import _jsonable

        t = self.result.timings
        axes = []
        for k, name in enumerate(AXIS_NAMES):
            a, b = (i for i in range(3) if i != k)
            axes.append({"axis": k, "name": name, "size": self.shape[k],
                         # width / height of a slice on screen, in millimetres
                         "aspect": (self.shape[a] * self.spacing[a]) / (self.shape[b] * self.spacing[b])})
        return _jsonable({
            **self.info,
            "shape": list(self.shape),
            "spacing_mm": self.spacing,
            "axes": axes,
            "views": list(VIEWS),
            "has_labels": self.has_labels,
            "magnitude_max_mm": self.magnitude_max,
            "metrics": self.metrics(),
            "timings_s": {**t, "registration": float(sum(t.values()))},
            "downloads": [{"name": n, "what": DOWNLOADS[n]} for n in self.available_downloads()],
        })
