"""Resumable protocols (``ddmr demo``, ``ddmr reproduce``): failures name the step, reruns resume."""

import pytest

from ddmr_core.errors import DdmrError
from ddmr_core.experiments.protocol import Step, StepFailed, run_protocol


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


def test_a_larger_budget_continues_a_finished_step_and_redoes_what_follows(tmp_path):
    calls = []

    def steps(budget):
        return [Step("prepare", lambda: calls.append("prepare")),
                Step("train", lambda: calls.append(f"train {budget}"), key=budget),
                Step("evaluate", lambda: calls.append("evaluate"))]

    run_protocol(tmp_path, steps("45 min"))
    calls.clear()
    run_protocol(tmp_path, steps("45 min"))
    assert calls == []                                    # the same request: all done
    run_protocol(tmp_path, steps("60 min"))
    assert calls == ["train 60 min", "evaluate"]          # a new budget: training continues, evaluation redone
    calls.clear()
    run_protocol(tmp_path, steps("60 min"))
    assert calls == []


def test_the_train_step_is_keyed_by_its_budget():
    from ddmr_core.experiments.protocol import train_step

    assert train_step("UW-NSD", "c.gin", "r", None, [], "cpu", max_time=2700.0).key == "45 min"
    assert train_step("UW-NSD", "c.gin", "r", 300, [], "cpu").key == "300 optimiser steps"


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


def _record_library_calls(monkeypatch, failures=0):
    """The steps call library functions: record their arguments instead of running them;
    the command line must never be entered."""
    import types

    import ddmr_core.data.build_testset
    import ddmr_core.cli
    import ddmr_core.evaluation.evaluate
    import ddmr_core.data.prepare
    import ddmr_core.training.trainer

    calls = {}

    def record(name, result=None):
        return lambda *a, **kw: calls.setdefault(name, []).append((a, kw)) or result

    monkeypatch.setattr(ddmr_core.cli, "main", lambda *a: pytest.fail("a protocol step entered the CLI"))
    monkeypatch.setattr(ddmr_core.data.prepare, "prepare_named", record("prepare"))
    monkeypatch.setattr(ddmr_core.training.trainer, "train", record("train"))
    monkeypatch.setattr(ddmr_core.data.build_testset, "build_testset_named", record("testset"))
    monkeypatch.setattr(ddmr_core.evaluation.evaluate, "evaluate", record("evaluate", types.SimpleNamespace(failures=failures)))
    return calls


@pytest.mark.parametrize("hybrid", [False, True])
def test_reproduce_hybrid_trains_with_the_mixin_and_scores_without_refinement(tmp_path, monkeypatch, hybrid):
    from ddmr_core.experiments.paper import Reproduction

    calls = _record_library_calls(monkeypatch)
    spec = Reproduction(experiment="brain", out=str(tmp_path), size=32, steps=3, pairs=2,
                        designs=["BL-N"], light=True, hybrid=hybrid, device=None)
    for step in spec.plan():
        step.run()
    ((name, cache), kw), = calls["prepare"]
    assert name == "mni_brain" and kw == {"size": 32} and cache == tmp_path / "data" / "mni_brain_32"
    ((config, bindings), kw), = calls["train"]
    assert config == "experiments/brain/bl_n.gin" and kw["max_steps"] == 3 and kw["max_time"] is None
    ((dataset, pairs, size, seed, out), kw), = calls["testset"]
    assert (dataset, pairs, size, seed, kw) == ("mni_brain", 2, 32, 2023, {"overwrite": True})
    ((testset,), kw), = calls["evaluate"]
    assert testset == out and kw["models"] == [f"BL-N={tmp_path / 'brain' / 'runs' / 'BL-N' / 'last.pt'}"]
    assert ("include 'mixins/model/hybrid.gin'" in bindings) == hybrid
    assert kw["unrefined"] == hybrid


def test_reproduce_trains_one_run_per_seed_and_finetunes_each_from_its_own_seed(tmp_path, monkeypatch):
    from ddmr_core.experiments.paper import Reproduction

    calls = _record_library_calls(monkeypatch)
    for experiment in ("brain", "finetune_full"):
        spec = Reproduction(experiment=experiment, out=str(tmp_path), size=32, steps=3, pairs=2,
                            designs=["SG-NSD"], seeds=[0, 1], light=True, hybrid=False, device=None)
        steps = spec.plan()
        for step in steps:
            step.run()
            if step.name.startswith("train-"):  # the finetuning checks the brain runs exist
                name = step.name[len("train-"):]
                (tmp_path / "brain" / "runs" / ("SG-NSD" if name == "SG-NSD" else "SG-NSD-seed1")).mkdir(
                    parents=True, exist_ok=True)
    brain, finetune = calls["train"][:2], calls["train"][2:]
    assert [kw["run_dir"] for _, kw in brain] == [tmp_path / "brain" / "runs" / "SG-NSD",
                                                  tmp_path / "brain" / "runs" / "SG-NSD-seed1"]
    assert not any("seed" in b for b in brain[0][0][1]) and "ddmr.Trainer.seed = 1" in brain[1][0][1]
    sources = [[b for b in bindings if b.startswith("ddmr.finetune.checkpoint")] for (_, bindings), _ in finetune]
    assert [s[0].split("/")[-2] for s in sources] == ["SG-NSD", "SG-NSD-seed1"]
    names = [m.split("=", 1)[0] for m in calls["evaluate"][0][1]["models"]]
    assert names == ["SG-NSD", "SG-NSD (seed 1)"]


