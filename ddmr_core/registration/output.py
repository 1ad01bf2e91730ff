"""Writing a :class:`~ddmr_core.registration.result.RegistrationResult` to a folder, atomically.

Outputs (``OUTPUTS``; ``ddmr register --outputs`` chooses, ``DEFAULT_OUTPUTS`` by default,
the library's :meth:`~ddmr_core.registration.result.RegistrationResult.save` writes all):

* ``field`` -- ``field.nii.gz``, the field for ITK/ANTs/3D Slicer (LPS mm,
  :mod:`ddmr_core.data.field_io`); its header's description names the model,
  ``ddmr brain-mr@1 sha256:0123456789ab``;
* ``warped`` -- ``warped.nii.gz``, the moving image warped onto the output grid (original
  intensities, linear), and ``warped_seg.nii.gz``, the moving label map warped (nearest),
  when one is given;
* ``fixed`` -- ``fixed.nii.gz``, the fixed image on the output grid: the reference grid
  that ITK and ANTs need to apply the field. Written whenever the field or the warped
  image is and the output grid is not the fixed file's own (the working grid, without
  ``--original-resolution``);
* ``npz`` -- ``field.npz``, the voxel field with spacing and affine (NumPy);
* ``overview`` -- ``overview.png``: fixed, moving, warped, checkerboard, deformation grid
  (mid slices);
* ``results`` -- ``results.json``: the model (name, version, sha256), inputs, input
  warnings, output grid, timings, Dice/TRE before and after, the trust check and the
  files written.

Images and fields are ``.nii.gz`` (:func:`ddmr_core.data.io.write_nifti`), or ``.nii`` with
``compress=False`` (``--uncompressed``). Everything is first written to a hidden
temporary folder next to the destination, which replaces the destination as a whole only
once all of it succeeded (:func:`ddmr_core.data.files.atomic_dir`): a failure or a kill leaves the
destination as it was, and files of an earlier run (say, ``warped_seg.nii.gz`` of a run
with label maps) never survive. An existing destination must be empty or an earlier
``ddmr register`` output.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ..errors import DdmrError
from ..data.field_io import save_field_itk, save_field_npz
from ..model.zoo import field_description
from ..data.files import atomic_dir, check_output_folder
from .figures import checkerboard, draw_deformation_grid

#: ``--outputs`` names and the files each writes (``.nii.gz`` or, uncompressed, ``.nii``)
OUTPUTS = {
    "field": ("field.nii.gz",),
    "warped": ("warped.nii.gz", "warped_seg.nii.gz"),
    "fixed": ("fixed.nii.gz",),
    "npz": ("field.npz",),
    "overview": ("overview.png",),
    "results": ("results.json",),
}
#: what ``ddmr register`` writes unless ``--outputs`` says otherwise
DEFAULT_OUTPUTS = ("field", "warped", "results")
ALL_OUTPUTS = tuple(OUTPUTS)
#: every file name a register output folder may hold
OUTPUT_FILES = tuple(name for names in OUTPUTS.values() for name in names) + tuple(
    name[:-3] for names in OUTPUTS.values() for name in names if name.endswith(".nii.gz"))


def parse_outputs(text: str | Iterable[str]) -> tuple[str, ...]:
    """``"field,warped"`` (or names, or ``"all"``) -> the output names, checked."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    if names == ["all"]:
        return ALL_OUTPUTS
    unknown = [n for n in names if n not in OUTPUTS]
    if unknown or not names:
        raise DdmrError(f"--outputs: unknown output(s) {unknown or names!r}; choose among "
                        f"{', '.join(OUTPUTS)} (comma-separated), or all")
    return tuple(dict.fromkeys(names))


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


def write_into(result, folder: str | Path, outputs: Iterable[str] = ALL_OUTPUTS, compress: bool = True) -> list[str]:
    """Write the ``outputs`` (names of :data:`OUTPUTS`) of ``result`` into an existing
    ``folder`` (not atomic); returns the file names written. ``compress``: ``.nii.gz``
    (else ``.nii``)."""
    from ..data.io import save_image, save_label_map

    outputs = set(parse_outputs(outputs))
    if outputs & {"field", "warped"} and not result.inputs.get("original_resolution", True):
        outputs.add("fixed")  # the grid the field and warped image lie on: not the fixed file's
    ext = ".nii.gz" if compress else ".nii"
    folder = Path(folder)
    written = []
    if "fixed" in outputs:
        save_image(folder / f"fixed{ext}", result.fixed, result.affine)
        written.append(f"fixed{ext}")
    if "warped" in outputs:
        save_image(folder / f"warped{ext}", result.warped, result.affine)
        written.append(f"warped{ext}")
        if result.warped_seg is not None:
            save_label_map(folder / f"warped_seg{ext}", result.warped_seg, result.affine)
            written.append(f"warped_seg{ext}")
    if "field" in outputs:
        # which model made the field travels in its header: "ddmr brain-mr@1 sha256:0123456789ab"
        desc = field_description(result.model) if result.model else None
        save_field_itk(folder / f"field{ext}", result.disp, result.affine, description=desc)
        written.append(f"field{ext}")
    if "npz" in outputs:
        save_field_npz(folder / "field.npz", result.disp, result.spacing, result.affine)
        written.append("field.npz")
    if "overview" in outputs:
        save_overview(folder / "overview.png", result)
        written.append("overview.png")
    if "results" in outputs:
        summary = result.summary()
        summary["files"] = written + ["results.json"]
        (folder / "results.json").write_text(json.dumps(summary, indent=2, allow_nan=False))
        written.append("results.json")
    return written


def write_outputs(result, out_dir: str | Path, outputs: Iterable[str] = ALL_OUTPUTS, compress: bool = True) -> Path:
    """Write ``result``'s ``outputs`` into ``out_dir`` atomically (see :func:`atomic_output`)."""
    with atomic_output(out_dir) as tmp:
        write_into(result, tmp, outputs, compress)
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
