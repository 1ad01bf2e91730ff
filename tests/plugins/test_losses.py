"""Loss plugins against independent references: NumPy NCC, a SciPy windowed LNCC,
scikit-image SSIM, hand-counted Dice, SciPy distance transforms, analytic fields."""

import numpy as np
import pytest
import torch
from scipy.ndimage import distance_transform_edt, gaussian_filter, uniform_filter
from skimage.metrics import structural_similarity

from ddmr_core.errors import DataError
from ddmr_core.plugins.registry import Registry

EXPECTED = {
    "ncc": "image", "lncc": "image", "ssim": "image", "mi": "image",
    "dice": "segmentation", "hausdorff": "segmentation",
    "grad_l2": "field", "bending": "field",
}


@pytest.fixture(scope="module")
def registry():
    return Registry()


def T(x):
    return torch.tensor(np.asarray(x), dtype=torch.float32)[None, None]


def _images(shape=(20, 20, 20), seed=0):
    rng = np.random.default_rng(seed)
    a = gaussian_filter(rng.random(shape), 1.5)
    a = (a - a.min()) / (a.max() - a.min())
    b = np.clip(0.7 * a + 0.2 * gaussian_filter(rng.random(shape), 2.0) + 0.05 * rng.standard_normal(shape), 0, 1)
    return a, b


def test_every_loss_is_registered_with_its_inputs(registry):
    for name, inputs in EXPECTED.items():
        loss = registry.create("losses", name)
        assert isinstance(loss, torch.nn.Module)
        assert type(loss).inputs == inputs


# ----------------------------------------------------------------------- image losses
def test_ncc_matches_numpy_corrcoef(registry):
    a, b = _images()
    ref = np.corrcoef(a.ravel(), b.ravel())[0, 1]
    got = registry.create("losses", "ncc")(T(b), T(a)).item()
    assert got == pytest.approx(1 - ref, abs=1e-5)


def test_ncc_is_zero_for_affine_intensity_change_and_averages_the_batch(registry):
    a, b = _images()
    ncc = registry.create("losses", "ncc")
    assert ncc(T(3 * a + 0.5), T(a)).item() == pytest.approx(0.0, abs=1e-5)
    assert ncc(T(-a), T(a)).item() == pytest.approx(2.0, abs=1e-5)
    batch = ncc(torch.cat([T(a), T(b)]), torch.cat([T(a), T(a)])).item()
    assert batch == pytest.approx((0 + 1 - np.corrcoef(a.ravel(), b.ravel())[0, 1]) / 2, abs=1e-5)


def _lncc_reference(p, t, w):
    """1 - mean local squared NCC, window sums by SciPy with zero padding (float64)."""
    s = lambda x: uniform_filter(x, w, mode="constant") * w**3
    n = w**3
    ps, ts = s(p), s(t)
    cross = s(p * t) - ps * ts / n
    pv = np.maximum(s(p * p) - ps * ps / n, 1e-5)
    tv = np.maximum(s(t * t) - ts * ts / n, 1e-5)
    return 1 - np.mean(cross**2 / (pv * tv))


@pytest.mark.parametrize("win", [3, 5, 9])
def test_lncc_matches_scipy_windowed_reference(registry, win):
    a, b = _images()
    b = b**2  # a non-linear intensity change: local and global NCC now differ
    got = registry.create("losses", "lncc", win=win)(T(b), T(a)).item()
    assert got == pytest.approx(_lncc_reference(b, a, win), abs=1e-4)


def test_ssim_matches_scikit_image(registry):
    a, b = _images((24, 24, 24))
    ref = structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)
    got = registry.create("losses", "ssim")(T(b), T(a)).item()
    assert got == pytest.approx(1 - ref, abs=1e-4)
    assert registry.create("losses", "ssim")(T(a), T(a)).item() == pytest.approx(0.0, abs=1e-5)


# ---------------------------------------------------------------- segmentation losses
def _boxes():
    """Two labels. Label 1: a 4x4x4 box vs the same box shifted by one voxel (overlap
    3x4x4 = 48, DSC = 96/128 = 0.75). Label 2: 2x2x2 vs 2x2x4 containing it (DSC = 16/24)."""
    a = np.zeros((2, 12, 12, 12))
    b = np.zeros((2, 12, 12, 12))
    a[0, 2:6, 2:6, 2:6] = 1
    b[0, 3:7, 2:6, 2:6] = 1
    a[1, 8:10, 8:10, 8:10] = 1
    b[1, 8:10, 8:10, 6:10] = 1
    return torch.tensor(a, dtype=torch.float32)[None], torch.tensor(b, dtype=torch.float32)[None]


def test_dice_matches_hand_count(registry):
    a, b = _boxes()
    expected = 1 - (0.75 + 16 / 24) / 2
    assert registry.create("losses", "dice")(a, b).item() == pytest.approx(expected, abs=1e-5)
    assert registry.create("losses", "dice")(a, a).item() == pytest.approx(0.0, abs=1e-6)


