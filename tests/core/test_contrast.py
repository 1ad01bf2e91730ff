"""ddmr_core.spatial.contrast: a pair of two contrasts put into one."""

import dataclasses

import numpy as np
import torch
from scipy import ndimage

from ddmr_core.model.registration_model import RegistrationModel
from ddmr_core.spatial.contrast import (SMOOTH_FIT, background_mask, estimate_contrast_map, map_both_ways, match_contrast,
                                        refine_across_contrasts)
from ddmr_core.spatial.fields import warp
from ddmr_core.spatial.refine import refine_field
from ddmr_core.spatial.similarity import global_ncc

SHAPE = (40, 40, 40)


def phantom(values, shape=SHAPE, shift=(0.0, 0.0, 0.0), noise=0.0, seed=0, blur=0.7):
    """A three-tissue head: an outer shell (tissue 1), a lumpy middle (2) and an inner
    core (3) on a background of ``values[0]``, partial volumes blurred over ``blur``
    voxels; the tissue boundaries are not spheres, so a shift of the phantom is visible."""
    z, y, x = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    c = [(n - 1) / 2 + s for n, s in zip(shape, shift)]
    r = np.sqrt((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2)
    lump = 2.0 * np.sin((x - c[2]) / 3.0) * np.cos((y - c[1]) / 4.0)
    labels = np.zeros(shape, np.int64)
    labels[r < 16] = 1
    labels[r + lump < 12] = 2
    labels[r - lump < 6] = 3
    img = np.asarray(values, np.float64)[labels]
    img = ndimage.gaussian_filter(img, blur) if blur else img
    img += np.random.default_rng(seed).normal(0, noise, shape) * (labels > 0)
    return torch.from_numpy(img.astype(np.float32))[None, None], labels


def test_the_background_is_what_connects_to_the_border_however_dark_the_tissue_inside():
    # an inverted T1: the core (white matter) is as dark as the air around the head
    img, labels = phantom((0.0, 0.7, 1.0, 0.0))
    bg = background_mask(img)[0, 0].numpy()
    assert bg[ndimage.binary_erosion(labels == 0, iterations=2, border_value=1)].all()
    assert not bg[ndimage.binary_erosion(labels == 3, iterations=2)].any()
    assert not bg[labels == 2].any()
    # the same for a bright background
    assert (background_mask(1.0 - img)[0, 0].numpy() == bg).all()


def test_a_non_monotonic_remap_of_aligned_tissues_is_inverted():
    # fixed: a T1-like phantom; moving: the same tissues in another order (FLAIR-like: the
    # middle brightest, the core between), with noise. Without partial volumes (blur=0)
    # the conditional mean is the remap's inverse exactly; a blurred boundary between
    # two tissues passes through the values between theirs, which then mix tissues
    fixed, labels = phantom((0.0, 0.2, 0.6, 1.0), blur=0)
    moving, _ = phantom((0.0, 0.5, 0.9, 0.7), noise=0.01, blur=0)
    out = match_contrast(fixed, moving)[0, 0].numpy()
    inner = ndimage.binary_erosion(labels > 0, iterations=2)
    core = ndimage.binary_erosion(labels == 3, iterations=2)
    middle = ndimage.binary_erosion(labels == 2, iterations=2)
    assert abs(out[core].mean() - 1.0) < 0.02 and abs(out[middle].mean() - 0.6) < 0.02
    assert np.abs(out - fixed[0, 0].numpy())[inner].mean() < 0.03
    assert np.abs(out[labels == 0]).max() == 0  # the background takes the fixed one's level


def test_the_map_is_estimated_through_the_alignment_given():
    fixed, labels = phantom((0.0, 0.2, 0.6, 1.0))
    moving, _ = phantom((0.0, 0.5, 0.9, 0.7), shift=(3.0, 0.0, 0.0))
    # the pull field of a shift by 3 voxels along the first axis
    disp = torch.zeros(1, 3, *SHAPE)
    disp[:, 0] = 3.0
    inner = torch.from_numpy(ndimage.binary_erosion(labels > 0, iterations=3))
    err_aligned = (warp(match_contrast(fixed, moving, disp), disp) - fixed)[0, 0][inner].abs().mean()
    err_unaligned = (warp(match_contrast(fixed, moving), disp) - fixed)[0, 0][inner].abs().mean()
    assert err_aligned < 0.06 and err_aligned < 0.7 * err_unaligned


def test_a_table_for_each_sample_of_a_batch():
    f1, _ = phantom((0.0, 0.2, 0.6, 1.0))
    m1, _ = phantom((0.0, 0.5, 0.9, 0.7))
    m2, _ = phantom((0.0, 1.0, 0.6, 0.2))  # inverted order
    fixed, moving = torch.cat([f1, f1]), torch.cat([m1, m2])
    cmap = estimate_contrast_map(fixed, moving)
    assert cmap.table.shape[0] == 2
    out = cmap(moving)
    for b, m in enumerate((m1, m2)):
        single = estimate_contrast_map(f1, m)(m)
        assert torch.allclose(out[b:b + 1], single, atol=1e-5)


class Zero(torch.nn.Module):
    def forward(self, fixed, moving):
        return torch.zeros(fixed.shape[0], 3, *fixed.shape[2:])


def test_refinement_across_contrasts_registers_only_with_the_contrast_matched():
    """An inverted-contrast moving image shifted by 1.5 voxels: NCC of the raw images pulls
    the wrong way; against the matched image the refinement finds the shift."""
    fixed, labels = phantom((0.0, 0.2, 0.6, 1.0))
    moving, _ = phantom((0.0, 1.0, 0.6, 0.2), shift=(1.5, 0.0, 0.0))
    truth, _ = phantom((0.0, 0.2, 0.6, 1.0), shift=(1.5, 0.0, 0.0))  # the moving in the fixed contrast
    model = RegistrationModel(Zero(), refine_iterations=40).eval()
    model.refine_options = {"window": 0, "lr": 0.1}
    inner = (slice(None), slice(None)) + (slice(8, -8),) * 3
    results = {}
    for matched in (False, True):
        model.refine_match_contrast = matched
        with torch.inference_mode():
            disp = model.predict_field(fixed, moving)
        results[matched] = global_ncc(warp(truth, disp, padding="border")[inner], fixed[inner]).item()
    before = global_ncc(truth[inner], fixed[inner]).item()
    assert results[True] > before + 0.5 * (1 - before)
    assert results[True] > results[False]


def test_refinement_across_contrasts_registers_whichever_image_is_ambiguous():
    """One image tells the tissues apart (shell < middle < core), the other gives the shell
    and the core one value (as a PD scan does CSF and a grey/white mixture), so a map from
    it blends two tissues and a map to it does not. Whether the ambiguous image is the
    fixed or the moving one, refining with both ways pooled registers a 1.5-voxel shift
    (raw NCC pulls the wrong way or not at all), and never worse than the worse of the
    two ways alone, without being told which is which."""
    clear, ambiguous = (0.0, 0.2, 0.6, 1.0), (0.0, 0.8, 0.3, 0.8)
    model = RegistrationModel(Zero(), refine_iterations=40).eval()
    model.refine_options = {"window": 0, "lr": 0.1}
    model.refine_match_contrast = True
    inner = (slice(None), slice(None)) + (slice(8, -8),) * 3
    zero = torch.zeros(1, 3, *SHAPE)
    for fixed_values, moving_values in ((clear, ambiguous), (ambiguous, clear)):
        fixed, _ = phantom(fixed_values)
        moving, _ = phantom(moving_values, shift=(1.5, 0.0, 0.0))
        truth, _ = phantom(fixed_values, shift=(1.5, 0.0, 0.0))  # the moving image in the fixed contrast

        def score(disp):
            return global_ncc(warp(truth, disp, padding="border")[inner], fixed[inner]).item()

        with torch.inference_mode():
            disp = model.predict_field(fixed, moving)
        before, after = score(zero), score(disp)
        assert after > before + 0.25 * (1 - before), (fixed_values, before, after)
        assert disp[0, 0][inner[2:]].mean().item() > 0.5  # toward the 1.5-voxel shift
        options = dict(iterations=40, window=0, lr=0.1)
        raw = score(refine_field(fixed, moving, zero, **options))
        fixed_into_moving = estimate_contrast_map(moving, fixed)(fixed)
        one_way = [score(refine_field(fixed, match_contrast(fixed, moving), zero, **options)),
                   score(refine_field(fixed_into_moving, moving, zero, **options))]
        assert after > raw + 0.1 and after >= min(one_way) - 0.005, (fixed_values, raw, one_way, after)


def test_refinement_across_contrasts_treats_each_sample_of_a_batch_alone():
    clear, ambiguous = (0.0, 0.2, 0.6, 1.0), (0.0, 0.8, 0.3, 0.8)
    f1, _ = phantom(clear)
    m1, _ = phantom(ambiguous, shift=(1.5, 0.0, 0.0))
    f2, _ = phantom(ambiguous)
    m2, _ = phantom(clear, shift=(0.0, -1.0, 0.0))
    disp = torch.zeros(2, 3, *SHAPE)
    both = refine_across_contrasts(torch.cat([f1, f2]), torch.cat([m1, m2]), disp, iterations=20, window=0)
    for b, (f, m) in enumerate(((f1, m1), (f2, m2))):
        alone = refine_across_contrasts(f, m, disp[:1], iterations=20, window=0)
        # equal up to float summation order (the two samples' fields differ by ~1 voxel)
        diff = (both[b:b + 1] - alone).abs()
        assert diff.mean() < 1e-3 and diff.max() < 0.05


def test_the_rim_of_partial_volume_maps_to_the_mix_not_to_a_tissue_of_its_intensity():
    # a T2-like moving image against a T1-like fixed one, partial volumes blurred over a
    # voxel: where the bright shell meets the dark background the moving image passes
    # through the middle tissue's value (0.6). The interior's table would send those
    # voxels to that tissue's T1 value (a bright halo around the fixed image's dark rim);
    # the rim's own table sends them to the mix of shell and background they are
    fixed, labels = phantom((0.0, 0.3, 0.6, 1.0), blur=1.0)
    moving, _ = phantom((0.0, 1.0, 0.6, 0.2), noise=0.005, blur=1.0)
    cmap = estimate_contrast_map(fixed, moving)
    out = cmap(moving)[0, 0].numpy()
    f = fixed[0, 0].numpy()
    bg = background_mask(moving)[0, 0].numpy()
    rim = ndimage.binary_dilation(bg, iterations=2) & ~bg
    halfway = rim & (np.abs(moving[0, 0].numpy() - 0.6) < 0.1)  # the rim at the middle tissue's value
    assert halfway.sum() > 200
    assert np.abs(out - f)[rim].mean() < 0.05
    assert np.abs(out - f)[halfway].mean() < 0.08
    # the interior's table on the same voxels: the halo
    interior_only = dataclasses.replace(cmap, rim_table=cmap.table)(moving)[0, 0].numpy()
    assert (interior_only - f)[halfway].mean() > 0.3
    # and the interior is mapped as before
    inner = ndimage.binary_erosion(labels > 0, iterations=3)
    assert np.abs(out - f)[inner].mean() < 0.05


def test_the_fit_is_the_share_of_the_fixed_variance_the_map_explains():
    fixed, _ = phantom((0.0, 0.2, 0.6, 1.0), blur=0)
    inverted, _ = phantom((0.0, 1.0, 0.6, 0.2), blur=0)
    assert float(estimate_contrast_map(fixed, inverted).fit[0]) > 0.999  # a function of it
    # tissues 1 and 3 share the moving value 0.5: the fixed image's 0.2 and 1.0 there are
    # a variance the table cannot explain
    ambiguous, _ = phantom((0.0, 0.5, 0.9, 0.5), blur=0)
    fit = float(estimate_contrast_map(fixed, ambiguous).fit[0])
    assert 0.0 < fit < SMOOTH_FIT
    noise = torch.rand(fixed.shape, generator=torch.Generator().manual_seed(0)) * (fixed > 0)
    assert float(estimate_contrast_map(fixed, noise).fit[0]) < 0.05  # nothing to explain it


def test_a_map_through_a_poor_alignment_comes_closer_from_the_pair_smoothed():
    # the moving image, an inverted copy shifted by 1.5 voxels, registered by a zero field:
    # the map through that misalignment blurs the tissues' values into each other, less so
    # when both images are smoothed first. The truth: the shifted phantom in the fixed contrast
    fixed, _ = phantom((0.0, 0.2, 0.6, 1.0))
    zero = torch.zeros(1, 3, *SHAPE)
    errors = {}
    for shift in (0.0, 1.5):
        moving, labels = phantom((0.0, 1.0, 0.6, 0.2), shift=(shift, 0, 0), noise=0.01, seed=1)
        truth = phantom((0.0, 0.2, 0.6, 1.0), shift=(shift, 0, 0))[0][0, 0].numpy()
        inner = ndimage.binary_erosion(labels > 0, iterations=3)
        for smooth in (0.0, 0.8):
            mapped = map_both_ways(fixed, moving, zero, smooth=smooth)[1][0, 0].numpy()
            errors[shift, smooth] = np.abs(mapped - truth)[inner].mean()
    assert errors[1.5, 0.8] < 0.85 * errors[1.5, 0.0]  # measured 0.023 against 0.030
    assert errors[0.0, 0.8] < errors[0.0, 0.0] + 0.002  # aligned: about the same (0.0073, 0.0068)
    # an ambiguous map (fit below SMOOTH_FIT) is not smoothed: the same image either way
    ambiguous, _ = phantom((0.0, 0.5, 0.9, 0.5), shift=(1.5, 0, 0), noise=0.01, seed=1)
    assert torch.equal(map_both_ways(fixed, ambiguous, zero, smooth=0.8)[1], map_both_ways(fixed, ambiguous, zero)[1])
    # and the fixed image's map never is
    assert torch.equal(map_both_ways(fixed, moving, zero, smooth=0.8)[0], map_both_ways(fixed, moving, zero)[0])


def test_the_rim_is_the_background_dilated_by_a_cube_as_scipy_dilates_it():
    from ddmr_core.spatial.contrast import _near_background

    rng = np.random.default_rng(4)
    background = torch.from_numpy(rng.random((2, 1, 15, 12, 17)) > 0.97)
    for voxels in (1, 2, 3):
        cube = np.ones((2 * voxels + 1,) * 3, bool)
        expected = np.stack([ndimage.binary_dilation(b[0], cube)[None] for b in background.numpy()])
        assert np.array_equal(_near_background(background, voxels).numpy(), expected)