def test_reproduce_two_step_scores_the_networks_beside_ants_in_one_run(tmp_path, monkeypatch):
    """Table 5: the finetuned networks and ANTs on the same pairs, runtimes from one evaluation."""
    from ddmr_core.experiments.paper import Reproduction

    calls = _record_library_calls(monkeypatch)
    (tmp_path / "brain" / "runs" / "UW-NSD").mkdir(parents=True)
    spec = Reproduction(experiment="finetune_two_step", out=str(tmp_path), size=32, steps=3, pairs=2,
                        designs=["UW-NSD"], seeds=[0], light=True, hybrid=False, device=None)
    steps = spec.plan()
    for step in steps:
        step.run()
    ((_,), kw), = calls["evaluate"]
    assert [m.split("=", 1)[0] for m in kw["models"]] == ["UW-NSD"]
    assert kw["baselines"] == ["ants_syn", "ants_syncc"]
    # the evaluation is keyed by its methods: another set of designs scores them again
    spec.designs = ["UW-NSD", "SG-NSD"]
    (tmp_path / "brain" / "runs" / "SG-NSD").mkdir(parents=True)
    assert steps[-1].key != spec.plan()[-1].key


def test_reproduce_trains_design_by_design_then_scores_them_all_in_one_evaluation(tmp_path, monkeypatch):
    """``--train-only`` stops before the test set; the same command without it skips the
    trained runs (their markers) and scores every design beside ANTs in one evaluation."""
    from ddmr_core.experiments.paper import Reproduction

    calls = _record_library_calls(monkeypatch)
    for design in ("BL-N", "SG-NSD"):
        (tmp_path / "brain" / "runs" / design).mkdir(parents=True)
    exp = tmp_path / "finetune_two_step"

    def spec(designs, train_only):
        return Reproduction(experiment="finetune_two_step", out=str(tmp_path), size=32, steps=3, pairs=2,
                            designs=designs, seeds=[0], light=True, hybrid=False, device=None,
                            train_only=train_only)

    for design in ("BL-N", "SG-NSD"):
        run_protocol(exp, spec([design], True).plan())
    assert [kw["run_dir"].name for _, kw in calls["train"]] == ["BL-N", "SG-NSD"]
    assert "testset" not in calls and "evaluate" not in calls
    run_protocol(exp, spec(["BL-N", "SG-NSD"], False).plan())
    assert len(calls["train"]) == 2  # nothing trained again
    ((_,), kw), = calls["evaluate"]
    assert [m.split("=", 1)[0] for m in kw["models"]] == ["BL-N", "SG-NSD"]
    assert kw["baselines"] == ["ants_syn", "ants_syncc"]


def test_reproduce_train_only_refuses_the_experiment_without_training(tmp_path):
    from conftest import run_cli

    out = run_cli("reproduce", "baselines", "--train-only", "--out", str(tmp_path / "p"), "--size", "32")
    assert out.returncode != 0 and out.stderr.count("ddmr: error:") == 1 and "trains nothing" in out.stderr
    assert not (tmp_path / "p").exists()


def test_reproduce_refuses_a_negative_seed_before_any_work(tmp_path):
    from conftest import run_cli

    out = run_cli("reproduce", "brain", "--seeds", "0", "-1", "--out", str(tmp_path / "p"), "--size", "32",
                  "--light", "--steps", "1", "--designs", "BL-N")
    assert out.returncode != 0 and out.stderr.count("ddmr: error:") == 1 and "--seeds" in out.stderr
    assert not (tmp_path / "p").exists()


def test_failed_evaluation_runs_fail_the_step(tmp_path, monkeypatch):
    from ddmr_core.experiments.protocol import evaluate_step

    _record_library_calls(monkeypatch, failures=2)
    with pytest.raises(StepFailed, match="step 'evaluate' failed: 2 method/pair run.*per_pair.csv"):
        run_protocol(tmp_path, [evaluate_step(tmp_path / "ts", {}, ["identity"], tmp_path / "report")])


