"""Image similarity between the fixed and the warped image: ``ssim`` and ``ncc``.

Both are computed on the images as the evaluator gives them (normalised to [0, 1]).
"""

from __future__ import annotations

import numpy as np
import torch

from ddmr_core.spatial.similarity import global_ncc, local_ncc, ssim_map

from .base import Metric


def _tensor(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float32))[None, None]


class SSIM(Metric):
    """Structural similarity, mean over the voxels whose window fits in the volume
    (:func:`ddmr_core.spatial.similarity.ssim_map`, the one the ``ssim`` loss uses).

    Defaults follow scikit-image's ``structural_similarity``: a 7^3 uniform window,
    K1 = 0.01, K2 = 0.03 (population covariances: within 1e-3 of scikit-image's sample ones).

    Args:
        win_size: window side in voxels.
        kernel: ``"uniform"`` or ``"gaussian"`` (sigma 1.5).
        data_range: intensity range; ``None`` uses the fixed image's ``max - min``.
    """

    higher_is_better = True
    title = "SSIM"

    def __init__(self, win_size: int = 7, kernel: str = "uniform", data_range: float | None = 1.0):
        self.win_size = int(win_size)
        self.kernel = kernel
        self.data_range = data_range

    def __call__(self, pair: dict) -> float:
        fixed, warped = pair["fixed"], pair["warped"]
        rng = self.data_range
        if rng is None:
            rng = float(np.max(fixed) - np.min(fixed)) or 1.0
        return float(ssim_map(_tensor(warped), _tensor(fixed), self.win_size, self.kernel, 1.5, float(rng)).mean())


class NCC(Metric):
    """Normalised cross-correlation between fixed and warped image
    (:mod:`ddmr_core.spatial.similarity`, in float64).

    With ``win`` set (default 9, voxelmorph's and the original DDMR's window), the local
    NCC: the squared correlation coefficient in a ``win^3`` window around every voxel
    (zero padding), averaged over the volume; windows where either image is constant
    count as 0 (voxelmorph's convention, which is why background lowers the value). With
    ``win=None``, the global Pearson correlation of the two volumes.
    """

    higher_is_better = True
    title = "NCC"

    def __init__(self, win: int | None = 9, eps: float = 1e-8):
        self.win = None if win is None else int(win)
        self.eps = eps

    def __call__(self, pair: dict) -> float:
        i = torch.from_numpy(np.asarray(pair["fixed"], dtype=np.float64))[None, None]
        j = torch.from_numpy(np.asarray(pair["warped"], dtype=np.float64))[None, None]
        if self.win is None:  # NaN when an image is constant: the correlation is undefined
            return float(global_ncc(i, j, eps=0.0)[0])
        if self.win % 2 == 0:
            raise ValueError(f"ncc window must be odd, got {self.win}")
        return float(local_ncc(i, j, self.win, self.eps)[0])


def ssim(win_size: int = 7, kernel: str = "uniform", data_range: float | None = 1.0) -> SSIM:
    """SSIM of warped vs fixed (higher is better)."""
    return SSIM(win_size, kernel, data_range)


def ncc(win: int | None = 9) -> NCC:
    """Local (``win``) or global (``win=None``) NCC of warped vs fixed (higher is better)."""
    return NCC(win)
