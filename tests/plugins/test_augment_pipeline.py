"""Augmentation pipeline: ground truth through composed steps, rigid maps, intensity steps,
resize, reproducibility, segmentations and bad input."""

import math

import numpy as np
import pytest
import torch

import ddmr_core.data.datasets as experiment
from ddmr_core.data.augment import AugmentationPipeline
from ddmr_core.config.parsing import parse_config
from ddmr_core.errors import ConfigError, DataError
from ddmr_core.spatial.fields import jacobian_determinant, one_hot, warp
from ddmr_core.spatial.grids import identity_grid, resize_affine
from ddmr_plugins.augmenters.brightness import Brightness
from ddmr_plugins.augmenters.gamma import Gamma
from ddmr_plugins.augmenters.normalize import Normalize
from ddmr_plugins.augmenters.resize import Resize
from ddmr_plugins.augmenters.rigid import Rigid, rotation_matrix
from ddmr_plugins.augmenters.tps import TPS


def smooth_image(shape, batch=1):
    """Low-frequency test image in [0.2, 0.8] (interpolation error stays small)."""
    g = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, n) for n in shape], indexing="ij"))
    img = 0.5 + 0.3 * torch.cos(1.7 * g[0] + 0.2) * torch.sin(1.3 * g[1] + 0.4) * torch.cos(1.1 * g[2] - 0.3)
    return img.expand(batch, 1, *shape).clone()


def ball_labels(shape, batch=1):
    g = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, n) for n in shape], indexing="ij"))
    lab = torch.zeros(shape, dtype=torch.uint8)
    lab[(g.square().sum(0) < 0.5**2)] = 1
    lab[((g[0] - 0.2).square() + g[1].square() + (g[2] + 0.1).square() < 0.25**2)] = 2
    return lab.expand(batch, 1, *shape).clone()


def inside(disp, margin=1.0):
    """Voxels whose target x + disp(x) lies inside the grid (no padding involved)."""
    shape = disp.shape[2:]
    pos = identity_grid(shape) + disp
    hi = torch.tensor([n - 1 - margin for n in shape]).view(1, 3, 1, 1, 1)
    return ((pos >= margin) & (pos <= hi)).all(1, keepdim=True)


@pytest.mark.parametrize("order", ["tps_rigid", "rigid_tps"])
def test_warping_moving_with_disp_true_gives_back_fixed(order):
    shape = (28, 32, 30)
    spacing = torch.tensor([[4.0, 3.5, 3.0], [3.0, 3.0, 5.0]])  # anisotropic
    steps = [TPS(), Rigid()] if order == "tps_rigid" else [Rigid(), TPS()]
    image = smooth_image(shape, 2)
    out = AugmentationPipeline(steps, seed=5)(image, spacing=spacing, index=torch.tensor([7, 8]))
    back = warp(out["moving"], out["disp_true"], padding="border")
    m = inside(out["disp_true"])
    err = (back - out["fixed"]).abs()[m]
    moved = (out["moving"] - out["fixed"]).abs()[m]
    assert float(m.float().mean()) > 0.5
    assert float(err.mean()) < 2e-3 and float(err.max()) < 3e-2
    assert float(moved.mean()) > 20 * float(err.mean())  # the pair really differs


def test_composition_order_matches_the_analytic_rigid_composition():
    # two rigid steps: disp_true must be the field of phi2(phi1(x)), not phi1(phi2(x))
    shape, sp = (20, 24, 22), torch.tensor([[2.0, 3.0, 2.5]])
    r1, r2 = Rigid(20.0, 10.0), Rigid(20.0, 10.0)
    pipe = AugmentationPipeline([r1, r2], seed=11)
    out = pipe(smooth_image(shape), spacing=sp, index=torch.tensor([4]))
    st = pipe.initial_state(smooth_image(shape), spacing=sp, index=[4])
    a1, t1 = r1.draw_parameters(st)
    a2, t2 = r2.draw_parameters(st)

    def affine_map(a, t):
        R = rotation_matrix(a)[0]
        c = torch.tensor([(n - 1) / 2 for n in shape], dtype=torch.float64) * sp[0].double()
        return R, c - R @ c + t[0]

    R1, o1 = affine_map(a1, t1)
    R2, o2 = affine_map(a2, t2)
    p = (identity_grid(shape, dtype=torch.float64) * sp.double().view(1, 3, 1, 1, 1))[0].reshape(3, -1)
    right = ((R2 @ (R1 @ p + o1[:, None]) + o2[:, None]) - p) / sp.double().view(3, 1)
    wrong = ((R1 @ (R2 @ p + o2[:, None]) + o1[:, None]) - p) / sp.double().view(3, 1)
    got = out["disp_true"][0].reshape(3, -1).double()
    # compose samples the second field at phi1(x): exact for affine maps where that is
    # inside the grid (border padding elsewhere)
    x1 = (R1 @ p + o1[:, None]) / sp.double().view(3, 1)
    hi = torch.tensor([n - 1 for n in shape], dtype=torch.float64).view(3, 1)
    m = ((x1 >= 0) & (x1 <= hi)).all(0)
    assert float(m.double().mean()) > 0.3
    assert float((got - right).abs()[:, m].max()) < 1e-3
    assert float((got - wrong).abs()[:, m].max()) > 0.5


