"""mni_brain: nilearn's packaged MNI ICBM152 2009a template, read with no network."""

import numpy as np
import pytest

from ddmr_plugins.datasets import mni_brain


@pytest.fixture(scope="module")
def template():
    return mni_brain.load_template()


def test_files_come_from_the_installed_nilearn_package():
    from pathlib import Path

    import nilearn

    files = mni_brain.template_files()
    assert set(files) == {"t1", "gm", "wm"}
    for f in files.values():
        assert Path(nilearn.__file__).parent in f.parents
        assert f.name.endswith("_tal_nlin_sym_09a_converted.nii.gz")


def test_labels_follow_the_tissue_maps(template):
    t1, labels, affine = template
    assert t1.shape == labels.shape == (197, 233, 189)
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), 1.0)  # 1 mm template
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    assert (labels[t1 == 0] == 0).all()  # outside the (skull-stripped) brain
    # T1 contrast, an independent check of the GM/WM assignment: WM > GM > CSF
    med = {v: np.median(t1[labels == v]) for v in (1, 2, 3)}
    assert med[3] > med[2] > med[1]
    # every brain voxel is labelled
    assert (labels[t1 > 0] > 0).all()


def test_copies_differ_only_in_their_index():
    ds = mni_brain.MniBrainDataset(subjects=(3, 1, 1), size=(16, 16, 16))
    assert ds.labels == (1, 2, 3)
    a, b = ds.split("train")[0], ds.split("train")[1]
    assert a["index"] != b["index"]
    assert np.array_equal(a["image"].numpy(), b["image"].numpy())
    assert a["image"].shape == (1, 16, 16, 16) and a["seg"].shape == (1, 16, 16, 16)
    assert float(a["image"].max()) == pytest.approx(1.0) and float(a["image"].min()) == 0.0
    assert ds.preprocess["crop_labels"] == "all"
    # the crop keeps the brain: its 150-190 mm box resized to 16 voxels gives 9-12 mm voxels
    assert 8 < float(a["spacing"].max()) < 12
