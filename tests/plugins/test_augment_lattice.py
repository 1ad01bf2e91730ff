"""Fields held on the TPS lattice through the pipeline: composing a closed-form (rigid)
step there against the full-resolution composition, other orders and steps that need or
supply full-resolution fields."""

import pytest
import torch

from ddmr_core.data.augment import (
    AugmentationPipeline,
    add_geometric_step,
    field_shape,
    lattice_nodes,
    to_full_resolution,
)
from ddmr_core.spatial.fields import compose, warp
from ddmr_core.spatial.grids import identity_grid, upsample_lattice
from ddmr_plugins.augmenters.resize import Resize
from ddmr_plugins.augmenters.rigid import Rigid, rotation_matrix
from ddmr_plugins.augmenters.tps import TPS

SHAPE = (40, 36, 44)  # the TPS lattice (29^3) is coarser than the grid
SPACING = torch.tensor([[3.5, 3.0, 4.0], [3.0, 3.5, 3.5]])


def smooth_image(shape, batch):
    g = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, n) for n in shape], indexing="ij"))
    img = 0.5 + 0.3 * torch.cos(1.7 * g[0] + 0.2) * torch.sin(1.3 * g[1] + 0.4) * torch.cos(1.1 * g[2] - 0.3)
    return img.expand(batch, 1, *shape).clone()


def _state(pipe, index=(3, 9), shape=SHAPE, spacing=SPACING):
    return pipe.initial_state(smooth_image(shape, len(index)), spacing=spacing, index=list(index))


def _run(pipe, state):
    for step in pipe.steps:
        state = step(state)
    return state


def test_tps_keeps_its_fields_on_the_lattice():
    tps = TPS()
    pipe = AugmentationPipeline([tps, Rigid()], seed=4)
    st = _run(pipe, _state(pipe))
    lattice = tps.lattice_shape(SHAPE)
    assert lattice != SHAPE and field_shape(st) == lattice
    assert st["disp_true"].shape == st["warp"].shape == (2, 3, *lattice)
    out = pipe.render(st)
    # render upsamples once, and leaves the full-resolution fields in the state
    assert out["disp_true"].shape == (2, 3, *SHAPE) and field_shape(st) == SHAPE
    assert out["disp_true"] is st["disp_true"]


def test_rigid_after_tps_on_the_lattice_matches_full_resolution_composition():
    tps, rigid = TPS(), Rigid()
    pipe = AugmentationPipeline([tps, rigid], seed=4)
    lat = _run(pipe, _state(pipe))
    # the same draws composed at every voxel: TPS upsampled first, then the rigid map
    full = _state(pipe)
    u, w = tps.fields(full)
    add_geometric_step(full, u, w)
    full = rigid(full)
    assert field_shape(full) == SHAPE
    out_lat, out_full = pipe.render(lat), pipe.render(full)
    # disp_true: exact (affine map, evaluated in closed form; upsampling is linear and
    # reproduces affine functions), to float rounding of displacements up to ~15 voxels
    assert float(out_full["disp_true"].abs().max()) > 3.0
    assert torch.allclose(out_lat["disp_true"], out_full["disp_true"], atol=1e-4)
    # the rendering field: W sampled at the lattice nodes' targets and interpolated between
    # them, an interpolation-level difference (measured 0.02 voxel mean, 0.27 max)
    dW = (lat["warp"] - full["warp"]).norm(dim=1)
    assert float(dW.mean()) < 0.05 and float(dW.max()) < 0.6
    # and so the moving images (smooth) agree up to interpolation error
    assert float((out_lat["moving"] - out_full["moving"]).abs().max()) < 1e-2
    assert float((out_lat["moving"] - out_full["moving"]).abs().mean()) < 1e-3


def affine_field(matrix, offset, shape, spacing):
    """The pull field (voxels) of the mm map ``p -> matrix @ p + offset`` at every voxel."""
    from ddmr_core.spatial.grids import affine_displacement, identity_grid, voxel_affine

    points = identity_grid(shape, device=matrix.device, dtype=matrix.dtype)
    return affine_displacement(*voxel_affine(matrix, offset, spacing.to(matrix.device)), points)


def test_rigid_then_tps_composes_at_full_resolution():
    tps, rigid = TPS(), Rigid()
    pipe = AugmentationPipeline([rigid, tps], seed=6)
    st = _run(pipe, _state(pipe))
    assert field_shape(st) == SHAPE  # the sampled TPS map is composed at every voxel
    # the reference: the rigid field at every voxel, then compose with the TPS fields
    ref = _state(pipe)
    angles, t = rigid.draw_parameters(ref)
    R, off, Rt, off_inv = rigid.maps(angles, t, SHAPE, ref["spacing"])
    U_r = affine_field(R.float(), off.float(), SHAPE, ref["spacing"])
    W_r = affine_field(Rt.float(), off_inv.float(), SHAPE, ref["spacing"])
    u, w = tps.fields(ref)
    assert torch.allclose(st["disp_true"], compose(u, U_r), atol=1e-4)
    assert torch.allclose(st["warp"], compose(W_r, w), atol=1e-4)
    # a valid ground truth: warp(moving, disp_true) gives back the fixed image
    out = pipe(smooth_image(SHAPE, 2), spacing=SPACING, index=torch.tensor([3, 9]))
    back = warp(out["moving"], out["disp_true"], padding="border")
    pos = identity_grid(SHAPE) + out["disp_true"]
    hi = torch.tensor([n - 2 for n in SHAPE]).view(1, 3, 1, 1, 1)
    m = ((pos >= 1) & (pos <= hi)).all(1, keepdim=True)
    assert float(m.float().mean()) > 0.5
    assert float((back - out["fixed"]).abs()[m].mean()) < 2e-3