def test_rigid_is_a_physical_rotation_on_anisotropic_grids():
    shape, sp = (16, 20, 24), torch.tensor([[1.0, 2.0, 3.5]])
    out = AugmentationPipeline([Rigid(10.0, 0.0)], seed=2)(smooth_image(shape), spacing=sp)
    u = out["disp_true"][0]
    # Jacobian of x -> x + u(x) (constant for an affine map), taken to mm: S J S^-1
    grads = [torch.gradient(u[i], dim=(0, 1, 2)) for i in range(3)]
    J = torch.tensor([[float(grads[i][j].mean()) + (i == j) for j in range(3)] for i in range(3)])
    S = torch.diag(sp[0])
    Jmm = S @ J @ torch.linalg.inv(S)
    np.testing.assert_allclose((Jmm.T @ Jmm).numpy(), np.eye(3), atol=1e-4)
    assert abs(float(torch.linalg.det(Jmm)) - 1) < 1e-4
    angle = math.degrees(math.acos((float(torch.trace(Jmm)) - 1) / 2))
    assert 0.5 < angle <= 10.0 * math.sqrt(3) + 1e-3


def test_rigid_bounds():
    shape = (15, 17, 19)  # odd: the rotation centre is a voxel
    sp = torch.tensor([2.0, 3.0, 1.5]).expand(6, 3)
    idx = torch.arange(6)
    # pure translation: every displacement is the translation, length <= 30 mm
    out = AugmentationPipeline([Rigid(0.0, 30.0)], seed=1)(smooth_image(shape, 6), spacing=sp, index=idx)
    mm = (out["disp_true"] * sp.reshape(6, 3, 1, 1, 1)).norm(dim=1)
    assert float(mm.max()) <= 30.0 + 1e-3 and float(mm.max()) > 10.0
    assert float((mm.amax(dim=(1, 2, 3)) - mm.amin(dim=(1, 2, 3))).max()) < 1e-3
    # with rotation: the centre moves by the translation only
    out = AugmentationPipeline([Rigid(10.0, 30.0)], seed=1)(smooth_image(shape, 6), spacing=sp, index=idx)
    centre = out["disp_true"][:, :, 7, 8, 9] * sp
    assert float(centre.norm(dim=1).max()) <= 30.0 + 1e-3


def test_reproducible_per_index_and_independent_of_batch():
    shape = (16, 16, 16)
    pipe = AugmentationPipeline([TPS(grid=4), Rigid(), Gamma(), Brightness()], seed=42)
    img = smooth_image(shape, 3)
    a = pipe(img, index=torch.tensor([5, 6, 7]))
    b = pipe(img, index=torch.tensor([5, 6, 7]))
    c = pipe(img[:1], index=torch.tensor([6]))  # sample 6 alone, in another batch position
    for k in ("moving", "disp_true"):
        assert torch.equal(a[k], b[k])
        assert torch.allclose(a[k][1], c[k][0], atol=1e-6)
        assert float((a[k][0] - a[k][1]).abs().max()) > 1e-2  # different indices differ
    d = AugmentationPipeline(list(pipe.steps), seed=43)(img, index=torch.tensor([5, 6, 7]))
    assert float((d["disp_true"] - a["disp_true"]).abs().max()) > 1e-2  # the seed matters


