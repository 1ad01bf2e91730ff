"""CI checks of the models that ship with ddmr (issue 15).

For every model the built-in plugin registers (``ddmr_plugins.models``: one per name of
``plugins/models/weights/<name>@<version>.pt``, its newest release), the test

* resolves the name and loads the checkpoint through ddmr's loader
  (``torch.load(weights_only=True)``, config bindings only), and checks its size (<= 2 MB);
* builds one fixed small pair with ``ddmr build-testset`` (:data:`PAIRS`: dataset, grid,
  seed), registers it with ``Registrar(name)`` on the NIfTI files *without* label maps (as a
  user runs ``ddmr register``), output on the pair's grid; a CT model (its preprocessing
  windows Hounsfield units) gets the pair back in HU (the window's inverse);
* scores Dice of the moving label map warped with the exported field (as
  ``ddmr warp --labels``), and asserts it beats the identity and the affine start
  (:func:`ddmr_core.spatial.prealign.prealign_field` ``"affine"``, ddmr's own initialisation) by
  the margin :data:`MARGINS` records for the model, with the source of that figure.

No model ships until its weights are added, so today the test is skipped. To fill
:data:`MARGINS` for a new model, measure its pair once::

    python tests/test_shipped_models.py brain-mr      # prints Dice identity / affine / model

and record a margin below the measured ``model - max(identity, affine)`` (Dice is
deterministic on the CPU up to float rounding), with where the figure came from.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

#: ``{name: (margin, "source of the figure")}``: the model's Dice on its CI pair must exceed
#: both the identity's and the affine start's by ``margin``. Filled when a model ships.
MARGINS: dict[str, tuple[float, str]] = {
    # measured 2026-11-28 on the 2-core CI machine: identity 0.267, affine start 0.664,
    # brain-mr 0.819 (+0.154); `python tests/test_shipped_models.py brain-mr`
    "brain-mr": (0.10, "python tests/test_shipped_models.py brain-mr: +0.154 over the affine start"),
    # measured 2026-11-28: identity 0.358, affine start 0.744, abdomen-ct 0.848 (+0.103),
    # the pair in HU, no label maps: `python tests/test_shipped_models.py abdomen-ct`
    # measured 2026-12-05: identity 0.267, affine start 0.682, brain-mr-any 0.792 (+0.110),
    # its T1 case: `python tests/test_shipped_models.py brain-mr-any`
    "brain-mr-any": (0.07, "python tests/test_shipped_models.py brain-mr-any: +0.110 over the affine start"),
    "abdomen-ct": (0.06, "python tests/test_shipped_models.py abdomen-ct: +0.103 over the affine start"),
}

#: ``{name: (dataset, grid edge, seed, gin bindings)}``: the pair ``ddmr build-testset --dataset D
#: --pairs 1 --size S --seed K [--gin B]...`` writes (the test split's first subject through the
#: paper's augmentation), as a user would hold it: the whole image, no crop around labels.
PAIRS: dict[str, tuple[str, int, int, tuple[str, ...]]] = {
    "brain-mr": ("mni_brain", 64, 2024, ()),  # skull-stripped: the label crop is the foreground
    "brain-mr-any": ("mni_brain", 64, 2024, ()),  # its T1 case; other contrasts: benchmarks/contrast.py
    # the whole field of view, as a CT scan comes (the dataset's default crops around the liver)
    "abdomen-ct": ("abdomen_phantom", 64, 2024,
                   ("ddmr.datasets.abdomen_phantom.preprocess = {'crop_labels': None, 'window': (-150.0, 250.0)}",)),
}

#: the most a shipped checkpoint may weigh (issue 15)
MAX_BYTES = 2 * 1024 * 1024


def builtin_models() -> list[str]:
    """Names of the models the built-in plugin registers (distribution ``ddmr``)."""
    from ddmr_core.plugins.registry import Registry

    return [e.name for e in Registry(bind_gin=False).entries("models") if e.distribution == "ddmr"]


def measure(name: str, work: Path, pair=None) -> dict:
    """Dice of the identity, the affine start and the model ``name`` on its CI pair."""
    from ddmr_core.model.checkpoint import load_checkpoint, resolve_model
    from ddmr_core.cli import main
    from ddmr_core.data.io import load_image, load_label_map
    from ddmr_core.spatial.prealign import prealign_field
    from ddmr_core.registration.register import Registrar, dice_tre
    from ddmr_core.spatial.fields import warp
    from ddmr_core.spatial.regrid import apply_field

    path = resolve_model(name)
    size = Path(path).stat().st_size
    ckpt = load_checkpoint(path)  # torch.load(weights_only=True)
    dataset, edge, seed, bindings = pair or PAIRS[name]
    testset = Path(work) / f"pair_{dataset}_{edge}_{seed}"
    if not (testset / "testset.json").exists():
        gin = [a for b in bindings for a in ("--gin", b)]
        assert main(["build-testset", "--dataset", dataset, "--pairs", "1", "--size", str(edge), "--seed",
                     str(seed), "--out", str(testset), *gin]) == 0
    files = {k: testset / "pair_0000" / f"{k}.nii.gz" for k in ("fixed", "moving", "fixed_seg", "moving_seg")}
    fixed, affine = load_image(files["fixed"])
    moving, _ = load_image(files["moving"])
    fixed_seg, _ = load_label_map(files["fixed_seg"])
    moving_seg, _ = load_label_map(files["moving_seg"])
    labels = tuple(int(v) for v in (ckpt.get("labels") or np.unique(fixed_seg)[1:]))

    def dice(warped_seg):
        return dice_tre(fixed_seg, warped_seg, affine, labels)["dice_mean"]

    images = [files["fixed"], files["moving"]]
    window = (ckpt.get("preprocess") or {}).get("window")
    if window:  # a CT model windows Hounsfield units: give it the scan in HU, as a user would
        lo, hi = window
        import nibabel as nib

        images = []
        for k, img in (("fixed", fixed), ("moving", moving)):
            images.append(Path(work) / f"{k}_hu.nii.gz")
            nib.save(nib.Nifti1Image((lo + img * (hi - lo)).astype(np.float32), affine), str(images[-1]))
    res = Registrar(name).register(*images, original_resolution=True)
    f = torch.from_numpy(fixed)[None, None]
    m = torch.from_numpy(moving)[None, None]
    field, _ = prealign_field("affine", f, m)
    affine_seg = warp(torch.from_numpy(moving_seg)[None, None], field, mode="nearest")[0, 0].numpy()
    return {"bytes": size, "crop": res.inputs["crop"], "identity": dice(moving_seg), "affine": dice(affine_seg),
            "model": dice(apply_field(res.disp, res.affine, moving_seg, affine, labels=True))}


_NAMES = builtin_models()


@pytest.mark.parametrize("name", _NAMES or [pytest.param(None, marks=pytest.mark.skip(
    reason="no built-in model is installed yet: ddmr registers one per plugins/models/weights/<name>.pt "
           "(issue 15; the weights are trained separately)"))])
def test_shipped_model(name, tmp_path):
    if name not in MARGINS:
        pytest.fail(f"tests/test_shipped_models.py: MARGINS has no entry for the shipped model {name!r}; measure it "
                    f"(python tests/test_shipped_models.py {name}) and record a margin with its source")
    if name not in PAIRS:
        pytest.fail(f"tests/test_shipped_models.py: PAIRS has no CI pair for the shipped model {name!r}")
    margin, source = MARGINS[name]
    got = measure(name, tmp_path)
    assert got["bytes"] <= MAX_BYTES, f"{name}: {got['bytes']} bytes, more than 2 MB"
    why = (f"{name}: Dice identity {got['identity']:.3f}, affine start {got['affine']:.3f}, model {got['model']:.3f}; "
           f"margin {margin} ({source})")
    assert got["model"] >= got["identity"] + margin, why
    assert got["model"] >= got["affine"] + margin, why


def test_the_scaffolding_runs_on_a_tiny_model(tiny_workspace, tmp_path, monkeypatch):
    """While no model ships, the check itself must keep working: a tiny random-weight
    model dropped into the built-in weights folder goes through :func:`measure`."""
    import shutil

    import ddmr_plugins.models as builtin
    from ddmr_core.model.publish import record_sha256

    monkeypatch.setattr(builtin, "WEIGHTS", tmp_path / "weights")
    (tmp_path / "weights").mkdir()
    shutil.copy(tiny_workspace["good"], tmp_path / "weights" / "brain-mr@1.pt")
    record_sha256(tmp_path / "weights" / "brain-mr@1.pt")  # a release is checked against its sha256
    assert builtin_models() == ["brain-mr"]
    got = measure("brain-mr", tmp_path, pair=("mni_brain", 16, 2024, ()))
    assert got["bytes"] <= MAX_BYTES and got["crop"] == "none"
    assert all(0.0 <= got[k] <= 1.0 for k in ("identity", "affine", "model"))
    assert got["affine"] > got["identity"]  # the affine start does align the pair


if __name__ == "__main__":  # measure the shipped models' CI pairs (to fill MARGINS)
    import tempfile

    for model in sys.argv[1:] or builtin_models():
        with tempfile.TemporaryDirectory() as tmp:
            r = measure(model, Path(tmp))
        print(f"{model}: {r['bytes'] / 1e6:.2f} MB; Dice identity {r['identity']:.4f}, affine start "
              f"{r['affine']:.4f}, model {r['model']:.4f} (crop {r['crop']}); "
              f"model - max(identity, affine) = {r['model'] - max(r['identity'], r['affine']):+.4f}")
