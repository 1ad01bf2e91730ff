"""ddmr_core.devices: the one --device policy of every command."""

import pytest
import torch

from ddmr_core.devices import default_device, resolve_device
from ddmr_core.errors import DdmrError


def test_names_and_default():
    assert resolve_device(None) == default_device() == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu") == resolve_device(torch.device("cpu"))


@pytest.mark.parametrize("name, words", [("nonsense", "not a device name"), ("cuda:x", "not a device name"),
                                         ("meta", "runs on cpu, cuda, mps")])
def test_refused_names(name, words):
    with pytest.raises(DdmrError, match=f"--device '{name}'.*{words}"):
        resolve_device(name)


def test_cuda_is_checked_against_the_machine():
    if not torch.cuda.is_available():
        for name in ("cuda", "cuda:0"):
            with pytest.raises(DdmrError, match="no CUDA device"):
                resolve_device(name)
        return
    n = torch.cuda.device_count()
    assert resolve_device("cuda") == torch.device("cuda")  # the index is kept as given
    assert resolve_device(f"cuda:{n - 1}") == torch.device("cuda", n - 1)
    with pytest.raises(DdmrError, match=f"has {n} CUDA device"):
        resolve_device(f"cuda:{n}")


@pytest.mark.skipif(getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
                    reason="checks the message where MPS is absent")
def test_mps_where_absent():
    with pytest.raises(DdmrError, match="MPS is not available"):
        resolve_device("mps", option="device")


def test_every_entry_point_uses_the_policy(tmp_path):
    """Trainer, Registrar and evaluate refuse the same name with the same words."""
    from ddmr_core.evaluation.evaluate import evaluate
    from ddmr_core.registration.register import Registrar
    from ddmr_core.training.trainer import Trainer

    for call in (lambda: Trainer(tmp_path / "run", device="meta"),
                 lambda: Registrar(tmp_path / "none.pt", device="meta"),
                 lambda: evaluate(tmp_path / "ts", baselines=["identity"], out=tmp_path / "out", device="meta")):
        with pytest.raises(DdmrError, match="--device 'meta'.*runs on cpu, cuda, mps"):
            call()
