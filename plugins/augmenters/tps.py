"""``tps``: random thin-plate-spline deformation on a control grid (paper section 2.2).

Which direction is exact
------------------------
The step draws random displacements ``d_k`` (mm) at control points ``c_k`` (a regular
``grid`` spanning the image, plus optional points inside the foreground) and defines the
ground truth directly: this step's ``disp_true`` is the thin-plate-spline interpolant
``u(x) = sum_k a_k phi(|x - c_k|) + A x + b`` with ``u(c_k) = d_k`` and
``phi(r) = r^2 log r`` -- the kernel of ``scipy.interpolate.RBFInterpolator(kernel=
"thin_plate_spline")`` with its degree-1 polynomial (coordinates in mm). The moving image
is rendered with the *inverse* pull field ``w`` (``w(y) = -u(y + w(y))``), found by
fixed-point iteration. So ``u`` is the exact spline (up to the lattice evaluation below)
and ``w`` is the approximation.

Efficiency and accuracy
-----------------------
The spline is evaluated at a coarse lattice -- ``subdivisions`` nodes per control-grid
interval, ``(grid - 1) * subdivisions + 1`` per axis (at most the image size), spanning
the image from its first to its last voxel -- and upsampled trilinearly
(``align_corners=True``: nodes keep their exact values), so the cost does not grow with
the image. For the regular grid, the solve
(values -> coefficients) and the lattice evaluation (values -> lattice) are linear maps
that depend on the geometry only: they are computed once per (shape, spacing) with one
batched ``torch.linalg`` solve and cached, and a batch then costs two small matmuls on the
device. With foreground points the control points differ per sample, and each batch does
one batched ``(K + 4)``-square float64 solve plus an exact lattice evaluation.
The inverse is iterated on the lattice (cheap) too. The step hands both fields to the
pipeline on the lattice (:meth:`TPS.lattice_fields`); the pipeline keeps them there
through closed-form steps such as ``rigid`` and upsamples them once, when it renders the
pair (:mod:`ddmr_core.data.augment`); :meth:`TPS.fields` gives them at every voxel.

Accuracy: the lattice upsampling against the exact spline at every voxel and the
inverse's residual ``|u(x) + w(x + u(x))|`` stay within the sub-voxel bounds that
``tests/plugins/test_augment_tps.py`` asserts for the defaults (the errors are relative
to the grid, so the same at any spacing); a coarser lattice (``subdivisions=2``) costs
less and is less accurate.

Bounds
------
Control displacements are drawn uniformly in the ball of radius ``max_displacement``;
the interpolant can overshoot between control points, so each sample's coefficients are
scaled down (the spline is linear in them) until the largest displacement on the lattice is
at most ``max_displacement``. Trilinear upsampling is a convex combination, so no voxel of
the returned field exceeds it either; nor does ``w`` (its values are sampled from ``u``).
The spline is invertible only while it does not fold: keep ``2 * max_displacement`` well
under the control spacing (the paper: 12 mm against ~30 mm on 256 mm brains).

A singular system (duplicated control points, e.g. foreground points landing on grid
points) is detected (LU status, residual) and solved once more by pseudo-inverse (least
squares): never retried.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ddmr_core.data.augment import add_geometric_step, check_non_negative, draw, lattice_nodes, nodes_per_voxel
from ddmr_core.errors import ConfigError, DataError
from ddmr_core.spatial.fields import invert
from ddmr_core.spatial.grids import upsample_lattice

_CHUNK = 16384  # evaluation points per block: caps the (B, P, K) kernel matrix in memory


def _kernel(r2: torch.Tensor) -> torch.Tensor:
    """``phi(r) = r^2 log r`` from squared distances (``0`` at ``r = 0``)."""
    return 0.5 * r2 * torch.log(r2.clamp_min(1e-30))


def tps_system(points: torch.Tensor) -> torch.Tensor:
    """The ``(B, K + 4, K + 4)`` float64 TPS system matrix ``[[Phi, P], [P^T, 0]]`` of
    control points ``(B, K, 3)``, ``Phi = phi(|c_i - c_j|)``, ``P = [1, c]``."""
    p = points.double()
    B, K, _ = p.shape
    P = torch.cat([p.new_ones(B, K, 1), p], dim=2)
    A = p.new_zeros(B, K + 4, K + 4)
    A[:, :K, :K] = _kernel(torch.cdist(p, p).square())
    A[:, :K, K:] = P
    A[:, K:, :K] = P.transpose(1, 2)
    return A


def tps_design(points: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """``(B, Q, K + 4)`` matrix ``[phi(|q - c_k|), 1, q]`` in ``query``'s dtype, so that a
    spline's values at ``query`` are ``design @ coefficients``."""
    p = points.to(query.dtype)
    # |q - p|^2 expanded: one matmul instead of a (B, Q, K, 3) difference tensor
    r2 = query.square().sum(-1, keepdim=True) + p.square().sum(-1).unsqueeze(1) - 2 * query @ p.transpose(1, 2)
    return torch.cat([_kernel(r2.clamp_min(0)), torch.ones_like(query[..., :1]), query], dim=2)


