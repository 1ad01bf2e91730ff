"""Resumable protocols (``ddmr demo``, ``ddmr reproduce``): failures name the step, reruns resume."""

import pytest

from ddmr_core.errors import DdmrError
from ddmr_core.protocol import Step, StepFailed, run_protocol


def test_failure_names_the_step_and_rerun_resumes(tmp_path):
    calls = []
    fail = {"train": True}

    def make(name):
        def run():
            calls.append(name)
            if fail.get(name):
                raise OSError(28, "No space left on device")
            (tmp_path / f"{name}.txt").write_text(name)
        return run

    steps = [Step(n, make(n)) for n in ("prepare", "train", "evaluate")]
    with pytest.raises(StepFailed) as err:
        run_protocol(tmp_path, steps, title="demo")
    assert "demo step 'train' failed" in str(err.value) and "No space left" in str(err.value)
    assert calls == ["prepare", "train"]
    assert (tmp_path / "prepare.txt").exists()          # what finished is kept

    fail["train"] = False
    calls.clear()
    run_protocol(tmp_path, steps, title="demo")
    assert calls == ["train", "evaluate"]                # prepare is not redone
    run_protocol(tmp_path, steps, title="demo")
    assert calls == ["train", "evaluate"]                # nothing left to do


def test_user_errors_in_a_step_are_reported_as_such(tmp_path):
    def bad():
        raise DdmrError("checkpoint 'x.pt' not found")

    with pytest.raises(StepFailed, match="step 'evaluate' failed: checkpoint 'x.pt' not found"):
        run_protocol(tmp_path, [Step("evaluate", bad)])


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StepFailed, match="cannot create output folder"):
        run_protocol(blocker / "out", [Step("x", lambda: None)])


def test_demo_rejects_bad_sizes(tmp_path):
    from conftest import run_cli

    out = run_cli("demo", "--out", str(tmp_path / "d"), "--size", "50")
    assert out.returncode == 2 and "multiple of 16" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("hybrid", [False, True])
def test_reproduce_hybrid_trains_with_the_mixin_and_scores_without_refinement(tmp_path, monkeypatch, hybrid):
    # the steps call `ddmr ...` sub-commands: record their arguments instead of running them
    import argparse

    from ddmr_core import protocol
    from ddmr_core.commands import reproduce

    import ddmr_core.trainer

    calls = []
    monkeypatch.setattr(protocol, "cli", lambda *argv: calls.append([str(a) for a in argv]))
    trained = []
    monkeypatch.setattr(ddmr_core.trainer, "train",
                        lambda config, bindings, **kw: trained.append((config, list(bindings), kw)))
    args = argparse.Namespace(experiment="brain", out=str(tmp_path), size=32, steps=3, pairs=2,
                              designs=["BL-N"], light=True, hybrid=hybrid, device=None)
    for step in reproduce.build_steps(args):
        step.run()
    (config, bindings, kw), = trained
    assert config == "experiments/brain/bl_n.gin" and kw["max_steps"] == 3 and kw["max_time"] is None
    evaluate = next(c for c in calls if c[0] == "evaluate")
    assert ("include 'mixins/model/hybrid.gin'" in bindings) == hybrid
    assert ("--unrefined" in evaluate) == hybrid
