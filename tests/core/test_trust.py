"""A wrong registration is never a plain success: ddmr_core.registration.trust.assess and the warning
`ddmr register` gives; which model suits which pair (model_card.suitability)."""

import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

from ddmr_core.errors import RegistrationQualityWarning
from ddmr_core.model.card import suitability
from ddmr_core.registration.register import Registrar, assess


def head(shape=(40, 44, 40), seed=0):
    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.random(shape), 2.0)
    img = (img - img.min()) / (img.max() - img.min())
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    mask = (zz / 0.75) ** 2 + (yy / 0.6) ** 2 + ((xx - 0.1) / 0.65) ** 2 < 1
    return (img * mask + 0.3 * mask).astype(np.float32)


def T(a):
    return torch.from_numpy(np.ascontiguousarray(a))[None, None]


def test_assess_flags_a_field_that_moves_the_images_apart_and_one_that_folds():
    fixed = head()
    moving = np.roll(fixed, 3, axis=0)
    right = torch.zeros(1, 3, *fixed.shape)
    right[:, 0] = 3.0  # moving(x + 3) = fixed(x): the true field
    wrong = torch.zeros(1, 3, *fixed.shape)
    wrong[:, 0] = -3.0
    ok = assess(T(fixed / fixed.max()), T(moving / fixed.max()), right)
    assert ok["trusted"] and ok["nmi_after"] > ok["nmi_before"]
    bad = assess(T(fixed / fixed.max()), T(moving / fixed.max()), wrong)
    assert not bad["trusted"] and "mutual information" in bad["flags"][0]
    # an inverted moving image is no reason to distrust a right field: the measure is contrast-free
    inv = assess(T(fixed / fixed.max()), T(1 - moving / fixed.max()), right)
    assert inv["trusted"]
    # a pair already aligned: a field that leaves it be is trusted, one that moves it apart is not
    still = assess(T(fixed / fixed.max()), T(fixed / fixed.max()), torch.zeros_like(right))
    assert still["trusted"] and still["nmi_before"] > 0.98
    apart = assess(T(fixed / fixed.max()), T(fixed / fixed.max()), wrong)
    assert not apart["trusted"] and "moved an aligned pair apart" in apart["flags"][0]
    folding = right.clone()
    folding[:, 1, :, ::2] += 1.5  # alternate rows cross each other
    folded = assess(T(fixed / fixed.max()), T(moving / fixed.max()), folding)
    assert folded["folding_pct"] > 1.0 and any("fold" in f for f in folded["flags"])


def test_register_warns_and_records_an_untrustworthy_result():
    # a brain pair: the template at 3 mm and its copy rotated by 6 degrees
    from ddmr_plugins.datasets.mni_brain import load_template

    t1 = load_template()[0][::3, ::3, ::3]
    rotated = ndimage.rotate(t1, 6, axes=(0, 1), reshape=False, order=1)
    # a deliberately wrong registration: the shipped model's prediction replaced by a
    # field that moves the moving image away from the fixed one
    reg = Registrar("brain-mr")

    def away(f, m, left_right=None):
        d = torch.zeros(1, 3, *f.shape[2:])
        d[:, 1] = -6.0
        return d

    reg.predict = away
    with pytest.warns(RegistrationQualityWarning, match="untrustworthy"):
        res = reg.register(t1, rotated)
    assert res.metrics["trust"]["trusted"] is False
    assert any("untrustworthy" in w for w in res.summary()["warnings"])
    # the model's own field on the same pair raises no such warning
    good = Registrar("brain-mr")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RegistrationQualityWarning)
        res = good.register(t1, rotated)
    assert res.metrics["trust"]["trusted"]
    assert res.metrics["trust"]["nmi_after"] > res.metrics["trust"]["nmi_before"]


def test_structure_is_the_neighbours_correlation_along_the_best_axis():
    from ddmr_core.registration.trust import structure

    rng = np.random.default_rng(3)
    # an AR(1) texture along axis 1: neighbours along it correlate at rho exactly (in
    # expectation), along the other two axes not at all; inside a box on a dark background
    rho = 0.6
    x = rng.normal(size=(40, 60, 40))
    for i in range(1, x.shape[1]):
        x[:, i] = rho * x[:, i - 1] + np.sqrt(1 - rho ** 2) * x[:, i]
    img = np.zeros((50, 70, 50), np.float32)
    img[5:45, 5:65, 5:45] = 10 + x
    assert structure(img) == pytest.approx(rho, abs=0.02)
    assert structure(np.ascontiguousarray(img.transpose(2, 0, 1))) == pytest.approx(rho, abs=0.02)
    assert abs(structure(rng.random((40, 40, 40)).astype(np.float32))) < 0.02  # noise
    assert structure(head()) > 0.9
    mask = (head() > 0).astype(np.float32)  # no texture: its outline is its structure
    assert structure(mask) == 1.0


def test_a_moving_image_of_noise_is_not_a_trusted_registration():
    from ddmr_plugins.datasets.mni_brain import load_template

    t1 = np.ascontiguousarray(load_template()[0][::3, ::3, ::3])
    noise = np.random.default_rng(0).random(t1.shape).astype(np.float32)
    with pytest.warns(RegistrationQualityWarning, match="moving image shows no structure"):
        res = Registrar("brain-mr").register(t1, noise)
    trust = res.metrics["trust"]
    assert trust["trusted"] is False and trust["structure"]["moving image"] < 0.05
    assert trust["structure"]["fixed image"] > 0.5
    # the field raised the mutual information all the same: that sign alone would trust it
    assert trust["nmi_after"] > trust["nmi_before"]


def test_suitability_names_the_model_for_other_contrasts():
    t1 = {"modalities": ["MR"], "contrasts": ["T1"]}
    anyc = {"modalities": ["MR"], "contrasts": ["T1", "T2", "PD", "FLAIR", "inverted"]}
    ct = {"modalities": ["CT"], "contrasts": ["CT"]}
    line = suitability("brain-mr@1", t1, [("brain-mr-any", anyc), ("abdomen-ct", ct)])
    assert line == ("model brain-mr@1: trained for pairs of T1 images; for T2, PD, FLAIR, inverted scans "
                    "use --model brain-mr-any")
    assert suitability("brain-mr-any@1", anyc, [("brain-mr", t1)]) == \
        "model brain-mr-any@1: trained for pairs of T1, T2, PD, FLAIR, inverted images"
    assert suitability("x", None, []) is None