def test_soft_dice_uses_probabilities(registry):
    a, _ = _boxes()
    half = a * 0.5  # soft prediction: DSC = 2 * 0.5|A| / (0.5|A| + |A|) = 2/3
    assert registry.create("losses", "dice")(half, a).item() == pytest.approx(1 / 3, abs=1e-5)


def _hausdorff_reference(p, t, alpha=2.0):
    """Karimi-Salcudean HD loss with SciPy distance transforms (foreground + background)."""
    def dt(m):
        m = m > 0.5
        if not m.any() or m.all():
            return np.zeros(m.shape)
        return distance_transform_edt(m) + distance_transform_edt(~m)
    vals = [np.mean((p[c] - t[c]) ** 2 * (dt(p[c]) ** alpha + dt(t[c]) ** alpha)) for c in range(p.shape[0])]
    return float(np.mean(vals))


def test_hausdorff_matches_scipy_distance_transforms(registry):
    a, b = _boxes()
    rng = np.random.default_rng(1)
    soft = (b * 0.8 + 0.1 * torch.tensor(rng.random(b.shape), dtype=torch.float32)).clamp(0, 1)
    ref = _hausdorff_reference(soft[0].numpy().astype(np.float64), a[0].numpy().astype(np.float64))
    got = registry.create("losses", "hausdorff")(soft, a).item()
    assert got == pytest.approx(ref, rel=1e-4)
    assert registry.create("losses", "hausdorff")(a, a).item() == 0.0


@pytest.mark.parametrize("shape,chunk", [((9, 13, 7), 1 << 28), ((16, 11, 20), 4096)])
def test_torch_distance_transform_matches_scipy(shape, chunk):
    from ddmr_plugins.losses.segmentation import distance_transform

    rng = np.random.default_rng(2)
    masks = rng.random((3,) + shape) > 0.3  # three volumes at once, many small components
    masks[1] = True
    masks[1, 2, 3, 4] = False  # one background voxel: distances up to the far corner
    got = distance_transform(torch.from_numpy(masks), chunk_bytes=chunk).numpy()
    for k in (0, 1, 2):
        np.testing.assert_allclose(got[k], distance_transform_edt(masks[k]), rtol=1e-6, atol=1e-5)
    # a volume without background has no distance: 0, as the loss treats it
    assert (distance_transform(torch.ones(1, 4, 4, 4, dtype=torch.bool)) == 0).all()


def test_hausdorff_gpu_distance_path_matches_the_cpu_path(registry):
    """The GPU path's distance maps (torch, forced onto the CPU here) give the CPU path's loss
    (``edt``, checked against SciPy above), samples without a boundary included."""
    import pickle

    a, b = _boxes()
    rng = np.random.default_rng(3)
    soft = (b * 0.8 + 0.1 * torch.tensor(rng.random(b.shape), dtype=torch.float32)).clamp(0, 1)
    # three samples: a soft prediction, one equal to its target, one with empty maps (no boundary)
    soft = torch.cat([soft, a, torch.zeros_like(a)])
    target = torch.cat([a, a, torch.zeros_like(a)])
    loss = registry.create("losses", "hausdorff")
    cpu_value = loss(soft, target).item()
    loss.inner.torch_distance = True
    assert loss(soft, target).item() == pytest.approx(cpu_value, rel=1e-5)
    # picklable although MONAI's class is subclassed lazily (spawned workers, deepcopy)
    assert pickle.loads(pickle.dumps(loss))(soft, target).item() == pytest.approx(cpu_value, rel=1e-5)


def test_hausdorff_grows_with_distance_and_normalises(registry):
    a = torch.zeros(1, 1, 16, 16, 16)
    a[..., 4:8, 4:8, 4:8] = 1
    hd = registry.create("losses", "hausdorff")
    near, far = torch.roll(a, 1, dims=2), torch.roll(a, 4, dims=2)
    assert 0 < hd(near, a).item() < hd(far, a).item()
    norm = registry.create("losses", "hausdorff", normalise=True)
    assert norm(far, a).item() == pytest.approx(hd(far, a).item() / 16**2, rel=1e-5)


def test_segmentation_losses_give_gradients(registry):
    a, b = _boxes()
    for name in ("dice", "hausdorff"):
        p = (b * 0.6 + 0.2).requires_grad_(True)
        registry.create("losses", name)(p, a).backward()
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


# ----------------------------------------------------------------------- regularisers
def _grid(n=10):
    return np.stack(np.meshgrid(*[np.arange(n, dtype=float)] * 3, indexing="ij"))


def test_grad_l2_of_a_linear_field_is_its_squared_frobenius_norm_over_3(registry):
    A = np.array([[0.1, -0.2, 0.0], [0.3, 0.05, 0.1], [0.0, 0.2, -0.1]])
    x = _grid()
    u = np.einsum("ij,j...->i...", A, x)
    got = registry.create("losses", "grad_l2")(torch.tensor(u, dtype=torch.float32)[None]).item()
    assert got == pytest.approx((A**2).sum() / 3, rel=1e-4)


