"""Properties of the displacement field: ``folding``, ``sdlogj`` and ``epe``.

Beyond the paper: ``folding`` and ``sdlogj`` measure how plausible a field is (Learn2Reg
reports both), ``epe`` how far it is from the known ground truth ``disp_true`` that the
test set stores for synthetic pairs.
"""

from __future__ import annotations

import numpy as np
import torch

from ddmr_core.spatial.fields import folding_percentage, jacobian_determinant

from .base import Metric, spacing_of


def _jacobian(disp) -> np.ndarray:
    # The determinant is the same in voxel and in mm units (J_mm = S J_vox S^-1).
    d = torch.as_tensor(np.asarray(disp, dtype=np.float32))[None]
    return jacobian_determinant(d)[0].double().numpy()


class Folding(Metric):
    """Percentage of voxels whose Jacobian determinant is not positive (0-100)."""

    higher_is_better = False
    title = "Folding"
    unit = "%"

    def __call__(self, pair: dict) -> float:
        return folding_percentage(_jacobian(pair["disp"]))


class SDLogJ(Metric):
    """Standard deviation of the log Jacobian determinant.

    Determinants are clipped to ``[clip, 1/clip]`` first (Learn2Reg clips at 1e-9), so
    folded voxels give a large but finite value."""

    higher_is_better = False
    title = "SDlogJ"

    def __init__(self, clip: float = 1e-9):
        self.clip = float(clip)

    def __call__(self, pair: dict) -> float:
        jac = np.clip(_jacobian(pair["disp"]), self.clip, 1.0 / self.clip)
        return float(np.log(jac).std())


class EPE(Metric):
    """End-point error (mm): mean over voxels of ``|disp - disp_true|``, each component
    scaled by its axis' spacing. NaN when the pair has no ``disp_true``."""

    higher_is_better = False
    title = "EPE"
    unit = "mm"

    def __call__(self, pair: dict) -> float:
        true = pair.get("disp_true")
        if true is None:
            return float("nan")
        disp = np.asarray(pair["disp"], dtype=np.float64)
        true = np.asarray(true, dtype=np.float64)
        if disp.shape != true.shape:
            raise ValueError(f"disp {disp.shape} and disp_true {true.shape} differ in shape")
        diff = (disp - true) * spacing_of(pair).reshape(3, 1, 1, 1)
        return float(np.sqrt((diff * diff).sum(axis=0)).mean())


def folding() -> Folding:
    """% of voxels with non-positive Jacobian determinant (lower is better)."""
    return Folding()


def sdlogj(clip: float = 1e-9) -> SDLogJ:
    """Standard deviation of the log Jacobian determinant (lower is better)."""
    return SDLogJ(clip)


def epe() -> EPE:
    """Mean end-point error against ``disp_true`` in mm (lower is better)."""
    return EPE()
