"""TPS augmenter: agreement with scipy's thin-plate RBF, bounds, inverse, singular systems."""

import numpy as np
import pytest
import torch
from scipy.interpolate import RBFInterpolator

from ddmr_core.data.augment import AugmentationPipeline
from ddmr_core.errors import ConfigError
from ddmr_core.spatial.fields import compose
from ddmr_plugins.augmenters.tps import TPS, tps_eval, tps_fit


def _state(tps, shape, spacing, index=(0,), segs=None, image=None):
    B = len(index)
    if image is None:
        image = torch.rand(B, 1, *shape, generator=torch.Generator().manual_seed(1))
    sp = torch.tensor(spacing, dtype=torch.float32).expand(B, 3)
    return AugmentationPipeline([tps], seed=3).initial_state(image, segs=segs, spacing=sp, index=list(index))


def _at_voxels(field, vox):
    """field (3, D, H, W) at integer voxels (n, 3) -> (n, 3)."""
    return field[:, vox[:, 0], vox[:, 1], vox[:, 2]].T


@pytest.mark.parametrize("shape", [(20, 22, 24), (40, 36, 44)])
def test_tps_matches_scipy_thin_plate_rbf(shape):
    # (20, 22, 24): the lattice is the voxel grid itself (exact evaluation);
    # (40, 36, 44): the field is upsampled from a 29^3 lattice.
    spacing = (2.0, 2.5, 3.0)
    tps = TPS(grid=8, max_displacement=6.0)
    pts_unit, coeffs, _, to_unit = tps.spline(_state(tps, shape, spacing))
    u, _ = tps.fields(_state(tps, shape, spacing))  # same generators: same draw
    sp = np.array(spacing)
    # control points back in mm, and the (bounded) displacements the spline passes through
    grid_vox = tps.control_points(_state(tps, shape, spacing))[0].numpy()
    ctrl_mm = grid_vox * sp
    vals = tps_eval(coeffs, pts_unit, pts_unit.double())[0].numpy()
    ref = RBFInterpolator(ctrl_mm, vals, kernel="thin_plate_spline", degree=1)
    rng = np.random.default_rng(0)
    vox = np.stack([rng.integers(0, n, 300) for n in shape], 1)
    expected = ref(vox * sp)
    exact = tps_eval(coeffs, pts_unit, to_unit(torch.as_tensor(vox, dtype=torch.float64)[None]))[0]
    np.testing.assert_allclose(exact.numpy(), expected, atol=1e-5 * 6)
    got = _at_voxels(u[0], torch.as_tensor(vox)).numpy() * sp  # voxels -> mm
    err = np.linalg.norm(got - expected, axis=1)
    if tuple(tps.lattice_shape(shape)) == shape:
        # exact up to the float32 design matrix: its 516 terms per voxel reach ~1e5 mm
        # and cancel to a few mm, so float32 rounding leaves ~1e-3 mm (0.02 % of the bound);
        # any lattice or frame error shows as 0.1 mm and more (the upsampled case below)
        assert err.max() < 1e-2
    else:  # documented lattice error: ~0.1 mm mean, < 1 mm max
        assert err.mean() < 0.25 and err.max() < 1.2
    # the field is not trivial: a real share of the bound
    assert np.linalg.norm(expected, axis=1).max() > 2.0


def test_tps_fit_agrees_with_scipy_on_scattered_points():
    rng = np.random.default_rng(1)
    pts = rng.uniform(-50, 50, (30, 3))
    vals = rng.normal(size=(30, 2))
    q = rng.uniform(-50, 50, (50, 3))
    c = tps_fit(torch.as_tensor(pts)[None], torch.as_tensor(vals)[None])
    got = tps_eval(c, torch.as_tensor(pts)[None], torch.as_tensor(q)[None])[0].numpy()
    expected = RBFInterpolator(pts, vals, kernel="thin_plate_spline")(q)
    np.testing.assert_allclose(got, expected, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (4.0, 4.0, 4.0), (1.5, 1.5, 3.0)])
def test_tps_displacement_never_exceeds_bound(spacing):
    tps = TPS(max_displacement=6.0)
    st = _state(tps, (24, 24, 24), spacing, index=(0, 1, 2, 3))
    u, w = tps.fields(st)
    sp = torch.tensor(spacing).view(1, 3, 1, 1, 1)
    for f in (u, w):
        norm_mm = (f * sp).norm(dim=1).amax(dim=(1, 2, 3))
        assert bool((norm_mm <= 6.0 + 1e-4).all())
    # the bound is used, not just respected: the shrink leaves the peak at the bound
    assert bool(((u * sp).norm(dim=1).amax(dim=(1, 2, 3)) > 5.0).all())
    small = TPS(max_displacement=2.5).fields(_state(tps, (24, 24, 24), spacing, index=(0, 1)))[0]
    assert float((small * sp).norm(dim=1).max()) <= 2.5 + 1e-4


