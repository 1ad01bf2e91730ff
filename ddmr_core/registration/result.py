"""What one registration gives: :class:`RegistrationResult`, the arrays on the output grid
with their metrics, timings and provenance, and its JSON summary (``results.json``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.io import spacing_from_affine


@dataclass
class RegistrationResult:
    """Everything one registration produces, on the output grid ``affine``.

    Arrays are ``(D, H, W)`` along the output grid's array axes; ``disp`` is the
    ``(3, D, H, W)`` voxel pull field of that grid into the moving image (the toolkit's
    convention, ``docs/ARCHITECTURE.md``), ``model_disp`` the predicted field on the fixed working grid
    ``model_affine`` (the network's, refined, before it is carried to the output grid)."""

    fixed: np.ndarray
    moving: np.ndarray  # moving image on the output grid before registration (world identity)
    warped: np.ndarray
    disp: np.ndarray
    affine: np.ndarray
    model_disp: np.ndarray
    model_affine: np.ndarray
    fixed_seg: np.ndarray | None = None
    moving_seg: np.ndarray | None = None  # before registration, on the output grid
    warped_seg: np.ndarray | None = None
    metrics: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)
    #: the model used: name, version, ref, sha256, checkpoint (:func:`ddmr_core.model.zoo.identify`)
    model: dict = field(default_factory=dict)
    #: input mismatches found (:meth:`~ddmr_core.registration.register.Registrar.check_inputs`), one line each
    warnings: list = field(default_factory=list)

    @property
    def spacing(self) -> np.ndarray:
        return spacing_from_affine(self.affine)

    def images(self) -> dict:
        """nibabel images of the outputs: ``fixed``, ``warped``, ``warped_seg`` (if any)."""
        import nibabel as nib

        out = {}
        for key in ("fixed", "warped", "warped_seg"):
            arr = getattr(self, key)
            if arr is None:
                continue
            img = nib.Nifti1Image(arr.astype(np.uint8 if key.endswith("seg") else np.float32), self.affine)
            img.set_sform(self.affine, code=1)
            img.set_qform(self.affine, code=1)
            out[key] = img
        return out

    def summary(self) -> dict:
        """JSON-ready dict: model (name, version, sha256), inputs, warnings, output grid,
        timings (s) and metrics."""
        return _jsonable(
            {
                "model": self.model,
                "inputs": self.inputs,
                "warnings": self.warnings,
                "output_shape": list(self.warped.shape),
                "output_spacing_mm": [float(s) for s in self.spacing],
                "output_affine": self.affine.tolist(),
                "timings_s": self.timings,
                "metrics": self.metrics,
            }
        )

    def save(self, out_dir: str | Path, outputs=None, compress: bool = True) -> Path:
        """Write the outputs into ``out_dir``: ``outputs`` names (``None``: all) of
        :data:`ddmr_core.registration.output.OUTPUTS`, ``.nii.gz`` or (``compress=False``)
        ``.nii`` (see :func:`ddmr_core.registration.output.write_outputs`)."""
        from .output import ALL_OUTPUTS, write_outputs

        return write_outputs(self, out_dir, ALL_OUTPUTS if outputs is None else outputs, compress)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    return obj
