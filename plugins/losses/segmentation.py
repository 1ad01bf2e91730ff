"""Segmentation losses, called ``(warped_segs, fixed_segs)`` on one-hot ``(B, L, D, H, W)``
maps over the foreground labels (no background channel; see ``docs/ARCHITECTURE.md``).

* ``dice``: soft multi-label Dice, ``1 - mean_l DSC_l`` (MONAI ``DiceLoss``);
* ``hausdorff``: differentiable distance-transform Hausdorff loss of Karimi and
  Salcudean (MONAI ``HausdorffDTLoss``): ``mean((p - t)^2 * (d_p^a + d_t^a))`` with
  ``d_p``, ``d_t`` the (non-differentiated) distance-to-boundary maps, in voxels.
  The distance maps come from :func:`distance_transform` on the GPU for CUDA tensors and
  from the ``edt`` package on the CPU (MONAI's own use SciPy on the CPU, copying CUDA tensors).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

from .common import MonaiBacked, check_pair


class DiceLoss(MonaiBacked):
    """``1 - DSC`` averaged over labels and samples. Soft: ``DSC = 2 sum(p t) / (sum p + sum t)``.

    Args:
        smooth: added to numerator and denominator; a label absent from both maps scores 1.
    """

    inputs = "segmentation"

    def __init__(self, smooth: float = 1e-5):
        def make():
            from monai.losses import DiceLoss as _MonaiDice

            # include_background=True: every channel here is a foreground label.
            return _MonaiDice(include_background=True, smooth_nr=smooth, smooth_dr=smooth)

        super().__init__(make)

    def forward(self, warped_segs: torch.Tensor, fixed_segs: torch.Tensor) -> torch.Tensor:
        check_pair(warped_segs, fixed_segs, "dice")
        return self.inner(warped_segs, fixed_segs)


def _min_plus_pass(sq: torch.Tensor, dim: int, chunk_bytes: int) -> torch.Tensor:
    """One separable pass of the squared distance transform along ``dim``:
    ``out[x] = min_y sq[y] + (x - y)^2`` (Saito and Toriwaki), in chunks of lines."""
    n = sq.shape[dim]
    moved = sq.movedim(dim, -1)
    lines = moved.reshape(-1, n)
    pos = torch.arange(n, device=sq.device, dtype=sq.dtype)
    offsets = (pos[:, None] - pos[None, :]) ** 2  # (x, y)
    out = torch.empty_like(lines)
    step = max(1, chunk_bytes // (n * n * lines.element_size()))
    for i in range(0, lines.shape[0], step):
        out[i:i + step] = (lines[i:i + step, None, :] + offsets).amin(dim=-1)
    return out.view(moved.shape).movedim(-1, dim)


@torch.no_grad()
def distance_transform(mask: torch.Tensor, chunk_bytes: int = 1 << 28) -> torch.Tensor:
    """Exact Euclidean distance, in voxels, from every ``True`` voxel of each volume to the nearest
    ``False`` voxel (0 on ``False`` voxels), as ``scipy.ndimage.distance_transform_edt``.

    ``mask``: bool ``(..., D, H, W)``; every leading index is one volume. A volume without a
    ``False`` voxel gets 0 everywhere (SciPy measures to a voxel outside the grid instead; the
    loss below never asks for one). Brute-force separable passes, ``O(n)`` per voxel and axis:
    suited to a GPU; on a CPU the loss uses ``edt`` instead. ``chunk_bytes`` bounds the
    temporary ``(lines, n, n)`` tensor of a pass.
    """
    big = float(sum(n * n for n in mask.shape[-3:]) + 1)  # above any squared distance in the grid
    sq = torch.where(mask, torch.tensor(big, device=mask.device), torch.tensor(0.0, device=mask.device))
    for dim in (-3, -2, -1):
        sq = _min_plus_pass(sq, sq.dim() + dim, chunk_bytes)
    return torch.where(sq >= big, torch.zeros_like(sq), sq.sqrt())


def _edt_both_sides(fg: torch.Tensor) -> torch.Tensor:
    """``distance_transform(fg) + distance_transform(~fg)`` of one ``(D, H, W)`` CPU mask with the
    ``edt`` package: labelling foreground 2 and background 1, its multi-label transform gives
    every voxel its distance to the other side in one pass."""
    import edt

    labels = fg.numpy().astype(np.uint8) + 1
    return torch.from_numpy(edt.edt(labels, black_border=False, parallel=max(1, torch.get_num_threads())))


@functools.lru_cache(maxsize=None)
def _monai_hausdorff() -> type:
    """MONAI's ``HausdorffDTLoss`` with faster distance maps: torch on CUDA tensors (MONAI would
    copy every map to the CPU for SciPy unless cuCIM is installed), ``edt`` on the CPU.
    A class made on first use: MONAI is imported lazily, as by the other loss plugins."""
    from monai.losses import HausdorffDTLoss

    class DeviceHausdorffDTLoss(HausdorffDTLoss):
        torch_distance: bool | None = None  # None: torch on CUDA tensors, edt otherwise

        def distance_field(self, img: torch.Tensor) -> torch.Tensor:
            # img: (B, 1, D, H, W) probabilities of one label; the distance of every voxel to the
            # mask's boundary (foreground side plus background side). As MONAI, a sample whose
            # mask is all foreground or all background gets 0.
            fg = img > 0.5
            flat = fg.flatten(1)
            defined = flat.any(1) & ~flat.all(1)
            if img.is_cuda if self.torch_distance is None else self.torch_distance:
                field = distance_transform(fg) + distance_transform(~fg)
                return field * defined.view(-1, *[1] * (img.dim() - 1))
            field = torch.zeros(img.shape, dtype=torch.float32)
            for b in range(img.shape[0]):
                if defined[b]:
                    field[b, 0] = _edt_both_sides(fg[b, 0].cpu())
            return field

    # picklable: pickle finds the class through the module's __getattr__ below
    DeviceHausdorffDTLoss.__module__, DeviceHausdorffDTLoss.__qualname__ = __name__, "DeviceHausdorffDTLoss"
    return DeviceHausdorffDTLoss


def __getattr__(name: str):
    if name == "DeviceHausdorffDTLoss":
        return _monai_hausdorff()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class HausdorffLoss(nn.Module):
    """Distance-transform Hausdorff loss (one-hot in, lower is better, 0 for identical maps).

    Args:
        alpha: exponent of the distances (2 as Karimi and Salcudean).
        normalise: divide distances by the largest grid side, so the loss does not grow
            with the resolution (keeps it on a scale comparable to the other terms).
    """

    inputs = "segmentation"

    def __init__(self, alpha: float = 2.0, normalise: bool = False):
        super().__init__()
        self.alpha, self.normalise = alpha, normalise
        self.inner = _monai_hausdorff()(alpha=alpha, include_background=True)

    def forward(self, warped_segs: torch.Tensor, fixed_segs: torch.Tensor) -> torch.Tensor:
        check_pair(warped_segs, fixed_segs, "hausdorff")
        loss = self.inner(warped_segs, fixed_segs)
        if self.normalise:
            loss = loss / float(max(warped_segs.shape[2:])) ** self.alpha
        return loss


def dice(smooth: float = 1e-5) -> DiceLoss:
    return DiceLoss(smooth)


def hausdorff(alpha: float = 2.0, normalise: bool = False) -> HausdorffLoss:
    return HausdorffLoss(alpha, normalise)
