"""ddmr_core.spatial.filters against scipy.ndimage."""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from ddmr_core.spatial.filters import gaussian_blur


def test_blur_is_scipys_gaussian_per_sample_and_for_all():
    rng = np.random.default_rng(0)
    x = rng.random((2, 1, 20, 18, 16)).astype(np.float32)
    got = gaussian_blur(torch.from_numpy(x), torch.tensor([1.0, 0.0]))
    # sigma 1: the same radius (3) as scipy's truncate=3, so the same values, borders included
    ref = gaussian_filter(x[0, 0], 1.0, mode="mirror", truncate=3.0)
    np.testing.assert_allclose(got[0, 0].numpy(), ref, atol=1e-5)
    np.testing.assert_allclose(got[1, 0].numpy(), x[1, 0], atol=1e-6)  # sigma 0: unchanged
    both = gaussian_blur(torch.from_numpy(x), 2.0)  # one sigma for all samples
    for b in range(2):
        np.testing.assert_allclose(both[b, 0].numpy(), gaussian_filter(x[b, 0], 2.0, mode="mirror", truncate=3.0),
                                   atol=1e-5)
    assert torch.equal(gaussian_blur(torch.from_numpy(x), 0.0), torch.from_numpy(x))
    assert float(gaussian_blur(torch.ones(1, 1, 8, 8, 8), 1.5).sub(1).abs().max()) < 1e-6  # normalised


def test_blur_of_a_thin_axis_replicates_its_edge():
    x = torch.zeros(1, 1, 12, 12, 2)
    x[..., 0] = 1.0
    y = gaussian_blur(x, 1.0)  # radius 3 > the axis: replicate padding, still a weighted mean
    assert torch.isfinite(y).all() and float(y.min()) >= 0 and float(y.max()) <= 1
    assert float(y[..., 0].mean()) > float(y[..., 1].mean())