def test_first_rigid_step_is_evaluated_at_every_voxel():
    rigid = Rigid(10.0, 20.0)
    pipe = AugmentationPipeline([rigid], seed=1)
    st = _run(pipe, _state(pipe))
    assert field_shape(st) == SHAPE
    ref = _state(pipe)
    angles, t = rigid.draw_parameters(ref)
    R, off, _, _ = rigid.maps(angles, t, SHAPE, ref["spacing"])
    # the elementwise definition: (R p + off - p) / spacing, p = x * spacing (mm)
    sp = ref["spacing"].double().view(2, 3, 1, 1, 1)
    p = identity_grid(SHAPE, dtype=torch.float64) * sp
    expected = (torch.einsum("bij,bj...->bi...", R, p) + off.view(2, 3, 1, 1, 1) - p) / sp
    assert torch.allclose(st["disp_true"].double(), expected, atol=1e-4)


def test_full_resolution_step_after_lattice_fields_upsamples_first():
    # a plugin that hands full-resolution fields (and an old-style closed form with a
    # full-resolution inverse) still composes correctly after TPS
    tps = TPS()
    pipe = AugmentationPipeline([tps], seed=2)
    st = _run(pipe, _state(pipe))
    U0, W0 = (upsample_lattice(st[k], SHAPE) for k in ("disp_true", "warp"))
    shift = torch.tensor([1.5, -2.0, 0.5]).view(1, 3, 1, 1, 1)
    u = shift.expand(2, 3, *SHAPE).clone()
    add_geometric_step(st, u, -u)
    assert field_shape(st) == SHAPE
    assert torch.allclose(st["disp_true"], compose(u, U0), atol=1e-5)
    assert torch.allclose(st["warp"], compose(W0, -u), atol=1e-5)

    st = _run(pipe, _state(pipe))
    add_geometric_step(st, None, -u, u_at=lambda p: shift.expand(p.shape[0], 3, *p.shape[2:]) + 0 * p)
    assert field_shape(st) == SHAPE
    assert torch.allclose(st["disp_true"], U0 + shift, atol=1e-5)


def test_two_tps_steps_compose_at_full_resolution():
    a, b = TPS(grid=5), TPS(grid=5)
    pipe = AugmentationPipeline([a, b], seed=8)
    st = _run(pipe, _state(pipe))
    assert field_shape(st) == SHAPE
    ref = _state(pipe)
    u1, w1 = a.fields(ref)
    u2, w2 = b.fields(ref)
    assert torch.allclose(st["disp_true"], compose(u2, u1), atol=1e-5)
    assert torch.allclose(st["warp"], compose(w1, w2), atol=1e-5)


def test_resize_after_lattice_fields():
    pipe = AugmentationPipeline([TPS(), Rigid(), Resize((20, 18, 22))], seed=3)
    out = pipe(torch.rand(2, 1, *SHAPE), spacing=SPACING, index=torch.tensor([0, 1]))
    assert out["disp_true"].shape == (2, 3, 20, 18, 22) and out["moving"].shape == (2, 1, 20, 18, 22)
    assert torch.allclose(out["spacing"], SPACING * 2)


def test_lattice_nodes_span_the_grid():
    nodes = lattice_nodes((40, 30, 20), (5, 4, 3))
    assert nodes.shape == (1, 3, 5, 4, 3)
    assert torch.allclose(nodes[0, 0, :, 0, 0], torch.linspace(0, 39, 5))
    assert torch.allclose(nodes[0, 2, 0, 0, :], torch.tensor([0.0, 9.5, 19.0]))
    assert torch.equal(lattice_nodes((4, 5, 6), (4, 5, 6)), identity_grid((4, 5, 6)))


def test_to_full_resolution_is_a_no_op_without_lattice_fields():
    pipe = AugmentationPipeline([Rigid()], seed=0)
    st = _run(pipe, _state(pipe))
    U = st["disp_true"]
    assert to_full_resolution(st)["disp_true"] is U


@pytest.mark.parametrize("bad", [dict(u=None, w=torch.zeros(1, 3, 4, 4, 4)), dict(u=torch.zeros(1, 3, 4, 4, 4), w=None)])
def test_add_geometric_step_needs_both_maps(bad):
    pipe = AugmentationPipeline([], seed=0)
    st = pipe.initial_state(torch.rand(1, 1, 4, 4, 4))
    with pytest.raises(ValueError, match="u_at"):
        add_geometric_step(st, **bad)


def test_voxel_affine_is_conjugated_by_the_spacing():  # A = S^-1 R S - I, b = S^-1 off
    from ddmr_plugins.augmenters.rigid import voxel_affine

    R = rotation_matrix(torch.tensor([[0.1, -0.2, 0.3]], dtype=torch.float64))
    sp = torch.tensor([[1.0, 2.0, 4.0]])
    A, b = voxel_affine(R, torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64), sp)
    S = torch.diag(sp[0].double())
    assert torch.allclose(A[0], torch.linalg.inv(S) @ R[0] @ S - torch.eye(3, dtype=torch.float64))
    assert torch.allclose(b[0], torch.tensor([1.0, 1.0, 0.75], dtype=torch.float64))