def test_tps_inverse_residual_is_small():
    # realistic geometry: 40^3 at 3.5 mm (a 140 mm field of view)
    tps = TPS()
    st = _state(tps, (40, 40, 40), (3.5, 3.5, 3.5), index=(0, 1))
    u, w = tps.fields(st)
    resid = compose(w, u).norm(dim=1)[:, 2:-2, 2:-2, 2:-2]  # u(x) + w(x + u(x)), voxels
    assert float(resid.mean()) < 0.08  # measured ~0.05 voxel (0.18 mm)
    assert float(resid.max()) < 0.6
    assert float(u.norm(dim=1).max()) > 1.0  # non-trivial deformation (> 3.5 mm)


def test_tps_foreground_points_lie_in_foreground_and_duplicates_are_solved():
    shape = (16, 16, 16)
    seg = torch.zeros(2, 1, *shape, dtype=torch.uint8)
    seg[:, :, 4:9, 5:11, 6:10] = 1
    tps = TPS(grid=3, foreground_points=40)
    st = _state(tps, shape, (2.0, 2.0, 2.0), index=(0, 1), segs=seg)
    pts = tps.control_points(st)[:, 27:].long()
    assert pts.shape == (2, 40, 3)
    for b in range(2):
        assert bool((seg[b, 0][pts[b, :, 0], pts[b, :, 1], pts[b, :, 2]] == 1).all())
    # 40 points in 5*6*4 = 120 voxels: some repeat, so the system is singular; it is
    # still solved (least squares), finite, and bounded.
    assert any(len(torch.unique(p, dim=0)) < 40 for p in pts)
    u, w = tps.fields(_state(tps, shape, (2.0, 2.0, 2.0), index=(0, 1), segs=seg))
    assert bool(torch.isfinite(u).all() and torch.isfinite(w).all())
    assert float((u * 2.0).norm(dim=1).max()) <= 6.0 + 1e-4


def test_singular_system_falls_back_to_least_squares():
    pts = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1], [1, 1, 1]], dtype=torch.float64)
    vals = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0], [4.0]])
    c = tps_fit(pts[None], vals[None])
    assert bool(torch.isfinite(c).all())
    # the duplicated point is interpolated (consistent data), the others too
    np.testing.assert_allclose(tps_eval(c, pts[None], pts[None])[0].numpy(), vals.numpy(), atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"grid": 0}, "grid"),
        ({"grid": -3}, "grid"),
        ({"grid": (8, 8, 1)}, "grid"),
        ({"max_displacement": -1.0}, "max_displacement"),
        ({"foreground_points": -2}, "foreground_points"),
        ({"subdivisions": 0}, "subdivisions"),
    ],
)
def test_tps_bad_parameters_name_the_parameter(kwargs, name):
    with pytest.raises(ConfigError, match=name):
        TPS(**kwargs)


def test_lattice_spans_the_image():
    # the lattice nodes are voxels at the ends of every axis (align_corners upsampling)
    tps = TPS()
    lat = tps.lattice_points((40, 30, 20), "cpu")[0]
    assert torch.allclose(lat.amin(0), torch.zeros(3))
    assert torch.allclose(lat.amax(0), torch.tensor([39.0, 29.0, 19.0]))


def test_foreground_points_from_intensity_without_segmentations():
    shape = (16, 16, 16)
    image = torch.zeros(1, 1, *shape)
    image[:, :, 2:6, 9:14, 3:7] = 0.8  # the only voxels above foreground_threshold = 0.1
    tps = TPS(grid=3, foreground_points=25)
    pts = tps.control_points(_state(tps, shape, (3.0, 3.0, 3.0), image=image))[0, 27:].long()
    assert bool((image[0, 0][pts[:, 0], pts[:, 1], pts[:, 2]] > 0.1).all())
    assert len(torch.unique(pts, dim=0)) > 10  # spread over the region, not one voxel


def test_flat_axis_is_a_clear_data_error():
    # a 2-D slice stored as a volume: the 3-D control grid would collapse onto a plane
    from ddmr_core.errors import DataError

    image = torch.rand(1, 1, 16, 16, 1)
    with pytest.raises(DataError, match=r"tps: the image grid \(16, 16, 1\)"):
        AugmentationPipeline([TPS()], seed=3)(image, spacing=torch.ones(1, 3))
