"""Field regularisers, called ``(disp,)`` on ``(B, 3, D, H, W)`` voxel fields.

* ``grad_l2``: diffusion regulariser, mean over voxels and components of
  ``sum_j (du_i/dx_j)^2`` (MONAI ``DiffusionLoss``, central differences, interior voxels);
* ``bending``: bending energy, mean of ``sum_jk (d2u_i/dx_j dx_k)^2`` (MONAI ``BendingEnergyLoss``).

Derivatives are per voxel (field in voxels, so both are unitless).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from .common import MonaiBacked, check_field

# MONAI's finite differences index with lists of slices, which torch >= 2.9 warns about
# on every call; the result is correct (checked in tests/plugins/test_losses.py).
warnings.filterwarnings("ignore", message="Using a non-tuple sequence", module="monai.losses.deform")


class GradL2(MonaiBacked):
    inputs = "field"

    def __init__(self):
        def make():
            from monai.losses import DiffusionLoss

            return DiffusionLoss()

        super().__init__(make)

    def forward(self, disp: torch.Tensor) -> torch.Tensor:
        check_field(disp, "grad_l2")
        return self.inner(disp)


class Bending(MonaiBacked):
    inputs = "field"

    def __init__(self):
        def make():
            from monai.losses import BendingEnergyLoss

            return BendingEnergyLoss()

        super().__init__(make)

    def forward(self, disp: torch.Tensor) -> torch.Tensor:
        check_field(disp, "bending")
        return self.inner(disp)


def grad_l2() -> GradL2:
    return GradL2()


def bending() -> Bending:
    return Bending()