def test_grad_l2_matches_numpy_gradient_on_interior(registry):
    rng = np.random.default_rng(2)
    u = gaussian_filter(rng.standard_normal((3, 12, 12, 12)), (0, 2, 2, 2))
    grads = [np.gradient(u[i], axis=j) for i in range(3) for j in range(3)]
    ref = np.mean(sum(g[None, 1:-1, 1:-1, 1:-1] ** 2 for g in grads)) / 3
    got = registry.create("losses", "grad_l2")(torch.tensor(u, dtype=torch.float32)[None]).item()
    assert got == pytest.approx(ref, rel=1e-4)


def test_bending_energy_of_quadratic_and_affine_fields(registry):
    x = _grid()
    bending = registry.create("losses", "bending")
    # u_0 = a x_0^2: only d2u_0/dx_0^2 = 2a is non-zero; mean over the 3 components
    a = 0.05
    u = np.zeros_like(x)
    u[0] = a * x[0] ** 2
    assert bending(torch.tensor(u, dtype=torch.float32)[None]).item() == pytest.approx(4 * a**2 / 3, rel=1e-4)
    # u_1 = b x_0 x_2: the mixed derivative b counts twice (d2/dx0dx2 and d2/dx2dx0)
    b = 0.1
    u = np.zeros_like(x)
    u[1] = b * x[0] * x[2]
    assert bending(torch.tensor(u, dtype=torch.float32)[None]).item() == pytest.approx(2 * b**2 / 3, rel=1e-4)
    affine = np.einsum("ij,j...->i...", np.eye(3) * 0.2, x) + 1.0
    assert bending(torch.tensor(affine, dtype=torch.float32)[None]).item() == pytest.approx(0.0, abs=1e-6)


# ------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("name", ["ncc", "lncc", "ssim", "dice", "hausdorff"])
def test_mismatched_shapes_raise_a_clear_error(registry, name):
    with pytest.raises(DataError, match=f"loss {name}.*same shape"):
        registry.create("losses", name)(torch.zeros(1, 1, 16, 16, 16), torch.zeros(1, 1, 16, 16, 12))


@pytest.mark.parametrize("name", ["grad_l2", "bending"])
def test_regularisers_reject_non_fields(registry, name):
    with pytest.raises(DataError, match=r"\(B, 3, D, H, W\)"):
        registry.create("losses", name)(torch.zeros(1, 2, 8, 8, 8))


def test_separable_ssim_matches_monai(registry):
    # same statistics as MONAI's dense-kernel SSIMLoss, on a batch with two channels
    from monai.losses import SSIMLoss as MonaiSSIM

    rng = np.random.default_rng(3)
    a = torch.tensor(gaussian_filter(rng.random((2, 2, 20, 22, 24)), (0, 0, 1, 1, 1)), dtype=torch.float32)
    b = torch.tensor(gaussian_filter(rng.random((2, 2, 20, 22, 24)), (0, 0, 1, 1, 1)), dtype=torch.float32)
    ref = MonaiSSIM(spatial_dims=3, data_range=1.0, kernel_type="gaussian", win_size=11, kernel_sigma=1.5)(a, b)
    got = registry.create("losses", "ssim")(a, b)
    # float32 sums in a different order: agreement to 1e-4, as with scikit-image
    assert got.item() == pytest.approx(ref.item(), abs=1e-4)


def test_epe_is_the_mean_euclidean_distance_between_fields(registry):
    epe = registry.create("losses", "epe")
    assert epe.inputs == "displacement"
    true = torch.zeros(2, 3, 6, 5, 4)
    pred = true.clone()
    pred[:, 0] += 3.0
    pred[:, 2] += 4.0  # every vector off by (3, 0, 4): distance 5 voxels
    assert epe(pred, true).item() == pytest.approx(5.0, abs=1e-5)
    pred[1] = true[1]  # the second sample exact: mean over samples and voxels
    assert epe(pred, true).item() == pytest.approx(2.5, abs=1e-3)  # sqrt(eps) where exact
    exact = true.clone().requires_grad_(True)
    epe(exact, true).backward()
    assert torch.isfinite(exact.grad).all()


def test_epe_rejects_fields_of_different_grids(registry):
    with pytest.raises(DataError, match="same shape"):
        registry.create("losses", "epe")(torch.zeros(1, 3, 4, 4, 4), torch.zeros(1, 3, 4, 4, 5))


def test_mi_loss_is_zero_for_any_one_to_one_contrast_map_and_large_for_unrelated_images(registry):
    a, b = _images()
    loss = registry.create("losses", "mi")
    assert loss.inputs == "image"
    assert loss(T(a), T(a)).item() == pytest.approx(0.0, abs=1e-5)
    assert loss(T(1 - a), T(a)).item() == pytest.approx(0.0, abs=1e-5)  # inverted contrast
    unrelated = np.random.default_rng(5).random(a.shape)
    assert loss(T(unrelated), T(a)).item() > 0.7
    assert 0.0 < loss(T(b), T(a)).item() < loss(T(unrelated), T(a)).item()
    with pytest.raises(DataError, match="loss mi.*same shape"):
        loss(torch.zeros(1, 1, 8, 8, 8), torch.zeros(1, 1, 8, 8, 6))
