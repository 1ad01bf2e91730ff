"""Supervised field loss, called ``(disp, disp_true)`` on ``(B, 3, D, H, W)`` voxel fields.

* ``epe``: mean end-point error, ``mean_x |u(x) - u_true(x)|`` (Euclidean norm, voxels).

Not in the paper, which trained on the registration result only (weakly supervised,
section 2.4). Every pair the augmentation layer makes carries its ground-truth field
``disp_true``, so the field itself can be supervised too; ``RegistrationModel``'s
``supervision`` option adds such a term to any design (``docs/ARCHITECTURE.md``).
"""

from __future__ import annotations

import torch
from torch import nn

from .common import check_field


class EndPointError(nn.Module):
    """Mean Euclidean distance between predicted and true displacements, in voxels.

    Args:
        eps: added under the square root so the gradient stays finite where the two agree.
    """

    inputs = "displacement"

    def __init__(self, eps: float = 1e-6):
        super().__init__()
        self.eps = float(eps)

    def forward(self, disp: torch.Tensor, disp_true: torch.Tensor) -> torch.Tensor:
        check_field(disp, "epe")
        check_field(disp_true, "epe (disp_true)")
        if disp.shape != disp_true.shape:
            from ddmr_core.errors import DataError

            raise DataError(f"loss epe: fields must have the same shape, got {tuple(disp.shape)} "
                            f"and {tuple(disp_true.shape)}")
        return torch.sqrt((disp - disp_true).pow(2).sum(1) + self.eps).mean()


def epe(eps: float = 1e-6) -> EndPointError:
    return EndPointError(eps)