def test_cli_run_runs_the_command_line_in_process(tmp_path, capsys):
    from ddmr_core.cli import run

    run("plugins", "--kind", "metrics")
    assert "dsc" in capsys.readouterr().out
    with pytest.raises(DdmrError, match="`ddmr register --fixed f.nii.gz --model m.pt --out .*` exited with status 2"):
        run("register", "--fixed", "f.nii.gz", "--model", "m.pt", "--out", tmp_path / "out")
    assert "--moving" in capsys.readouterr().err


def test_demo_trains_its_designs_with_the_recipe_in_time_and_scores_the_shipped_model(tmp_path, monkeypatch):
    import argparse

    from ddmr_core.commands import demo
    from ddmr_core.experiments.demo import Demo
    from ddmr_core.plugins.registry import Registry

    calls = _record_library_calls(monkeypatch)
    spec = Demo(out=str(tmp_path), size=32, max_time=90.0, steps=None, pairs=2,
                baselines=["identity"], device=None, designs=["BL-N", "UW-NSD"])
    for step in spec.plan():
        step.run()
    trained = {config: (bindings, kw) for (config, bindings), kw in calls["train"]}
    assert set(trained) == {"experiments/brain/bl_n.gin", "experiments/brain/uw_nsd.gin"}
    for bindings, kw in trained.values():
        # the recipe comes after the design's own config, then its schedule over the budget,
        # and the budget is time, not steps
        assert bindings[-2:] == ["include 'mixins/recipe/learnt.gin'", "include 'mixins/recipe/budget.gin'"]
        assert kw["max_time"] == 90.0 and kw["max_steps"] is None
    ((_,), kw), = calls["evaluate"]
    names = [m.split("=", 1)[0] for m in kw["models"]]
    assert names[:2] == ["BL-N", "UW-NSD"] and kw["baselines"] == ["identity"] and not kw["unrefined"]
    # without --designs: UW-NSD alone, 12 minutes (the demo's 15 minutes in all); the hour-long run on request
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    defaults = parser.parse_args([])
    assert defaults.designs == ["UW-NSD"] and defaults.max_time == 720.0
    assert parser.parse_args(["--max-time", "60m"]).max_time == 3600.0
    # the shipped brain model is scored beside them when it is installed
    assert ("brain-mr (pretrained)" in names) == ("brain-mr" in Registry(bind_gin=False).names("models"))


def test_the_design_catalogue_is_the_designs_folder_and_every_experiment_has_each_design():
    from ddmr_core.config.parsing import config_root
    from ddmr_core.experiments.catalogue import EXPERIMENTS, design_config, design_files

    designs = design_files()
    assert list(designs) == ["BL-N", "BL-NS", "SG-ND", "SG-NSD", "UW-NSD", "UW-NSDH"]
    assert sorted(p.stem for p in (config_root() / "designs").glob("*.gin")) == list(designs.values())
    for experiment in EXPERIMENTS.values():
        for design in designs if experiment.folder else ():
            assert (config_root() / design_config(experiment.folder, design)).is_file()


def test_an_unknown_design_is_refused_before_any_work(tmp_path):
    from ddmr_core.experiments.paper import Reproduction

    with pytest.raises(DdmrError, match="unknown design.*XX-N.*BL-N"):
        Reproduction("brain", out=tmp_path / "p", designs=["XX-N"]).plan()
    assert not (tmp_path / "p").exists()


def test_demo_trains_on_the_cores_that_are_free(monkeypatch):
    """A core is taken when both the load average and the cores in use now say so: the
    load an install has just left in the average does not count once the CPU is idle."""
    from ddmr_core.experiments import demo

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(demo.os, "cpu_count", lambda: 2)
    for load, now, threads in ((0.2, 0.1, 2), (1.0, 1.0, 1), (3.7, 2.0, 1), (1.2, 0.05, 2), (0.1, 1.9, 2),
                               (1.0, None, 1), (0.2, None, 2)):
        monkeypatch.setattr(demo.os, "getloadavg", lambda load=load: (load, load, load))
        monkeypatch.setattr(demo, "busy_cores", lambda now=now: now)
        assert demo.free_cores() == threads, (load, now)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert demo.free_cores() is None  # the user's choice is left alone


def test_busy_cores_sees_a_process_that_keeps_a_core_busy():
    """busy_cores against a known load: a child process spinning on one core for the
    whole window shows as about one core more than the idle measure around it."""
    import subprocess
    import sys
    import time

    from ddmr_core.experiments import demo

    if demo.busy_cores(0.2) is None:
        pytest.skip("no /proc/stat on this system")
    spin = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 5: pass"])
    try:
        time.sleep(0.5)  # the interpreter started and spinning
        busy = demo.busy_cores(1.0)
    finally:
        spin.kill()
        spin.wait()
    assert busy >= 0.7, busy  # its core (other processes may add, never take away)