def test_segmentations_follow_the_image():
    shape = (24, 24, 24)
    sp = torch.full((2, 3), 4.0)
    labels = ball_labels(shape, 2)
    oh = one_hot(labels, (1, 2))
    pipe = AugmentationPipeline([TPS(), Rigid(10.0, 12.0)], seed=3)
    img = labels.float() / 2
    out_lab = pipe(img, segs=labels, spacing=sp)
    out_oh = pipe(img, segs=oh, spacing=sp)
    assert out_lab["moving_segs"].dtype == torch.uint8 and out_oh["moving_segs"].dtype == torch.float32
    assert torch.equal(out_lab["fixed_segs"], labels) and torch.equal(out_oh["fixed_segs"], oh)
    # the moving label map is the moving image's label map: image = labels / 2 was warped
    # by the same field (nearest vs linear differ only on the boundaries)
    agree = (out_lab["moving_segs"].float() / 2 - out_lab["moving"]).abs() < 0.26
    assert float(agree.float().mean()) > 0.97
    # one-hot maps (linear) match the label map (nearest) away from label boundaries
    from_oh = (out_oh["moving_segs"] > 0.5).float()
    assert float((from_oh - one_hot(out_lab["moving_segs"], (1, 2))).abs().mean()) < 0.01
    # registering back with disp_true recovers the fixed segmentation (Dice > 0.95)
    back = (warp(out_oh["moving_segs"], out_oh["disp_true"]) > 0.5).float()
    inter = (back * oh).sum(dim=(2, 3, 4))
    dice = 2 * inter / (back.sum(dim=(2, 3, 4)) + oh.sum(dim=(2, 3, 4)))
    assert float(dice.min()) > 0.95
    # and the deformation is a real one
    assert float((out_oh["moving_segs"] - oh).abs().mean()) > 0.01


def test_gamma_and_brightness_ranges():
    shape = (6, 6, 6)
    x = torch.linspace(0.05, 0.95, 216).view(1, 1, *shape).expand(64, 1, *shape).clone()
    out = AugmentationPipeline([Gamma()], seed=0)(x, index=torch.arange(64))
    assert torch.equal(out["fixed"], x)
    gamma = (out["moving"].log() / x.log()).flatten(1)
    g = gamma.mean(1)
    assert float((gamma - g[:, None]).abs().max()) < 1e-3  # one exponent per sample
    assert float(g.min()) >= 0.5 - 1e-4 and float(g.max()) <= 2.0 + 1e-4
    assert float(g.min()) < 0.7 and float(g.max()) > 1.5  # the range is used
    assert abs(float(g.log2().mean())) < 0.25  # 2^U(-1, 1): log2 centred on 0
    mid = torch.full((64, 1, *shape), 0.5)
    out = AugmentationPipeline([Brightness()], seed=0)(mid, index=torch.arange(64))
    shift = (out["moving"] - 0.5).flatten(1)
    assert float((shift - shift[:, :1]).abs().max()) < 1e-6
    assert float(shift.abs().max()) <= 0.2 + 1e-6 and float(shift.abs().max()) > 0.15
    hi = AugmentationPipeline([Brightness(max_shift=0.5, target="both")], seed=0)(
        torch.full((16, 1, *shape), 0.9), index=torch.arange(16)
    )
    for k in ("fixed", "moving"):
        assert float(hi[k].max()) <= 1.0 and float(hi[k].min()) >= 0.4
    assert not torch.equal(hi["fixed"], hi["moving"])  # independent draws


def test_normalize_min_max_per_sample():
    x = torch.stack([torch.linspace(-1000, 400, 64), torch.linspace(3, 5, 64)]).view(2, 1, 4, 4, 4)
    out = AugmentationPipeline([Normalize()])(x)
    for k in ("fixed", "moving"):
        assert torch.allclose(out[k].flatten(1).amin(1), torch.zeros(2))
        assert torch.allclose(out[k].flatten(1).amax(1), torch.ones(2))
        np.testing.assert_allclose(out[k][0].flatten().numpy(), np.linspace(0, 1, 64), atol=1e-6)


