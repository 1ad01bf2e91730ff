"""Writing a :class:`~ddmr_core.registration.register.RegistrationResult` to a folder, atomically.

Files (``OUTPUT_FILES``):

* ``fixed.nii.gz`` -- the fixed image on the output grid (the reference grid that ANTs'
  ``apply_transforms`` needs to reproduce ``warped``);
* ``warped.nii.gz`` -- the moving image warped onto it (original intensities, linear);
* ``warped_seg.nii.gz`` -- the moving label map warped (nearest), when one is given;
* ``field.nii.gz`` -- the field for ITK/ANTs/3D Slicer (LPS mm, :mod:`ddmr_core.data.field_io`);
  its header's description names the model, ``ddmr brain-mr@1 sha256:0123456789ab``;
* ``field.npz`` -- the voxel field with spacing and affine;
* ``overview.png`` -- fixed, moving, warped, checkerboard, deformation grid (mid slices);
* ``results.json`` -- the model (name, version, sha256), inputs, input warnings, output
  grid, timings and Dice/TRE before and after.

Everything is first written to a hidden temporary folder next to the destination, which
replaces the destination as a whole only once all of it succeeded
(:func:`ddmr_core.data.files.atomic_dir`): a failure or a kill leaves the destination as it was,
and files of an earlier run (say, ``warped_seg.nii.gz`` of a run with label maps) never
survive. An existing destination must be empty or an earlier ``ddmr register`` output.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator

import numpy as np

from ..data.field_io import save_field_itk, save_field_npz
from ..model.zoo import field_description
from ..data.files import atomic_dir, check_output_folder
from .figures import checkerboard, draw_deformation_grid

OUTPUT_FILES = (
    "fixed.nii.gz",
    "warped.nii.gz",
    "warped_seg.nii.gz",
    "field.nii.gz",
    "field.npz",
    "overview.png",
    "results.json",
)


#: what a batch run (``ddmr register --pairs``) adds beside the pair folders
SUMMARY_FILES = ("summary.json", "summary.csv")


def is_register_output(folder: str | Path) -> bool:
    """Whether ``folder`` holds only what ``ddmr register`` writes (one pair's files, or
    pair folders of those and the batch summaries), so that a new run may replace it."""
    def own_files(d: Path, allowed) -> bool:
        for e in d.iterdir():
            if e.name in allowed and e.is_file() and not e.is_symlink():
                continue
            if e.name.startswith(".") and ".ddmr-" in e.name:  # a temporary of ours
                continue
            if allowed is not OUTPUT_FILES and e.is_dir() and not e.is_symlink() and own_files(e, OUTPUT_FILES):
                continue
            return False
        return True

    folder = Path(folder)
    return folder.is_dir() and own_files(folder, OUTPUT_FILES + SUMMARY_FILES)


@contextlib.contextmanager
def atomic_output(out_dir: str | Path, option: str = "--out") -> Iterator[Path]:
    """:func:`ddmr_core.data.files.atomic_dir` for register outputs: an existing ``out_dir`` is
    replaced as a whole if it is empty or an earlier ``ddmr register`` output, refused
    otherwise (nothing in it is deleted)."""
    with atomic_dir(out_dir, option, replaceable=is_register_output, what="ddmr register") as tmp:
        yield tmp


def check_out(out_dir: str | Path, option: str = "--out") -> Path:
    """Before any work: ``out_dir`` can be written, and replaced if it exists."""
    return check_output_folder(out_dir, option, replaceable=is_register_output, what="ddmr register")


def write_into(result, folder: str | Path) -> list[str]:
    """Write every output of ``result`` into an existing ``folder`` (not atomic);
    returns the file names written."""
    from ..data.io import save_image, save_label_map

    folder = Path(folder)
    written = []
    save_image(folder / "fixed.nii.gz", result.fixed, result.affine)
    save_image(folder / "warped.nii.gz", result.warped, result.affine)
    written += ["fixed.nii.gz", "warped.nii.gz"]
    if result.warped_seg is not None:
        save_label_map(folder / "warped_seg.nii.gz", result.warped_seg, result.affine)
        written.append("warped_seg.nii.gz")
    # which model made the field travels in its header: "ddmr brain-mr@1 sha256:0123456789ab"
    desc = field_description(result.model) if result.model else None
    save_field_itk(folder / "field.nii.gz", result.disp, result.affine, description=desc)
    save_field_npz(folder / "field.npz", result.disp, result.spacing, result.affine)
    written += ["field.nii.gz", "field.npz"]
    save_overview(folder / "overview.png", result)
    written.append("overview.png")
    summary = result.summary()
    summary["files"] = written + ["results.json"]
    (folder / "results.json").write_text(json.dumps(summary, indent=2, allow_nan=False))
    written.append("results.json")
    return written


def write_outputs(result, out_dir: str | Path) -> Path:
    """Write ``result`` into ``out_dir`` atomically (see :func:`atomic_output`)."""
    with atomic_output(out_dir) as tmp:
        write_into(result, tmp)
    return Path(out_dir)


# ----------------------------------------------------------------- figure


def _normalise(img: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(img, (1, 99)) if img.size else (0.0, 1.0)
    if hi <= lo:
        return np.zeros_like(img, dtype=np.float32)
    return np.clip((img - lo) / (hi - lo), 0, 1).astype(np.float32)


def save_overview(path: str | Path, result, step: int | None = None) -> Path:
    """PNG with five panels on the middle slice of array axis 2: fixed, moving (before),
    warped, fixed/warped checkerboard, and the deformed grid of the field.

    Axis 0 runs left-right and axis 1 bottom-top, with the aspect ratio of the spacing."""
    # an Agg canvas of its own: no pyplot, no global backend, works headless
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    k = result.warped.shape[2] // 2
    fixed = _normalise(result.fixed[:, :, k])
    moving = _normalise(result.moving[:, :, k])
    warped = _normalise(result.warped[:, :, k])
    sp = result.spacing
    aspect = float(sp[1] / sp[0])
    fig = Figure(figsize=(17, 3.8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 5)
    panels = [("fixed", fixed), ("moving", moving), ("warped", warped), ("checkerboard", checkerboard(fixed, warped))]
    for ax, (title, img) in zip(axes, panels):
        ax.imshow(img.T, cmap="gray", origin="lower", vmin=0, vmax=1, aspect=aspect)
        ax.set_title(title)
    ax = axes[4]
    ax.set_title("deformation grid")
    draw_deformation_grid(ax, result.disp[:2, :, :, k], step)
    ax.set_aspect(aspect)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"slice {k} of axis 2 (output grid {tuple(result.warped.shape)})", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=80)
    return path
