"""Image filters shared by the core and the plugins.

Tensors: images ``(B, C, D, H, W)``; widths in voxels of their grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_blur(img: torch.Tensor, sigma) -> torch.Tensor:
    """Separable Gaussian blur of ``(B, 1, D, H, W)`` with ``sigma`` voxels, one per sample
    (``(B,)`` tensor) or one for all (a number); 0: unchanged. Kernel radius
    ``ceil(3 sigma_max)``, normalised; reflect padding (replicate on an axis shorter than
    the radius): :func:`scipy.ndimage.gaussian_filter` with ``mode="mirror"``, whose
    kernel ends at ``int(truncate sigma + 0.5)`` instead."""
    b = img.shape[0]
    sigma = torch.as_tensor(sigma, dtype=img.dtype, device=img.device).reshape(-1).expand(b)
    smax = float(sigma.max())
    if smax < 1e-3:
        return img
    r = max(1, int(3 * smax + 0.999))
    x = torch.arange(-r, r + 1, device=img.device, dtype=img.dtype)
    s = sigma.clamp_min(1e-3).view(-1, 1)
    k = torch.exp(-0.5 * (x[None] / s) ** 2)
    k = k / k.sum(1, keepdim=True)  # (B, 2r+1); sigma ~ 0 gives a delta
    out = img.transpose(0, 1)  # (1, B, ...): one group per sample
    for axis in range(3):
        shape = [b, 1, 1, 1, 1]
        shape[2 + axis] = 2 * r + 1
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = r
        mode = "reflect" if min(out.shape[2:]) > r else "replicate"
        out = F.conv3d(F.pad(out, pad, mode=mode), k.view(shape), groups=b)
    return out.transpose(0, 1)
