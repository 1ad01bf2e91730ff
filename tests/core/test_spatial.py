"""ddmr_core.spatial.fields against SciPy, MONAI and hand-worked cases."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from ddmr_core.spatial import fields as spatial
from ddmr_core.spatial import grids, regrid


def smooth_volume(shape, seed, sigma=3.0):
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.standard_normal(shape), sigma).astype(np.float32)


def smooth_field(shape, seed, amplitude):
    comps = [smooth_volume(shape, seed + i, sigma=4.0) for i in range(3)]
    field = np.stack([c / np.abs(c).max() * amplitude for c in comps])
    return field.astype(np.float32)


def test_warp_matches_scipy_map_coordinates():
    shape = (20, 24, 28)
    image = smooth_volume(shape, 0)
    disp = smooth_field(shape, 10, amplitude=3.0)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")).astype(np.float64)
    coords = grid + disp
    expected = ndimage.map_coordinates(image.astype(np.float64), coords, order=1, mode="constant", cval=0.0)
    out = spatial.warp(torch.from_numpy(image)[None, None], torch.from_numpy(disp)[None]).numpy()[0, 0]
    # interior: sample positions inside the image, where both agree on the padding
    inside = np.all([(coords[i] >= 0) & (coords[i] <= shape[i] - 1) for i in range(3)], axis=0)
    assert inside.mean() > 0.7
    assert np.abs(out - expected)[inside].max() < 1e-4


def test_warp_matches_monai_warp():
    from monai.networks.blocks import Warp

    shape = (16, 18, 20)
    image = torch.from_numpy(smooth_volume(shape, 1))[None, None]
    disp = torch.from_numpy(smooth_field(shape, 20, amplitude=2.5))[None]
    with pytest.warns(UserWarning):  # MONAI announces its PyTorch fallback
        ref = Warp(mode="bilinear", padding_mode="zeros")(image, disp)
    assert torch.allclose(spatial.warp(image, disp, padding="zeros"), ref, atol=1e-5)


def test_identity_is_exact():
    image = torch.rand(2, 3, 8, 9, 10)
    out = spatial.warp(image, torch.zeros(2, 3, 8, 9, 10))
    assert torch.equal(out, image) or torch.allclose(out, image, atol=1e-6, rtol=0)


def test_integer_translation_is_exact():
    image = torch.rand(1, 1, 10, 12, 14)
    disp = torch.zeros(1, 3, 10, 12, 14)
    disp[:, 1] = 2.0  # pull from two voxels further along axis 1
    out = spatial.warp(image, disp, padding="zeros")
    assert torch.allclose(out[..., :-2, :], image[..., 2:, :], atol=1e-6)
    assert torch.all(out[..., -2:, :] == 0)


def test_nearest_warp_keeps_label_values():
    labels = torch.randint(0, 4, (1, 1, 12, 12, 12), dtype=torch.uint8)
    disp = torch.from_numpy(smooth_field((12, 12, 12), 3, 1.7))[None]
    out = spatial.warp(labels, disp, mode="nearest")
    assert out.dtype == torch.uint8
    assert set(out.unique().tolist()) <= {0, 1, 2, 3}


@pytest.mark.parametrize("seed", [0, 1])
def test_jacobian_of_affine_field_is_matrix_determinant(seed):
    rng = np.random.default_rng(seed)
    A = np.eye(3) + 0.2 * rng.standard_normal((3, 3))
    t = rng.standard_normal(3)
    shape = (9, 10, 11)
    x = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")).reshape(3, -1)
    u = ((A - np.eye(3)) @ x + t[:, None]).reshape(3, *shape)
    det = spatial.jacobian_determinant(torch.from_numpy(u).double()[None])
    assert torch.allclose(det, torch.full_like(det, np.linalg.det(A)), atol=1e-9)


def test_jacobian_of_identity_and_folding():
    disp = torch.zeros(1, 3, 6, 6, 6)
    assert torch.allclose(spatial.jacobian_determinant(disp), torch.ones(1, 6, 6, 6))
    # u_0 = -2 x_0 flips axis 0: det = 1 - 2 = -1
    disp[:, 0] = -2 * torch.arange(6.0).view(6, 1, 1)
    assert torch.allclose(spatial.jacobian_determinant(disp), -torch.ones(1, 6, 6, 6))


def test_resize_field_scales_vectors_by_size_ratio():
    disp = torch.zeros(1, 3, 8, 10, 12)
    disp[:, 0], disp[:, 1], disp[:, 2] = 1.0, -2.0, 0.5
    out = spatial.resize_field(disp, (16, 5, 24))
    assert out.shape == (1, 3, 16, 5, 24)
    assert torch.allclose(out[:, 0], torch.full_like(out[:, 0], 2.0))
    assert torch.allclose(out[:, 1], torch.full_like(out[:, 1], -1.0))
    assert torch.allclose(out[:, 2], torch.full_like(out[:, 2], 1.0))


def test_resized_field_warps_resized_image_consistently():
    # a linear image is resampled exactly by trilinear interpolation, so warping at
    # low resolution and resizing must equal resizing and warping with the resized field
    shape, big = (12, 12, 12), (24, 24, 24)
    x = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in shape], indexing="ij"))
    image = (0.3 * x[0] + 0.2 * x[1] - 0.1 * x[2])[None, None]
    disp = torch.zeros(1, 3, *shape, dtype=torch.float64)
    disp[:, 0], disp[:, 2] = 1.5, -0.75  # a translation
    low = spatial.resize_image(spatial.warp(image, disp, padding="border"), big)
    high = spatial.warp(spatial.resize_image(image, big), spatial.resize_field(disp, big), padding="border")
    # away from the borders, where padding and edge clamping of the resize differ
    sl = (slice(None), slice(None), slice(6, -6), slice(6, -6), slice(6, -6))
    assert torch.allclose(low[sl], high[sl], atol=1e-9)


def test_resize_affine_keeps_field_of_view():
    affine = np.array([[0, 0, 2.0, 10], [1.5, 0, 0, -3], [0, 1.0, 0, 7], [0, 0, 0, 1]])
    old, new = (10, 20, 30), (5, 40, 15)
    out = grids.resize_affine(affine, old, new)
    # the outer corners of the first and last voxels stay where they were
    for corner_old, corner_new in [((-0.5,) * 3, (-0.5,) * 3), (tuple(n - 0.5 for n in old), tuple(n - 0.5 for n in new))]:
        p_old = affine @ np.array([*corner_old, 1.0])
        p_new = out @ np.array([*corner_new, 1.0])
        assert np.allclose(p_old, p_new)


def test_compose_translations_add():
    a = torch.zeros(1, 3, 8, 8, 8)
    b = torch.zeros(1, 3, 8, 8, 8)
    a[:, 0], b[:, 1] = 1.0, -2.0
    c = spatial.compose(a, b)
    assert torch.allclose(c[:, 0], torch.ones_like(c[:, 0]))
    assert torch.allclose(c[:, 1], torch.full_like(c[:, 1], -2.0))


def test_compose_matches_sequential_warps():
    shape = (24, 24, 24)
    image = torch.from_numpy(smooth_volume(shape, 5, sigma=4.0))[None, None].double()
    a = torch.from_numpy(smooth_field(shape, 30, 1.5))[None].double()
    b = torch.from_numpy(smooth_field(shape, 40, 1.5))[None].double()
    twice = spatial.warp(spatial.warp(image, a, padding="border"), b, padding="border")
    once = spatial.warp(image, spatial.compose(a, b), padding="border")
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4), slice(4, -4))
    # linear interpolation of the intermediate image differs from exact composition by
    # a second-order term; for smooth inputs it is far below the image range
    err = (twice - once)[inner].abs().max().item()
    assert err < 0.02 * (image.max() - image.min()).item()


def test_invert_matches_simpleitk_inverse_field():
    sitk = pytest.importorskip("SimpleITK")
    shape = (24, 28, 20)
    disp = torch.from_numpy(smooth_field(shape, 50, 2.0))[None].double()
    ours = spatial.invert(disp, iterations=30)
    # ITK: a vector image indexed (x, y, z), its components along x, y, z (our axes reversed)
    itk = sitk.GetImageFromArray(disp[0].permute(1, 2, 3, 0).flip(-1).numpy(), isVector=True)
    ref = sitk.InvertDisplacementField(itk, maximumNumberOfIterations=100, maxErrorToleranceThreshold=1e-4,
                                       meanErrorToleranceThreshold=1e-5, enforceBoundaryCondition=False)
    ref = torch.from_numpy(sitk.GetArrayFromImage(ref)).flip(-1).permute(3, 0, 1, 2)[None].double()
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4), slice(4, -4))
    assert (ours - ref)[inner].abs().max().item() < 0.05       # voxels, for a 2-voxel field
    # the fixed point: disp sampled through the inverse undoes it (to the iteration's tolerance);
    # the other way round, to the linear interpolation's second-order error
    assert spatial.compose(disp, ours)[inner].abs().max().item() < 1e-3
    assert spatial.compose(ours, disp)[inner].abs().max().item() < 0.05


def test_invert_starts_from_the_guess():
    disp = torch.from_numpy(smooth_field((16, 16, 16), 60, 1.5))[None].double()
    exact = spatial.invert(disp, iterations=40)
    assert torch.equal(spatial.invert(disp, iterations=0, guess=exact), exact)
    assert torch.equal(spatial.invert(disp, iterations=0), -disp)
    # a good start is closer after one step than the default start
    one_from_guess = spatial.invert(disp, iterations=1, guess=0.9 * exact)
    one_from_default = spatial.invert(disp, iterations=1)
    assert (one_from_guess - exact).abs().max() < (one_from_default - exact).abs().max()


def test_one_hot_round_trip():
    labels = torch.tensor([0, 2, 5, 2, 0], dtype=torch.uint8).view(1, 1, 5, 1, 1)
    oh = spatial.one_hot(labels, (2, 5))
    assert oh.shape == (1, 2, 5, 1, 1)
    assert oh[0, :, :, 0, 0].tolist() == [[0, 1, 0, 1, 0], [0, 0, 1, 0, 0]]
    assert torch.equal(spatial.labels_from_one_hot(oh, (2, 5)), labels)


def test_warp_rejects_mismatched_grids():
    with pytest.raises(ValueError, match="grid"):
        spatial.warp(torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 3, 4, 4, 5))
    with pytest.raises(ValueError, match="mode"):
        spatial.warp(torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 3, 4, 4, 4), mode="cubic")


def test_intensity_centroid_matches_scipy_center_of_mass():
    # a blob on a background of 0.3 (a brightness shift): the quantile keeps the background
    # from dragging the centroid to the middle; without a background it is scipy's centroid
    shape = (20, 24, 28)
    blob = np.zeros(shape, np.float32)
    blob[3:9, 14:20, 5:12] = smooth_volume((6, 6, 7), 3) ** 2 + 0.5
    expected = np.array(ndimage.center_of_mass(blob))
    for offset in (0.0, 0.3):
        got = spatial.intensity_centroid(torch.from_numpy(blob + offset)[None, None])[0].numpy()
        np.testing.assert_allclose(got, expected, atol=1e-4)


def test_intensity_centroid_of_constant_image_is_grid_centre():
    got = spatial.intensity_centroid(torch.full((2, 1, 5, 7, 9), 0.4))
    np.testing.assert_allclose(got.numpy(), [[2, 3, 4]] * 2)


@pytest.mark.parametrize(
    "lattice, shape", [((5, 7, 4), (17, 19, 10)), ((2, 2, 2), (9, 8, 7)), ((1, 3, 6), (4, 9, 6))]
)
def test_upsample_lattice_is_trilinear_align_corners(lattice, shape):
    field = torch.randn(2, 3, *lattice, generator=torch.Generator().manual_seed(0))
    expected = torch.nn.functional.interpolate(field, size=shape, mode="trilinear", align_corners=True)
    got = grids.upsample_lattice(field, shape)
    assert got.shape == (2, 3, *shape)
    assert torch.allclose(got, expected, atol=1e-5)
    assert grids.upsample_lattice(field, lattice) is field
    with pytest.raises(ValueError, match="lattice"):
        grids.upsample_lattice(torch.zeros(1, 3, 8, 8, 8), (4, 8, 8))


def test_upsample_lattice_reproduces_affine_fields_exactly():
    # an affine field on a 2 x 2 x 2 lattice spanning the grid is exact at every voxel
    shape = (11, 7, 9)
    A = torch.tensor([[0.1, -0.3, 0.2], [0.05, 0.0, -0.1], [0.2, 0.1, 0.3]])
    b = torch.tensor([1.0, -2.0, 0.5])

    def field_at(points):  # points (3, ...) voxels -> A p + b
        return torch.einsum("ij,j...->i...", A, points) + b.view(3, 1, 1, 1)

    corners = torch.stack(torch.meshgrid(*[torch.tensor([0.0, n - 1]) for n in shape], indexing="ij"))
    got = grids.upsample_lattice(field_at(corners)[None], shape)[0]
    assert torch.allclose(got, field_at(grids.identity_grid(shape)[0]), atol=1e-5)


def test_shared_sampling_grid_equals_warp():
    shape = (12, 10, 14)
    disp = torch.from_numpy(smooth_field(shape, 3, amplitude=4.0))[None]
    image = torch.from_numpy(smooth_volume(shape, 1))[None, None]
    grid = spatial.sampling_grid(disp)
    assert grid.shape == (1, *shape, 3)
    for padding in ("zeros", "border"):
        assert torch.equal(spatial.warp_with_grid(image, grid, padding=padding), spatial.warp(image, disp, padding=padding))
    # voxel coordinates x + disp, normalised to [-1, 1], xyz (reversed) last
    pos = grids.identity_grid(shape) + disp
    norm = pos / torch.tensor([n - 1 for n in shape]).view(1, 3, 1, 1, 1) * 2 - 1
    assert torch.allclose(grid, norm.flip(1).permute(0, 2, 3, 4, 1), atol=1e-6)
    # still differentiable through the field
    d = disp.clone().requires_grad_()
    spatial.warp(image, d).sum().backward()
    assert d.grad is not None and float(d.grad.abs().sum()) > 0


def test_grids_cached_under_inference_mode_still_support_autograd():
    # evaluation builds (and caches) grids under torch.inference_mode(); training, or the
    # instance optimisation run inside an evaluation, must still differentiate through them
    shape = (7, 9, 11)  # a grid no other test uses, so the first use is the one below
    image = torch.rand(1, 1, *shape)
    with torch.inference_mode():
        spatial.warp(image, torch.zeros(1, 3, *shape))
    disp = torch.zeros(1, 3, *shape, requires_grad=True)
    spatial.warp(image, disp).sum().backward()
    assert disp.grad is not None and torch.isfinite(disp.grad).all()


def test_sample_at_matches_scipy_map_coordinates():
    shape = (10, 12, 14)
    image = smooth_volume(shape, 4)
    rng = np.random.default_rng(5)
    coords = (rng.random((3, 6, 7, 8)) * (np.array(shape) - 1).reshape(3, 1, 1, 1)).astype(np.float64)
    expected = ndimage.map_coordinates(image.astype(np.float64), coords, order=1)
    got = spatial.sample_at(torch.from_numpy(image).double()[None, None], torch.from_numpy(coords)[None])
    np.testing.assert_allclose(got[0, 0].numpy(), expected, atol=1e-10)
    # a label map keeps its dtype and values under nearest sampling
    labels = torch.randint(0, 4, (1, 1) + shape, dtype=torch.uint8)
    near = spatial.sample_at(labels, torch.from_numpy(coords.round())[None].float(), mode="nearest")
    assert near.dtype == torch.uint8
    idx = tuple(coords.round().astype(int))
    np.testing.assert_array_equal(near[0, 0].numpy(), labels[0, 0].numpy()[idx])


def test_grid_sample_split_over_threads_is_exact():
    # a batch of one is cut into slabs sampled as a batch; values and both gradients
    # must equal torch's own grid_sample
    from ddmr_core.spatial.fields import grid_sample

    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        torch.manual_seed(0)
        vol = torch.rand(1, 2, 10, 11, 12, dtype=torch.float64, requires_grad=True)
        grid = (torch.rand(1, 12, 5, 7, 3, dtype=torch.float64) * 2.2 - 1.1).requires_grad_()
        for padding in ("zeros", "border"):
            out = grid_sample(vol, grid, padding_mode=padding)
            ref = torch.nn.functional.grid_sample(vol, grid, padding_mode=padding, align_corners=True)
            assert out.shape == ref.shape == (1, 2, 12, 5, 7)
            torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
            g = torch.randn_like(ref)
            got = torch.autograd.grad(out, [vol, grid], g)
            want = torch.autograd.grad(ref, [vol, grid], g)
            for a, b in zip(got, want):
                torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    finally:
        torch.set_num_threads(threads)


def test_normalised_scale_by_hand():
    from ddmr_core.spatial.grids import normalised_scale

    # 2 / (n - 1): 5 voxels span [-1, 1] in steps of 0.5; a single voxel axis keeps scale 2
    torch.testing.assert_close(normalised_scale((5, 3, 1)), torch.tensor([0.5, 1.0, 2.0]))


def test_voxel_grid_slab_is_the_identity_grid_there_and_a_new_tensor():
    shape = (7, 5, 6)
    full = grids.identity_grid(shape)[0]
    slab = grids.voxel_grid((3, 5, 6), start=(2, 0, 0))
    assert torch.equal(slab, full[:, 2:5])
    slab += 1  # a new tensor: the cached identity grid is untouched
    assert torch.equal(grids.identity_grid(shape)[0], full) and full[0, 0, 0, 0] == 0


def test_apply_affine_matches_nibabel():
    from nibabel.affines import apply_affine

    rng = np.random.default_rng(3)
    m = np.eye(4)
    m[:3, :3] = rng.normal(size=(3, 3))
    m[:3, 3] = rng.normal(size=3) * 10
    pts = rng.normal(size=(3, 4, 5, 2)) * 20
    got = grids.apply_affine(m, torch.from_numpy(pts)).numpy()
    expected = np.moveaxis(apply_affine(m, np.moveaxis(pts, 0, -1)), -1, 0)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-9)
    # a tensor matrix, and float32 points computed in float32
    got32 = grids.apply_affine(torch.from_numpy(m), torch.from_numpy(pts).float())
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.numpy(), expected, rtol=1e-5, atol=1e-3)


def test_resize_matrix_maps_voxel_centres_keeping_the_field_of_view():
    m = grids.resize_matrix((10, 8, 6), (5, 16, 6))
    # new voxel j sits at old voxel (j + 0.5) * old / new - 0.5 along each axis
    np.testing.assert_allclose(m @ [0, 0, 0, 1], [0.5, -0.25, 0, 1])
    np.testing.assert_allclose(m @ [4, 15, 5, 1], [8.5, 7.25, 5, 1])
    a = np.diag([2.0, 3.0, 1.5, 1.0])
    np.testing.assert_allclose(grids.resize_affine(a, (10, 8, 6), (5, 16, 6)), a @ m)


def test_field_folding_percentage_in_slabs_equals_the_whole_field():
    """The slab-wise folding count (bounded memory, the trust check of ddmr register) is
    the whole-field one, planes at the slab edges included."""
    from ddmr_core.spatial.fields import field_folding_percentage, folding_percentage, jacobian_determinant

    torch.manual_seed(3)
    disp = torch.randn(1, 3, 21, 9, 8) * 0.6  # folds in places
    whole = folding_percentage(jacobian_determinant(disp))
    assert 1.0 < whole < 60.0
    for rows in (1, 2, 5, 21, 40):
        assert field_folding_percentage(disp, rows=rows) == pytest.approx(whole, abs=1e-9)


@pytest.mark.parametrize("shape", [(10, 11, 12), (1, 9, 8), (6, 1, 1)])
def test_sample_linear_border_equals_grid_sample_values_and_gradients(shape):
    # the refinement's gather sampler against torch's grid_sample (border padding):
    # points inside and outside the grid, two channels, a batch of two sharing the points,
    # and axes of one voxel
    torch.manual_seed(1)
    vol = torch.rand(2, 2, *shape, dtype=torch.float64, requires_grad=True)
    span = torch.tensor([n + 3.0 for n in shape], dtype=torch.float64).view(1, 3, 1)
    coords = (torch.rand(1, 3, 200, dtype=torch.float64) * span - 1.5).requires_grad_()
    got = spatial.sample_linear_border(vol, coords)
    ref = spatial.sample_at(vol, coords[..., None, None], padding="border")[..., 0, 0]
    assert got.shape == ref.shape == (2, 2, 200)
    torch.testing.assert_close(got, ref, atol=1e-12, rtol=0)
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(got, [vol, coords], g), torch.autograd.grad(ref, [vol, coords], g)):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_carry_field_between_axis_aligned_grids_matches_scipy():
    # ddmr register's grids: the working grid is a crop and resampling of the fixed
    # image's (the separable path), the moving grid is rotated (a full 3x3 map after it);
    # reference: scipy's linear interpolation of the field at the target's voxels
    rng = np.random.default_rng(4)
    disp = smooth_field((12, 14, 10), 20, amplitude=2.0)
    source = np.diag([1.5, 1.2, 2.0, 1.0])
    source[:3, 3] = (-4.0, 3.0, 1.5)
    target = np.eye(4)
    c, s = np.cos(0.3), np.sin(0.3)
    moving = np.eye(4)
    moving[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]) @ np.diag([1.1, 0.9, 1.3])
    moving[:3, 3] = rng.normal(size=3)
    shape = (20, 21, 22)

    def reference(source):
        y = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"))
        to_source = np.linalg.inv(source) @ target
        x = np.einsum("ij,j...->i...", to_source[:3, :3], y) + to_source[:3, 3].reshape(3, 1, 1, 1)
        clamped = np.stack([np.clip(x[i], 0, disp.shape[1 + i] - 1) for i in range(3)])  # border padding
        u = np.stack([ndimage.map_coordinates(disp[i].astype(np.float64), clamped, order=1) for i in range(3)])
        to_target = np.linalg.inv(target) @ moving
        return np.einsum("ij,j...->i...", to_target[:3, :3], x + u) + to_target[:3, 3].reshape(3, 1, 1, 1) - y

    got = regrid.carry_field(disp, source, moving, target, shape, dtype=torch.float64)
    np.testing.assert_allclose(got, reference(source), atol=1e-9)
    # a crop of the target grid (whole-voxel positions, with border padding past its
    # edges) on two axes, a resampling on the third: gathers and an interpolation
    crop = np.diag([1.0, 1.0, 1.5, 1.0])
    crop[:3, 3] = (3.0, -2.0, 1.5)
    got = regrid.carry_field(disp, crop, moving, target, shape, dtype=torch.float64)
    np.testing.assert_allclose(got, reference(crop), atol=1e-9)
    # a source grid rotated against the target takes the general path (grid_sample)
    rot = np.eye(4)
    rot[:3, :3] = moving[:3, :3] / np.array([1.1, 0.9, 1.3])
    got = regrid.carry_field(disp, rot @ source, moving, target, shape, dtype=torch.float64)
    np.testing.assert_allclose(got, reference(rot @ source), atol=1e-9)


def test_apply_field_to_all_equals_one_volume_at_a_time_and_scipy():
    # an image and its label map warped together (positions computed once) give what
    # each gets alone, and the image what scipy's linear interpolation gives through the
    # same world mapping (zero outside)
    rng = np.random.default_rng(6)
    image = smooth_volume((14, 12, 16), 30)
    labels = (rng.random((14, 12, 16)) * 4).astype(np.uint8)
    disp = smooth_field((10, 11, 9), 40, amplitude=2.0)
    affine = np.diag([1.2, 1.1, 1.6, 1.0])
    affine[:3, 3] = (3.0, -2.0, 1.0)
    vol_affine = np.eye(4)
    c, s = np.cos(0.2), np.sin(0.2)
    vol_affine[:3, :3] = np.array([[1, 0, 0], [0, c, -s], [0, s, c]]) @ np.diag([0.9, 1.0, 1.1])
    both = regrid.apply_field_to_all(disp, affine, [image, labels], vol_affine, labels=[False, True],
                                      dtype=torch.float64)
    alone = [regrid.apply_field(disp, affine, image, vol_affine, dtype=torch.float64),
             regrid.apply_field(disp, affine, labels, vol_affine, labels=True, dtype=torch.float64)]
    np.testing.assert_array_equal(both[0], alone[0])
    np.testing.assert_array_equal(both[1], alone[1])
    assert both[1].dtype == np.uint8
    y = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in disp.shape[1:]], indexing="ij"))
    to_volume = np.linalg.inv(vol_affine) @ affine
    z = np.einsum("ij,j...->i...", to_volume[:3, :3], y + disp) + to_volume[:3, 3].reshape(3, 1, 1, 1)
    want = ndimage.map_coordinates(image.astype(np.float64), z, order=1, mode="constant", cval=0.0)
    inside = np.all([(z[i] >= 0) & (z[i] <= image.shape[i] - 1) for i in range(3)], axis=0)
    np.testing.assert_allclose(both[0][inside], want[inside], atol=1e-5)