def test_resize_updates_spacing_affine_and_rescales_fields():
    shape, size = (24, 30, 20), (16, 20, 10)
    sp = torch.tensor([[2.0, 2.0, 3.0]])
    aff = torch.tensor([[0.0, 0, 2, 10], [2, 0, 0, -5], [0, 3, 0, 7], [0, 0, 0, 1]], dtype=torch.float64)
    # pure translation of t mm: a constant field whose voxel value depends on the spacing
    rigid = Rigid(0.0, 20.0)
    out_a = AugmentationPipeline([rigid, Resize(size)], seed=9)(smooth_image(shape), spacing=sp, affine=aff[None])
    out_b = AugmentationPipeline([Resize(size), rigid], seed=9)(smooth_image(shape), spacing=sp, affine=aff[None])
    new_sp = sp * torch.tensor(shape) / torch.tensor(size)
    for out in (out_a, out_b):
        assert out["moving"].shape == (1, 1, *size) and out["disp_true"].shape == (1, 3, *size)
        assert torch.allclose(out["spacing"], new_sp)
        np.testing.assert_allclose(out["affine"][0].numpy(), resize_affine(aff.numpy(), shape, size))
    # the same translation in mm, whichever order (inside, away from the padded border)
    t_a = out_a["disp_true"][0, :, 4:-4, 4:-4, 3:-3] * new_sp.view(3, 1, 1, 1)
    t_b = out_b["disp_true"][0, :, 4:-4, 4:-4, 3:-3] * new_sp.view(3, 1, 1, 1)
    assert torch.allclose(t_a, t_b, atol=1e-3)
    assert float(t_b.norm(dim=0).max()) > 5.0


def test_no_geometric_step_gives_zero_field_and_identical_images():
    x = smooth_image((8, 8, 8), 2)
    out = AugmentationPipeline([Normalize()])(x)
    assert torch.equal(out["disp_true"], torch.zeros(2, 3, 8, 8, 8))
    assert torch.equal(out["fixed"], out["moving"])


def test_tps_field_is_mostly_diffeomorphic_at_paper_scale():
    # paper scale: 8^3 grid, 6 mm on a 64-voxel, 3.5 mm grid -> no folding
    out = AugmentationPipeline([TPS()], seed=0)(
        smooth_image((32, 32, 32), 2), spacing=torch.full((2, 3), 7.0), index=torch.tensor([0, 1])
    )
    assert float(jacobian_determinant(out["disp_true"]).min()) > 0.2


def test_paper_config_builds_the_pipeline():
    parse_config(["mixins/augment/paper.gin"], bindings=["SIZE = (16, 16, 16)"])
    pipe = experiment.build_augmentation()
    names = [type(s).__name__ for s in pipe.steps]
    assert names == ["Resize", "Normalize", "TPS", "Rigid", "Gamma", "Brightness"]
    tps, rigid = pipe.steps[2], pipe.steps[3]
    assert tps.grid == (8, 8, 8) and tps.max_displacement == 6.0
    assert rigid.max_rotation == 10.0 and rigid.max_translation == 30.0
    out = pipe(torch.rand(2, 1, 20, 20, 20) * 100, spacing=torch.full((2, 3), 8.0))
    assert out["moving"].shape == (2, 1, 16, 16, 16)
    assert float(out["fixed"].min()) == 0.0 and float(out["fixed"].max()) == 1.0
    assert 0.0 <= float(out["moving"].min()) and float(out["moving"].max()) <= 1.0


@pytest.mark.parametrize(
    "binding, name",
    [
        ("ddmr.augmenters.tps.grid = 0", "grid"),
        ("ddmr.augmenters.tps.max_displacement = -6.0", "max_displacement"),
        ("ddmr.augmenters.rigid.max_rotation = 190.0", "max_rotation"),
        ("ddmr.augmenters.rigid.max_translation = -1.0", "max_translation"),
        ("ddmr.augmenters.gamma.max_log2 = -1.0", "max_log2"),
        ("ddmr.augmenters.brightness.max_shift = -0.2", "max_shift"),
        ("ddmr.augmenters.brightness.target = 'fixd'", "target"),
        ("ddmr.augmenters.resize.size = (16, 0, 16)", "size"),
    ],
)
def test_bad_parameters_fail_when_built_from_gin(binding, name):
    parse_config(["mixins/augment/paper.gin"], bindings=["SIZE = (16, 16, 16)", binding])
    with pytest.raises(ConfigError, match=name):
        experiment.build_augmentation()


def test_bad_inputs_fail_when_called():
    pipe = AugmentationPipeline([Rigid()])
    img = torch.rand(2, 1, 8, 8, 8)
    with pytest.raises(DataError, match="segs"):
        pipe(img, segs=torch.zeros(2, 2, 8, 8, 9))
    with pytest.raises(DataError, match="segs"):
        pipe(img, segs=torch.zeros(1, 2, 8, 8, 8))
    with pytest.raises(DataError, match="image"):
        pipe(torch.rand(2, 8, 8, 8))
    with pytest.raises(DataError, match="spacing"):
        pipe(img, spacing=torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]]))
    with pytest.raises(DataError, match="index"):
        pipe(img, index=torch.tensor([1, 2, 3]))