def tps_fit(points: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Coefficients of the 3-D thin-plate spline through ``values`` at ``points``.

    Args:
        points: ``(B, K, 3)`` control points (any unit; ``K >= 4``, not all coplanar).
        values: ``(B, K, C)`` values there.

    Returns:
        ``(B, K + 4, C)`` float64: ``K`` kernel weights, then the constant and the three
        linear coefficients. Solved in one batched call; samples whose system is singular
        are solved by pseudo-inverse instead.
    """
    A = tps_system(points)
    B, C = A.shape[0], values.shape[2]
    rhs = torch.cat([values.double(), A.new_zeros(B, 4, C)], dim=1)
    sol, info = torch.linalg.solve_ex(A, rhs)
    # LU may not flag a numerically singular matrix; a residual check catches it too.
    resid = (A @ sol - rhs).flatten(1).norm(dim=1)
    bad = (info != 0) | ~torch.isfinite(sol).flatten(1).all(1) | (
        resid > 1e-6 * (1.0 + rhs.flatten(1).norm(dim=1))
    )
    if bool(bad.any()):
        sol = sol.clone()
        sol[bad] = torch.linalg.pinv(A[bad], hermitian=True) @ rhs[bad]
    return sol


def tps_eval(coeffs: torch.Tensor, points: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Evaluate the spline of :func:`tps_fit` at ``query (B, Q, 3)`` -> ``(B, Q, C)``.

    Evaluated in blocks of query points so memory stays bounded at any size."""
    c = coeffs.to(query.dtype)
    return torch.cat([tps_design(points, q) @ c for q in query.split(_CHUNK, dim=1)], dim=1)


def _as_triple(name: str, value) -> tuple:
    vals = (value,) * 3 if isinstance(value, (int, float)) else tuple(value)
    if len(vals) != 3:
        raise ConfigError(f"augmenter 'tps': parameter {name!r} must be an integer or 3 integers, got {value!r}")
    return vals


class TPS(nn.Module):
    """Random thin-plate-spline deformation.

    Args:
        grid: control points per axis (int or 3 ints, each >= 2); 8 as in the paper.
        max_displacement: largest displacement anywhere, mm (6 mm in the paper).
        foreground_points: extra control points drawn at random voxels of the foreground
            (union of the fixed segmentations, else ``fixed > foreground_threshold``), as
            the original DDMR code could; 0 for none.
        foreground_threshold: intensity above which a voxel counts as foreground when
            there are no segmentations.
        subdivisions: evaluation-lattice points per control interval (>= 1); see the
            module docstring for the accuracy it buys.
        inverse_iterations: fixed-point steps for the inverse field (:func:`ddmr_core.spatial.fields.invert`).
    """

    def __init__(
        self,
        grid: int | Sequence[int] = 8,
        max_displacement: float = 6.0,
        foreground_points: int = 0,
        foreground_threshold: float = 0.1,
        subdivisions: int = 4,
        inverse_iterations: int = 5,
    ):
        super().__init__()
        grid = _as_triple("grid", grid)
        if not all(isinstance(g, int) and g >= 2 for g in grid):
            raise ConfigError(
                f"augmenter 'tps': parameter 'grid' must be integers >= 2 (control points per axis), got {grid!r}"
            )
        check_non_negative("tps", "max_displacement", max_displacement)
        if int(foreground_points) != foreground_points or foreground_points < 0:
            raise ConfigError(
                f"augmenter 'tps': parameter 'foreground_points' must be a non-negative integer, got {foreground_points!r}"
            )
        if int(subdivisions) != subdivisions or subdivisions < 1:
            raise ConfigError(f"augmenter 'tps': parameter 'subdivisions' must be an integer >= 1, got {subdivisions!r}")
        if int(inverse_iterations) != inverse_iterations or inverse_iterations < 0:
            raise ConfigError(
                f"augmenter 'tps': parameter 'inverse_iterations' must be a non-negative integer, got {inverse_iterations!r}"
            )
        self.grid = grid
        self.max_displacement = float(max_displacement)
        self.foreground_points = int(foreground_points)
        self.foreground_threshold = float(foreground_threshold)
        self.subdivisions = int(subdivisions)
        self.inverse_iterations = int(inverse_iterations)
        self._cache: dict = {}

    def extra_repr(self) -> str:
        return f"grid={self.grid}, max_displacement={self.max_displacement} mm, foreground_points={self.foreground_points}"

    # ------------------------------------------------------------- control points
    def control_points(self, state) -> torch.Tensor:
        """``(B, K, 3)`` control points in voxels: the regular grid, then foreground points."""
        fixed = state["fixed"]
        shape, dev = fixed.shape[2:], fixed.device
        axes = [torch.linspace(0, n - 1, g, device=dev) for n, g in zip(shape, self.grid)]
        pts = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(1, -1, 3)
        pts = pts.expand(fixed.shape[0], -1, -1)
        if self.foreground_points:
            pts = torch.cat([pts, self._foreground_points(state)], dim=1)
        return pts

    def _foreground_points(self, state) -> torch.Tensor:
        fixed, segs = state["fixed"], state["fixed_segs"]
        B, shape = fixed.shape[0], fixed.shape[2:]
        if segs is not None:
            mask = (segs.float().sum(1) > 0.5) if segs.is_floating_point() else (segs[:, 0] > 0)
        else:
            mask = fixed[:, 0] > self.foreground_threshold
        flat = mask.reshape(B, -1)
        empty = ~flat.any(1, keepdim=True)
        flat = flat | empty  # no foreground: draw from the whole volume
        # The k-th foreground voxel, k = floor(r * count), r drawn on the CPU: the same
        # voxel on every device, with no host-side list of voxel indices.
        r = draw(state, lambda g: torch.rand(self.foreground_points, generator=g, dtype=torch.float64), torch.float64)
        counts = flat.sum(1, keepdim=True)
        k = (r * counts).long().clamp_max(counts - 1)
        csum = flat.long().cumsum(1)
        idx = torch.searchsorted(csum, k + 1)
        H, W = shape[1], shape[2]
        coords = torch.stack([idx // (H * W), (idx // W) % H, idx % W], -1)
        return coords.to(fixed.dtype)

    # ------------------------------------------------------------------ forward
    def _frame(self, state):
        """Centre ``(B, 3)`` and half-extent ``(B, 1)`` in mm of the unit frame."""
        fixed = state["fixed"]
        spacing = state["spacing"].to(torch.float32)
        extent = (torch.tensor(fixed.shape[2:], device=fixed.device, dtype=torch.float32) - 1).clamp_min(1)
        return extent / 2 * spacing, (extent * spacing).amax(1, keepdim=True) / 2

    def lattice_shape(self, shape) -> tuple:
        """Evaluation lattice: ``(grid - 1) * subdivisions + 1`` nodes per axis, at most ``N``."""
        return tuple(min(n, (g - 1) * self.subdivisions + 1) for n, g in zip(shape, self.grid))

    def lattice_points(self, shape, device) -> torch.Tensor:
        """``(1, Q, 3)`` lattice nodes in voxel coordinates (first to last voxel per axis):
        :func:`ddmr_core.data.augment.lattice_nodes`, points last."""
        return lattice_nodes(shape, self.lattice_shape(shape), device).flatten(2).transpose(1, 2)

    def spline(self, state):
        """Draw the control displacements and fit the spline.

        Returns ``(points, coeffs, u_lattice, to_unit)``: control points ``(B, K, 3)`` in
        the unit frame, coefficients ``(B, K + 4, 3)`` (float64, already scaled to the
        bound) of the displacement in mm, the displacement at the lattice nodes
        ``(B, Q, 3)`` mm, and the function taking voxel coordinates ``(B, P, 3)`` to the
        unit frame. ``tps_eval(coeffs, points, to_unit(v))`` is the exact displacement
        (mm) at voxels ``v``.
        """
        fixed = state["fixed"]
        B, shape, dev = fixed.shape[0], tuple(fixed.shape[2:]), fixed.device
        if min(shape) < 2:
            # a flat axis collapses the control grid onto a plane: the 3-D system is singular
            raise DataError(f"tps: the image grid {shape} has an axis of fewer than 2 voxels; "
                            "the 3-D TPS warp needs a volume (leave tps out of the pipeline for 2-D slices)")
        spacing = state["spacing"].to(torch.float32)
        centre, half = self._frame(state)

        # Work in mm, centred and scaled to ~[-1, 1] for conditioning; a TPS with this
        # kernel is unchanged by such a similarity of its domain (the log-scale term is
        # annihilated by the side conditions), so it equals scipy's fit in mm.
        def to_unit(vox):
            return (vox * spacing[:, None] - centre[:, None]) / half[:, None]

        pts = to_unit(self.control_points(state))
        K = pts.shape[1]

        def ball(g):  # uniform in the unit ball: direction ~ normal, radius ~ U^(1/3)
            v = torch.randn(K, 3, generator=g)
            rad = torch.rand(K, 1, generator=g).pow(1.0 / 3.0)
            return v / v.norm(dim=1, keepdim=True).clamp_min(1e-12) * rad

        disp = draw(state, ball, torch.float64) * self.max_displacement
        lat = to_unit(self.lattice_points(shape, dev).expand(B, -1, -1))
        if self.foreground_points:
            # control points differ per sample: one batched solve, exact lattice evaluation
            coeffs = tps_fit(pts, disp)
            u_lat = tps_eval(coeffs, pts, lat)
        else:
            # The regular grid is the same for every batch of this geometry: its LU
            # factorisation and the lattice's design matrix are computed once and cached,
            # then a batch costs one batched triangular solve and one matmul; samples with
            # the same spacing share them, their values becoming columns of one RHS.
            groups: dict = {}
            for i, sp in enumerate(spacing.tolist()):
                groups.setdefault(tuple(sp), []).append(i)
            coeffs = disp.new_empty(B, K + 4, 3)
            u_lat = lat.new_empty(B, lat.shape[1], 3)
            for sp, idx in groups.items():
                lu, piv, E = self._operators(shape, sp, dev)
                vals = disp[idx].permute(1, 0, 2).reshape(K, -1)  # (K, n * 3)
                rhs = torch.cat([vals, vals.new_zeros(4, vals.shape[1])])
                c = torch.linalg.lu_solve(lu, piv, rhs)  # (K + 4, n * 3)
                coeffs[idx] = c.view(K + 4, len(idx), 3).permute(1, 0, 2)
                u_lat[idx] = (E @ c.to(E.dtype)).view(-1, len(idx), 3).permute(1, 0, 2)
        peak = u_lat.norm(dim=-1).amax(1)
        shrink = (self.max_displacement / peak.clamp_min(1e-12)).clamp(max=1.0)
        coeffs = coeffs * shrink.view(B, 1, 1).to(coeffs.dtype)
        u_lat = (u_lat * shrink.view(B, 1, 1).to(u_lat.dtype)).to(fixed.dtype)
        return pts, coeffs, u_lat, to_unit

    def _operators(self, shape, spacing, device):
        """Cached ``(lu, pivots, E)`` of the regular grid for one geometry: the LU
        factors of the TPS system and the design matrix ``E (Q, K + 4)`` (kernel and
        polynomial columns) of the lattice nodes, so ``u_lattice = E @ coefficients``."""
        key = (shape, spacing, str(device), self.grid, self.subdivisions)
        if key not in self._cache:
            state = {
                "fixed": torch.zeros(1, 1, *shape, device=device),
                "spacing": torch.tensor([spacing], device=device),
                "fixed_segs": None,
            }
            centre, half = self._frame(state)
            sp = state["spacing"]
            pts = (self.control_points(state) * sp[:, None] - centre[:, None]) / half[:, None]
            lat = (self.lattice_points(shape, device) * sp[:, None] - centre[:, None]) / half[:, None]
            A = tps_system(pts)[0]
            lu, piv, info = torch.linalg.lu_factor_ex(A)
            if int(info) != 0:  # cannot happen for a regular grid of >= 2 points per axis
                raise RuntimeError(f"tps: singular control-grid system for grid {self.grid}")
            # built in float64 (the |q|^2 + |p|^2 - 2 q.p expansion cancels), kept in float32
            # small blocks: the float64 temporaries of a block are ~5 x 4096 x K x 8 bytes
            E = torch.cat([tps_design(pts.double(), q)[0].float() for q in lat.double().split(4096, dim=1)])
            if len(self._cache) >= 8:  # a handful of geometries per run; keep it bounded
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = (lu, piv, E)
        return self._cache[key]

    def lattice_fields(self, state):
        """``(u, w)`` on the evaluation lattice, ``(B, 3, *lattice_shape)``: the step's pull
        field (the spline at the lattice nodes) and its inverse, in voxels of the image
        grid. The pipeline keeps them there (see :mod:`ddmr_core.data.augment`); trilinear
        upsampling (``align_corners=True``) gives the fields at every voxel."""
        fixed = state["fixed"]
        B, shape = fixed.shape[0], tuple(fixed.shape[2:])
        lattice = self.lattice_shape(shape)
        _, _, u_lat, _ = self.spline(state)
        spacing = state["spacing"].to(fixed.dtype)
        u = (u_lat / spacing[:, None]).transpose(1, 2).reshape(B, 3, *lattice)  # voxels
        # Inverse on the lattice, sampling u trilinearly there; in lattice-node units the
        # lattice is a regular grid, so spatial.fields.invert samples it with warp. After 5
        # fixed-point steps the error left is below the lattice's own interpolation error:
        # more steps, or Newton's method, did not lower |u(x) + w(x + u(x))| at full resolution.
        node = nodes_per_voxel(shape, lattice, fixed.device, fixed.dtype)
        w = invert(u * node, self.inverse_iterations) / node
        return u, w

    def fields(self, state):
        """``(u, w)``: the step's pull field (the spline, upsampled from the lattice)
        and its inverse, ``(B, 3, D, H, W)`` voxels."""
        shape = tuple(state["fixed"].shape[2:])
        return tuple(upsample_lattice(f, shape) for f in self.lattice_fields(state))

    def forward(self, state):
        # the fields stay on the lattice: the pipeline upsamples them once, when rendering
        u, w = self.lattice_fields(state)
        return add_geometric_step(state, u, w)
