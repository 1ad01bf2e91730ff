"""ddmr_core.registration.second_pass: a second network on the pair put into one contrast."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from ddmr_core.registration.second_pass import inverse_consistency, mirrored, second_pass, symmetric
from ddmr_core.spatial.fields import resize_field

from conftest import smooth_field
from test_contrast import phantom  # the three-tissue head of the contrast maps' tests


def shift_field(shape, shift):
    d = torch.zeros(1, 3, *shape)
    for axis, s in enumerate(shift):
        d[:, axis] = float(s)
    return d


def centroid(img):
    w = img[0, 0].double()
    grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in w.shape], indexing="ij")
    return [float((g * w).sum() / w.sum()) for g in grids]


def centroid_network(fraction: float = 1.0, bias=(0.0, 0.0, 0.0)):
    """A stand-in network: ``fraction`` of the shift between the two images' centroids,
    plus ``bias`` voxels, as a constant pull field."""
    def predict(f, m):
        shift = [b - a for a, b in zip(centroid(f), centroid(m))]
        return shift_field(f.shape[2:], [fraction * d + o for d, o in zip(shift, bias)])
    return predict


def test_inverse_consistency_of_a_shift_and_its_reverse():
    shape = (12, 12, 12)
    mask = torch.zeros(1, 1, *shape, dtype=torch.bool)
    mask[..., 3:9, 3:9, 3:9] = True
    fwd = shift_field(shape, (1.5, 0.0, -2.0))
    assert inverse_consistency(fwd, shift_field(shape, (-1.5, 0.0, 2.0)), mask) == pytest.approx(0.0, abs=1e-6)
    # no reverse at all: the error is the shift's length, 2.5 voxels
    assert inverse_consistency(fwd, torch.zeros_like(fwd), mask) == pytest.approx(2.5, abs=1e-5)
    # the same shift both ways (a network that ignores which image is which): twice its length
    assert inverse_consistency(fwd, fwd, mask) == pytest.approx(5.0, abs=1e-5)


def test_the_mirrored_prediction_cancels_a_bias_to_one_side():
    # a "network" that finds a pair's shift from the images' centroids but adds a bias of
    # 0.6 voxels towards +axis 0 (a side it prefers). Mirrored along axis 0, the pair's
    # shift along that axis changes sign and the bias does not: mirrored back, the field
    # is the shift minus the bias, and the mean of the two is the shift, on every axis
    fixed, _ = phantom((0.0, 0.3, 0.6, 1.0))
    shift = (1.5, -1.0, 0.5)
    moving, _ = phantom((0.0, 0.3, 0.6, 1.0), shift=shift)

    biased = centroid_network(bias=(0.6, 0.0, 0.0))

    found = biased(fixed, moving)[0, :, 0, 0, 0]
    back = mirrored(biased, fixed, moving, 0)[0, :, 0, 0, 0]
    assert found.tolist() == pytest.approx([2.1, -1.0, 0.5], abs=0.02)
    assert back.tolist() == pytest.approx([0.9, -1.0, 0.5], abs=0.02)
    assert (0.5 * (found + back)).tolist() == pytest.approx(list(shift), abs=0.02)
    # along another axis the bias stays: mirroring cancels only what the mirror flips
    assert mirrored(biased, fixed, moving, 1)[0, 0, 0, 0, 0].item() == pytest.approx(2.1, abs=0.02)


def t1_like(image: torch.Tensor, labels: np.ndarray) -> bool:
    """Whether ``image`` orders the phantom's tissues (``labels``, where it lies) as the T1
    does: the core brighter than the middle."""
    x = image[0, 0].numpy()
    return x[ndimage.binary_erosion(labels == 3)].mean() > x[ndimage.binary_erosion(labels == 2)].mean()


@pytest.mark.parametrize("t1_fixed", [True, False])
def test_the_way_kept_is_the_one_the_second_network_inverts(t1_fixed):
    # a stand-in for a network of one contrast (T1): on two T1-like images it returns the
    # pair's true shift (the reverse one when the images come the other way round); on
    # anything else a field that does not depend on the order of the images, which does
    # not invert. The way that puts the pair into the T1's contrast must win, whichever
    # image the T1 is, and its field is the one returned
    t1_values, t2_values = (0.0, 0.3, 0.6, 1.0), (0.0, 1.0, 0.6, 0.2)
    shift = (0.0, 2.0, 0.0)
    fixed, at_fixed = phantom(t1_values if t1_fixed else t2_values)
    moving, at_moving = phantom(t2_values if t1_fixed else t1_values, shift=shift)
    true = shift_field(fixed.shape[2:], shift)

    def lies_at_fixed(image):
        fg = image[0, 0].numpy() > 0.05
        return (fg == (at_fixed > 0)).mean() > (fg == (at_moving > 0)).mean()

    calls = []

    def network(f, m):
        forward = lies_at_fixed(f)
        lf, lm = (at_fixed, at_moving) if forward else (at_moving, at_fixed)
        calls.append((forward, t1_like(f, lf), t1_like(m, lm)))
        if not (t1_like(f, lf) and t1_like(m, lm)):
            return shift_field(f.shape[2:], (1.0, 0.0, 1.0))
        return true if forward else -true

    # the maps from the true alignment; no cascade (its steps are the next tests')
    disp, info = second_pass(network, fixed, moving, true, cascade=0)
    assert info["way"] == ("moving_to_fixed" if t1_fixed else "fixed_to_moving")
    errors = info["inverse_consistency"]
    assert errors[info["way"]] < 0.05 and errors[info["way"]] == min(errors.values())
    assert max(errors.values()) > 1.0
    assert torch.equal(disp, true)
    # each way was predicted both ways round, and the pair mapped into the T1's contrast
    # was T1-like on both sides
    assert len(calls) == 4 and sum(f and m for _, f, m in calls) == 2


def test_the_symmetric_estimate_cancels_a_bias_that_does_not_turn_with_the_pair():
    # a "network" that finds the shift from the centroids and adds 0.5 voxel along axis 2
    # whichever way round the pair comes: the reverse field is -shift + bias, its inverse
    # shift - bias, and the average of that and the forward field is the shift
    fixed, _ = phantom((0.0, 0.3, 0.6, 1.0))
    shift = (1.0, -1.5, 0.5)
    moving, _ = phantom((0.0, 0.3, 0.6, 1.0), shift=shift)

    biased = centroid_network(bias=(0.0, 0.0, 0.5))

    assert biased(fixed, moving)[0, :, 0, 0, 0].tolist() == pytest.approx([1.0, -1.5, 1.0], abs=0.02)
    sym = symmetric(biased, fixed, moving)
    assert sym[0, :, 0, 0, 0].tolist() == pytest.approx(list(shift), abs=0.02)
    # the fields given are the ones used: no prediction is made again
    given = symmetric(None, fixed, moving, biased(fixed, moving), biased(moving, fixed))
    assert torch.allclose(given, sym)


def test_the_symmetric_estimate_inverted_on_the_networks_grid_matches_the_images_grid():
    # a network's fields are its own grid's resized, so inverting them there (cheaper: a 1 mm
    # working grid has ~20x the voxels of brain-mr's 64^3) gives the same estimate
    shape, grid = (48, 40, 44), (24, 20, 22)
    coarse = torch.from_numpy(smooth_field(grid, 1.0, seed=3))[None].double()
    forward = resize_field(coarse, shape)
    backward = -resize_field(0.8 * coarse, shape)  # not the exact inverse: the two disagree
    fine = symmetric(None, None, None, forward, backward)
    on_grid = symmetric(None, None, None, forward, backward, grid=grid)
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4), slice(4, -4))
    assert (fine - forward)[inner].abs().max() > 0.1  # the reverse field does change the estimate
    # within 0.05 voxel anywhere, for fields of up to 2 voxels (linear interpolation's order)
    assert (on_grid - fine)[inner].abs().max() < 0.05
    assert (on_grid - fine)[inner].abs().mean() < 0.01


@pytest.mark.parametrize("steps", [0, 1, 2])
def test_each_cascade_step_registers_what_the_field_so_far_left(steps):
    # a "network" that finds only 60 % of a pair's shift (a motion larger than it was
    # trained on): after k cascade steps the field is 1 - 0.4^(k + 1) of the shift, and
    # each step's length is what the step before it left, times 0.6
    fixed, labels = phantom((0.0, 0.3, 0.6, 1.0))
    shift = (2.0, -2.5, 1.0)
    moving, _ = phantom((0.0, 0.3, 0.6, 1.0), shift=shift)
    true = shift_field(fixed.shape[2:], shift)

    timid = centroid_network(0.6)

    disp, info = second_pass(timid, fixed, moving, true, cascade=steps)
    inner = torch.from_numpy(ndimage.binary_erosion(labels > 0, iterations=4))
    found = disp[0][:, inner].mean(dim=1)
    expected = [(1 - 0.4 ** (steps + 1)) * s for s in shift]
    assert found.tolist() == pytest.approx(expected, abs=0.05)
    length = float(np.linalg.norm(shift))
    assert info["cascade_steps"] == pytest.approx([0.6 * 0.4 ** (k + 1) * length for k in range(steps)], rel=0.05)


def test_brain_mr_any_with_its_second_pass_registers_a_t2_like_scan_better():
    # the shipped models on a brain pair of two contrasts at 3 mm: the MNI T1 template
    # (fixed) and a T2-like copy made from its tissue maps (CSF bright, white matter
    # dark), rotated by 5 degrees, shifted and warped. The card of brain-mr-any names
    # brain-mr as its second network; the way kept must be the one into the T1's
    # contrast, and the label Dice must beat brain-mr-any's own field (measured: 0.755
    # against 0.734, and 0.723 against 0.705 the other way; at 2 mm 0.808 / 0.770 and
    # 0.789 / 0.757). The roles swapped, the other way.
    from ddmr_core.data.io import load_image
    from ddmr_core.registration.register import Registrar
    from ddmr_plugins.datasets.mni_brain import load_template, template_files

    t1, labels, _ = load_template()
    files = template_files()
    gm, wm = (load_image(files[k])[0] for k in ("gm", "wm"))
    scale = 255.0 if max(gm.max(), wm.max()) > 1.5 else 1.0
    brain = (labels > 0).astype(np.float32)
    gm, wm = gm / scale * brain, wm / scale * brain
    csf = np.clip(brain - gm - wm, 0, 1)
    t2 = (1.0 * csf + 0.55 * gm + 0.3 * wm) * float(t1.max())
    sub = (slice(None, None, 3),) * 3
    t1, t2, labels = t1[sub], t2[sub].astype(np.float32), labels[sub]

    warp = smooth_field(t1.shape, 2.0, seed=3)  # up to 2 voxels (6 mm), smooth
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in t1.shape], indexing="ij"))

    def moved(volume, order):
        out = ndimage.rotate(volume, 5, axes=(0, 1), reshape=False, order=order)
        out = ndimage.shift(out, (2.0, -1.5, 1.0), order=order)
        return ndimage.map_coordinates(out, grid + warp, order=order)

    reg = Registrar("brain-mr-any")  # network alone (no refinement): its first pass, then brain-mr
    assert reg.second is not None and reg.second.model_info["name"] == "brain-mr"
    second = reg.second
    moving_labels = moved(labels, 0)
    for fixed, moving, way in ((t1, moved(t2, 1), "moving_to_fixed"), (t2, moved(t1, 1), "fixed_to_moving")):
        res = reg.register(fixed, moving, moving_seg=moving_labels, fixed_seg=labels)
        assert res.metrics["second_pass"]["way"] == way
        assert res.model["second_pass"]["name"] == "brain-mr"
        dice = {"second": res.metrics["after"]["dice_mean"]}
        reg.second = None  # brain-mr-any's own field
        try:
            res = reg.register(fixed, moving, moving_seg=moving_labels, fixed_seg=labels)
        finally:
            reg.second = second
        assert "second_pass" not in res.metrics
        dice["first"] = res.metrics["after"]["dice_mean"]
        assert dice["second"] > dice["first"] + 0.01, dice


def test_ddmr_register_runs_the_second_pass_the_card_names_unless_told_not_to(tmp_path):
    from conftest import run_cli, save_nifti

    fixed, _ = phantom((0.0, 0.3, 0.6, 1.0), shape=(32, 32, 32))
    moving, _ = phantom((0.0, 1.0, 0.6, 0.2), shape=(32, 32, 32), shift=(0.0, 1.5, 0.0))
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    f = save_nifti(tmp_path / "f.nii.gz", fixed[0, 0].numpy(), aff)
    m = save_nifti(tmp_path / "m.nii.gz", moving[0, 0].numpy(), aff)
    import json

    for extra, second in (((), True), (("--no-second-pass",), False)):
        out = tmp_path / f"out{len(extra)}"
        proc = run_cli("register", "--fixed", f, "--moving", m, "--model", "brain-mr-any", "--refine", "0", "--out", str(out),
                       "--outputs", "results", *extra)
        assert proc.returncode == 0, proc.stderr
        assert ("second network brain-mr@1" in proc.stdout) is second
        results = json.loads((out / "results.json").read_text())
        assert ("second_pass" in results["metrics"]) is second
        if second:
            assert results["metrics"]["second_pass"]["way"] in ("moving_to_fixed", "fixed_to_moving")


def test_a_second_network_that_is_not_there_is_named_with_the_model_that_asked_for_it():
    from ddmr_core.errors import UnknownNameError
    from ddmr_core.registration.register import Registrar

    with pytest.raises(UnknownNameError, match=r"'brain-mr-any@1'.*second network 'no-such-model'"):
        Registrar("brain-mr-any", second_pass="no-such-model")


def test_the_maps_smoothing_scales_with_the_first_networks_voxels(monkeypatch):
    # 0.6 of a voxel of the first network's grid, in voxels of the working grid: the same
    # width in mm whatever the scan's spacing (a 2 mm brain: ~0.8 voxel, a 1 mm one: ~1.6)
    from ddmr_core.registration import second_pass as sp

    seen = []
    real = sp.map_both_ways

    def spy(fixed, moving, disp, smooth=0.0, **kwargs):
        seen.append(smooth)
        return real(fixed, moving, disp, smooth=smooth, **kwargs)

    monkeypatch.setattr(sp, "map_both_ways", spy)
    img, _ = phantom((0.0, 0.2, 0.6, 1.0))  # 40^3

    def predict(f, m):
        return torch.zeros(1, 3, *f.shape[2:])

    zero = torch.zeros(1, 3, *img.shape[2:])
    sp.second_pass(predict, img, img, zero, first_grid=(20, 20, 20))
    sp.second_pass(predict, img, img, zero, first_grid=(40, 40, 40))
    sp.second_pass(predict, img, img, zero)
    # each pass maps the pair twice (from the first network's field, then for the cascade)
    assert seen == pytest.approx([sp.MAP_SMOOTHING * 2] * 2 + [sp.MAP_SMOOTHING] * 2 + [0.0] * 2)


def test_the_cascade_maps_the_pair_again_from_the_field_so_far(monkeypatch):
    from ddmr_core.registration import second_pass as sp

    seen = []
    real = sp.map_both_ways

    def spy(fixed, moving, disp, smooth=0.0, **kwargs):
        seen.append(disp[0].mean(dim=(1, 2, 3)).tolist())
        return real(fixed, moving, disp, smooth=smooth, **kwargs)

    monkeypatch.setattr(sp, "map_both_ways", spy)
    shift = (2.0, -1.0, 1.0)
    fixed, _ = phantom((0.0, 0.3, 0.6, 1.0))
    moving, _ = phantom((0.0, 0.3, 0.6, 1.0), shift=shift)

    timid = centroid_network(0.6)  # 60 % of the pair's shift, as above

    first = shift_field(fixed.shape[2:], (0.5, 0.0, 0.0))  # a poor first alignment
    sp.second_pass(timid, fixed, moving, first, cascade=1)
    assert len(seen) == 2
    assert seen[0] == pytest.approx([0.5, 0.0, 0.0], abs=1e-6)
    assert seen[1] == pytest.approx([0.6 * v for v in shift], abs=0.05)
    sp.second_pass(timid, fixed, moving, first, cascade=0)
    assert len(seen) == 3  # no cascade, no second mapping


@pytest.mark.parametrize("shift, scale, steps", [((0.5, -0.5, 0.25), 1, 1), ((3.0, -3.5, 2.0), 2, 2),
                                                  ((3.0, -3.5, 2.0), 1, 3)])
def test_more_cascade_steps_run_while_the_last_one_was_long(shift, scale, steps):
    # the 60 % network again: step k has length 0.6 * 0.4^k * |shift| (here 1.2, 0.48, 0.19
    # voxels for the larger shift); steps after the first run while the last one exceeded
    # CASCADE_LONG_STEP (0.4) voxels of the network's grid, the images' grid / scale, up to
    # CASCADE_MAX (3) steps
    fixed, _ = phantom((0.0, 0.3, 0.6, 1.0))
    moving, _ = phantom((0.0, 0.3, 0.6, 1.0), shift=shift)
    true = shift_field(fixed.shape[2:], shift)

    timid = centroid_network(0.6)

    grid = tuple(n // scale for n in fixed.shape[2:])
    _, info = second_pass(timid, fixed, moving, true, second_grid=grid)
    assert len(info["cascade_steps"]) == steps
    long = [s / scale > 0.4 for s in info["cascade_steps"]]
    assert long[:-1] == [True] * (steps - 1) and (steps == 3 or not long[-1])
    # without the network's grid, only the steps always run
    _, info = second_pass(timid, fixed, moving, true)
    assert len(info["cascade_steps"]) == 1
