"""``rigid``: random rotation about the image centre plus translation, in millimetres.

The step draws, per sample, three angles uniform in ``[-max_rotation, max_rotation]``
(degrees, about array axes 0, 1 and 2) and a translation uniform in the ball of radius
``max_translation`` mm. Coordinates are physical: voxel ``x`` sits at ``p = x * spacing``
(mm along the array axes), so an anisotropic grid is rotated as the real object would be.
The map from the fixed image to the moving one is

    phi(p) = R (p - c) + c + t,    c = the image centre,

whose pull field is ``disp_true``; its exact inverse ``R^T (q - c - t) + c`` renders the
moving image. Both are affine, ``u(x) = A x + b`` in voxels, and the pipeline evaluates
them in closed form (:func:`ddmr_core.data.augment.add_geometric_step` with ``u_at``/``w_at``):
at every voxel when this is the first geometric step; after ``tps`` at the nodes of the
lattice its fields are held on -- exact for ``disp_true`` (trilinear upsampling reproduces
affine maps), an interpolation-level approximation for the rendering field (module
docstring of :mod:`ddmr_core.data.augment`). ``|t| <= max_translation``; the displacement at
the centre is ``t``, elsewhere rotation adds ``|(R - I)(p - c)|``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ddmr_core.data.augment import add_geometric_step, check_non_negative, draw
from ddmr_core.errors import ConfigError
from ddmr_core.spatial.grids import affine_displacement, voxel_affine


def rotation_matrix(angles: torch.Tensor) -> torch.Tensor:
    """``(B, 3)`` angles in radians about axes 0, 1, 2 -> ``(B, 3, 3)`` ``R0 @ R1 @ R2``."""
    c, s = angles.cos(), angles.sin()
    one, zero = torch.ones_like(c[:, 0]), torch.zeros_like(c[:, 0])

    def rot(i, j, k):  # rotation about axis k, in the plane of axes (i, j)
        m = torch.stack([one, zero, zero, zero, one, zero, zero, zero, one], -1).view(-1, 3, 3).clone()
        m[:, i, i], m[:, i, j], m[:, j, i], m[:, j, j] = c[:, k], -s[:, k], s[:, k], c[:, k]
        return m

    return rot(1, 2, 0) @ rot(2, 0, 1) @ rot(0, 1, 2)


class Rigid(nn.Module):
    """Random rigid transformation.

    Args:
        max_rotation: largest angle about each axis, degrees, in [0, 180] (paper: 10).
        max_translation: largest translation length, mm (paper: 30).
    """

    def __init__(self, max_rotation: float = 10.0, max_translation: float = 30.0):
        super().__init__()
        check_non_negative("rigid", "max_rotation", max_rotation)
        if max_rotation > 180:
            raise ConfigError(
                f"augmenter 'rigid': parameter 'max_rotation' must be at most 180 degrees, got {max_rotation!r}"
            )
        check_non_negative("rigid", "max_translation", max_translation)
        self.max_rotation = float(max_rotation)
        self.max_translation = float(max_translation)

    def extra_repr(self) -> str:
        return f"max_rotation={self.max_rotation} deg, max_translation={self.max_translation} mm"

    def draw_parameters(self, state):
        """``(angles (B, 3) radians, translation (B, 3) mm)`` from the sample generators."""

        def one(g):
            ang = (torch.rand(3, generator=g, dtype=torch.float64) * 2 - 1) * math.radians(self.max_rotation)
            v = torch.randn(3, generator=g, dtype=torch.float64)
            rad = torch.rand(1, generator=g, dtype=torch.float64).pow(1.0 / 3.0) * self.max_translation
            return torch.cat([ang, v / v.norm().clamp_min(1e-12) * rad])

        params = draw(state, one, dtype=torch.float64)
        return params[:, :3], params[:, 3:]

    @staticmethod
    def maps(angles, translation, shape, spacing):
        """``(R, offset, R^T, offset_inv)`` of ``phi`` and its inverse, float64, mm."""
        R = rotation_matrix(angles)
        extent = torch.tensor([n - 1 for n in shape], dtype=torch.float64, device=R.device)
        c = extent / 2 * spacing.double()  # (B, 3) centre in mm
        t = translation
        # phi(p) = R p + (c - R c + t);  phi^-1(q) = R^T q + (c - R^T (c + t))
        off = c - (R @ c.unsqueeze(-1)).squeeze(-1) + t
        Rt = R.transpose(1, 2)
        off_inv = c - (Rt @ (c + t).unsqueeze(-1)).squeeze(-1)
        return R, off, Rt, off_inv

    def forward(self, state):
        fixed = state["fixed"]
        shape = tuple(fixed.shape[2:])
        angles, t = self.draw_parameters(state)
        R, off, Rt, off_inv = self.maps(angles, t, shape, state["spacing"])
        A, b = voxel_affine(R, off, state["spacing"])
        Ai, bi = voxel_affine(Rt, off_inv, state["spacing"])
        # The map is affine: the pipeline evaluates it, and its inverse, in closed form
        # wherever it needs them -- on the lattice its fields are held on, if any.
        return add_geometric_step(
            state, None, None,
            u_at=lambda p: affine_displacement(A, b, p),
            w_at=lambda p: affine_displacement(Ai, bi, p),
        )
