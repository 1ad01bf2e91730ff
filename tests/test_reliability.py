"""Reliability (issue 17): output folders written whole or not at all, temporaries of
killed processes removed, SIGTERM like Ctrl-C, file modes from the umask, non-finite
results refused. Inputs come from the session's tiny workspace (``tiny_workspace.py``);
every output goes to the test's own ``tmp_path``."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from ddmr_core.cli import main
from ddmr_core.errors import DataError

ROOT = Path(__file__).resolve().parents[1]


def _register(ws, out, *extra, segs=True):
    args = ["register", "--fixed", ws["f"], "--moving", ws["m"], "--model", ws["good"], "--out", str(out)]
    if segs:
        args += ["--fixed-seg", ws["fs"], "--moving-seg", ws["ms"]]
    return main(args + list(extra))


def _files(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _host() -> str:
    from ddmr_core.data.files import _host

    return _host()


def _run_python(code: str, *args, check_rc=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    if check_rc is not None:
        assert proc.returncode == check_rc, proc.stderr
    return proc


# ------------------------------------------------------------- whole folders
def test_register_rerun_replaces_the_folder_whole(tiny_workspace, tmp_path, capsys):
    out = tmp_path / "out"
    assert _register(tiny_workspace, out) == 0
    first = json.loads((out / "results.json").read_text())
    assert "warped_seg.nii.gz" in first["files"]
    # a rerun without label maps: the earlier warped_seg.nii.gz must not survive
    assert _register(tiny_workspace, out, segs=False) == 0
    names = sorted(p.name for p in out.iterdir())
    assert "warped_seg.nii.gz" not in names
    assert names == sorted(json.loads((out / "results.json").read_text())["files"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left


def test_a_failure_while_writing_keeps_the_earlier_output(tiny_workspace, tmp_path, monkeypatch, capsys):
    import ddmr_core.registration.output as ro

    out = tmp_path / "out"
    assert _register(tiny_workspace, out) == 0
    before = _files(out)

    def half_then_interrupt(path, result, step=None):
        Path(path).write_bytes(b"half a PNG")
        raise KeyboardInterrupt  # Ctrl-C after the NIfTI and field files were written

    monkeypatch.setattr(ro, "save_overview", half_then_interrupt)
    assert _register(tiny_workspace, out, "--outputs", "all", segs=False) == 130
    assert "interrupted" in capsys.readouterr().err
    assert _files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert _register(tiny_workspace, tmp_path / "new", "--outputs", "all", segs=False) == 130  # never half-written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_foreign_folder_is_never_replaced(tiny_workspace, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    assert _register(tiny_workspace, out) == 2
    assert "did not write" in capsys.readouterr().err
    assert _files(out) == {"thesis.tex": b"years of work"}
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _register(tiny_workspace, empty) == 0  # an empty folder is fine
    assert (empty / "results.json").is_file()


def test_batch_output_is_replaced_whole(tiny_workspace, tmp_path, capsys):
    ws = Path(tiny_workspace["ws"])
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(f"pair,fixed,moving\na,{ws / 'f.nii.gz'},{ws / 'm.nii.gz'}\nb,{ws / 'm.nii.gz'},{ws / 'f.nii.gz'}\n")
    out = tmp_path / "many"
    assert main(["register", "--pairs", str(pairs), "--model", tiny_workspace["good"], "--out", str(out)]) == 0
    pairs.write_text(f"pair,fixed,moving\nc,{ws / 'f.nii.gz'},{ws / 'm.nii.gz'}\n")
    assert main(["register", "--pairs", str(pairs), "--model", tiny_workspace["good"], "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["c", "summary.csv", "summary.json"]
    # a single-pair run may replace a batch folder (both are register outputs) ...
    assert _register(tiny_workspace, out) == 0
    assert not (out / "c").exists()


def test_without_an_atomic_exchange_the_swap_still_replaces_whole(tiny_workspace, tmp_path, monkeypatch, capsys):
    import ddmr_core.data.files as io

    monkeypatch.setattr(io, "_exchange", lambda a, b: False)  # e.g. NFS, or not Linux
    out = tmp_path / "out"
    assert _register(tiny_workspace, out) == 0
    assert _register(tiny_workspace, out, segs=False) == 0
    assert not (out / "warped_seg.nii.gz").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_killed_between_the_two_renames_the_earlier_folder_comes_back(tiny_workspace, tmp_path, capsys):
    out = tmp_path / "out"
    assert _register(tiny_workspace, out) == 0
    before = _files(out)
    # a process killed right after moving the old folder aside (the fallback swap)
    code = """
        import os, signal, sys
        import ddmr_core.data.files as io
        io._exchange = lambda a, b: False
        real = os.rename
        def rename(src, dst):
            real(src, dst)
            if str(dst).endswith(".old"):
                os.kill(os.getpid(), signal.SIGKILL)
        os.rename = rename
        from ddmr_core.cli import main
        main(sys.argv[1:])
    """
    proc = _run_python(code, "register", "--fixed", tiny_workspace["f"], "--moving", tiny_workspace["m"],
                       "--model", tiny_workspace["good"], "--out", out)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not out.exists() and any(p.name.endswith(".old") for p in tmp_path.iterdir())
    # the next run in that folder, even one that fails on bad input, puts it back
    assert main(["register", "--fixed", tiny_workspace["zero"], "--moving", tiny_workspace["m"],
                 "--model", tiny_workspace["good"], "--out", str(out)]) == 2
    assert _files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# ------------------------------------------------- temporaries of killed runs
def test_temporaries_of_a_killed_register_are_removed_by_the_next_run(tiny_workspace, tmp_path, capsys):
    out = tmp_path / "out"
    code = """
        import os, signal, sys
        import ddmr_core.registration.output as ro
        real = ro.write_into
        def write_then_die(result, folder, *rest):
            real(result, folder, *rest)
            os.kill(os.getpid(), signal.SIGKILL)
        ro.write_into = write_then_die
        from ddmr_core.cli import main
        main(sys.argv[1:])
    """
    proc = _run_python(code, "register", "--fixed", tiny_workspace["f"], "--moving", tiny_workspace["m"],
                       "--model", tiny_workspace["good"], "--out", out)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    # the killed process's output lock file stays (unlocked: the kernel released it); the
    # next run takes it over and removes it (the last assertion)
    left = [p for p in tmp_path.iterdir() if p.name != ".out.ddmr-lock"]
    assert len(left) == 1 and left[0].name.startswith(".out.ddmr-") and left[0].name.endswith(".tmp")
    # a live writer's temporary folder is not touched
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        live = tmp_path / f".out.ddmr-{_host()}-{sleeper.pid}.abcd1234.tmp"
        live.mkdir()
        assert _register(tiny_workspace, out) == 0
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", live.name])
    finally:
        sleeper.kill()
        sleeper.wait()


def test_checkpoint_temporaries_of_a_killed_run_are_removed_on_the_next_save(tmp_path):
    from ddmr_core.model.checkpoint import load_checkpoint, save_checkpoint

    path = tmp_path / "run" / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.zeros(2)}, "gin_config": "a = 1"})
    code = """
        import os, signal, sys, torch
        from ddmr_core.model.checkpoint import save_checkpoint
        real = torch.save
        def half_then_die(obj, fh, *a, **k):
            fh.write(b"half a checkpoint")
            fh.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        torch.save = half_then_die
        save_checkpoint(sys.argv[1], {"model": {}, "gin_config": "b = 2"})
    """
    assert _run_python(code, path).returncode == -signal.SIGKILL
    names = sorted(p.name for p in path.parent.iterdir())
    assert len(names) == 2 and names[0].startswith(".last.pt.ddmr-")  # the killed run's temporary
    assert load_checkpoint(path)["gin_config"] == "a = 1"  # the previous checkpoint is intact
    # a temporary of another, dead process (say, before a reboot) goes too; another name stays
    stale = path.parent / f".last.pt.ddmr-{_host()}-{_dead_pid()}.zz99.tmp.pt"
    stale.write_bytes(b"x")
    other = path.parent / f".best.pt.ddmr-{_host()}-{_dead_pid()}.zz98.tmp.pt"
    other.write_bytes(b"x")
    save_checkpoint(path, {"model": {}, "gin_config": "c = 3"})  # e.g. after --resume
    assert sorted(p.name for p in path.parent.iterdir()) == [other.name, "last.pt"]
    assert load_checkpoint(path)["gin_config"] == "c = 3"


# --------------------------------------------------------------- signals
@pytest.mark.parametrize("sig,rc,word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_sigterm_is_handled_like_ctrl_c(tiny_workspace, tmp_path, sig, rc, word):
    out = tmp_path / "out"
    assert _register(tiny_workspace, out, segs=False) == 0
    before = _files(out)
    code = f"""
        import signal, sys
        # Ctrl-C as in a terminal: a background job (`make test &`) inherits SIGINT ignored
        signal.signal(signal.SIGINT, signal.default_int_handler)
        import ddmr_core.registration.output as ro
        real = ro.write_into
        def write_then_signal(result, folder, *rest):
            real(result, folder, *rest)  # everything written into the temporary folder
            # to this thread: os.kill's process-wide signal may be handed to a torch worker
            # thread and reach Python only after the output folder has been put in place
            signal.raise_signal({int(sig)})
        ro.write_into = write_then_signal
        from ddmr_core.cli import main
        sys.exit(main(sys.argv[1:]))
    """
    proc = _run_python(code, "register", "--fixed", tiny_workspace["f"], "--moving", tiny_workspace["m"],
                       "--fixed-seg", tiny_workspace["fs"], "--moving-seg", tiny_workspace["ms"],
                       "--model", tiny_workspace["good"], "--out", out)
    assert proc.returncode == rc, proc.stderr
    # the tiny untrained model's results are (rightly) flagged untrustworthy: not the point here
    lines = [x for x in proc.stderr.strip().splitlines() if "untrustworthy result" not in x]
    assert len(lines) == 1 and lines[0].startswith("ddmr: ") and word in lines[0], proc.stderr
    assert _files(out) == before  # the earlier output, not the interrupted one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_main_restores_the_previous_sigterm_handler(tiny_workspace, tmp_path, capsys):
    previous = signal.getsignal(signal.SIGTERM)
    main(["plugins", "--kind", "losses"])
    assert signal.getsignal(signal.SIGTERM) is previous


# ------------------------------------------------------------ file modes
def test_file_modes_follow_the_umask(tiny_workspace, tmp_path, capsys):
    from ddmr_core.model.checkpoint import save_checkpoint
    from ddmr_core.data.testset import finish_testset, write_pair

    old = os.umask(0o027)
    try:
        assert _register(tiny_workspace, tmp_path / "reg", "--outputs", "all") == 0
        save_checkpoint(tmp_path / "run" / "best.pt", {"model": {}, "gin_config": ""})
        row = write_pair(tmp_path / "ts", "p", np.ones((4, 4, 4)), np.ones((4, 4, 4)),
                         np.zeros((3, 4, 4, 4)), np.eye(4))
        finish_testset(tmp_path / "ts", [row], {"dataset": "x", "size": [4] * 3, "seed": 0, "pairs": 1, "labels": []})
    finally:
        os.umask(old)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    folders = [p for p in tmp_path.rglob("*") if p.is_dir()]
    assert {p.name for p in files} >= {"best.pt", "disp_true.nii.gz", "disp_true.npz", "field.nii.gz", "field.npz",
                                       "results.json", "overview.png", "manifest.csv"}
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {oct(0o640)}, \
        {p.name: oct(p.stat().st_mode & 0o777) for p in files}
    assert {oct(p.stat().st_mode & 0o777) for p in folders} == {oct(0o750)}


# --------------------------------------------------------- non-finite results
def test_register_refuses_a_non_finite_field(tiny_workspace, tmp_path):
    from ddmr_core.registration.register import Registrar

    reg = Registrar(tiny_workspace["good"])
    reg.model.backbone.forward = lambda fixed, moving: torch.full((1, 3) + tuple(fixed.shape[2:]), float("nan"))
    with pytest.raises(DataError, match=r"good\.pt.*non-finite.*field"):
        reg.register(tiny_workspace["f"], tiny_workspace["m"])
    reg.model.backbone.forward = lambda fixed, moving: torch.full((1, 3) + tuple(fixed.shape[2:]), 1e8)
    with pytest.raises(DataError, match="not a registration"):
        reg.register(tiny_workspace["f"], tiny_workspace["m"])


def test_evaluate_records_non_finite_models_as_failures(tiny_workspace, tmp_path, capsys):
    out = tmp_path / "report"
    rc = main(["evaluate", "--testset", tiny_workspace["testset"], "--model", f"Broken={tiny_workspace['nan_weights']}",
               "--model", f"Blown={tiny_workspace['huge_weights']}", "--model", f"Good={tiny_workspace['good']}",
               "--baseline", "identity", "--metric", "dsc", "--metric", "ncc", "--out", str(out), "--no-figures"])
    assert rc == 1  # the report is complete; the status says that some runs failed
    with open(out / "per_pair.csv", newline="") as fh:
        rows = {r["method"]: r for r in csv.DictReader(fh)}
    assert "non-finite weights" in rows["Broken"]["error"] and rows["Broken"]["dsc"] == ""
    assert "not a registration" in rows["Blown"]["error"] and rows["Blown"]["dsc"] == ""
    for name in ("Good", "identity"):
        assert rows[name]["error"] == "" and np.isfinite(float(rows[name]["dsc"]))
    for row in rows.values():  # every value written is a finite number
        for column, value in row.items():
            if column not in ("method", "kind", "pair", "error") and value != "":
                assert np.isfinite(float(value)), (row["method"], column, value)
    table = [line for line in (out / "summary.md").read_text().splitlines() if line.startswith("|")]
    assert table and not re.search(r"\b(nan|inf)\b", "\n".join(table), re.IGNORECASE)


def test_evaluate_rerun_replaces_the_report_whole(tiny_workspace, tmp_path, capsys):
    out = tmp_path / "report"
    base = ["evaluate", "--testset", tiny_workspace["testset"], "--baseline", "identity", "--metric", "dsc",
            "--out", str(out)]
    assert main(base) == 0
    assert (out / "boxplots.png").exists() and (out / "median_pair_identity.png").exists()
    assert main(base + ["--no-figures"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["per_pair.csv", "summary.md"]


def test_evaluate_records_a_constant_test_image(tiny_workspace, tmp_path, capsys):
    from ddmr_core.data.testset import finish_testset, write_pair

    grid = (8, 8, 8)
    row = write_pair(tmp_path / "ts", "flat", np.linspace(0, 1, 512).reshape(grid), np.zeros(grid),
                     np.zeros((3,) + grid), np.eye(4))
    finish_testset(tmp_path / "ts", [row], {"dataset": "x", "size": list(grid), "seed": 0, "pairs": 1, "labels": []})
    assert main(["evaluate", "--testset", str(tmp_path / "ts"), "--baseline", "identity", "--metric", "ncc",
                 "--out", str(tmp_path / "report"), "--no-figures"]) == 1
    with open(tmp_path / "report" / "per_pair.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert "moving.nii.gz" in row["error"] and "constant" in row["error"] and row["ncc"] == ""


# ------------------------------------------------------------ build-testset
def test_build_testset_is_written_whole_or_not_at_all(tmp_path, monkeypatch, capsys):
    import ddmr_core.data.testset as testset

    out = tmp_path / "ts"
    args = ["build-testset", "--dataset", "synthetic", "--size", "16", "--seed", "0", "--out", str(out),
            "--augment", "mixins/augment/none.gin"]
    assert main(args + ["--pairs", "3"]) == 0
    before = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    real, calls = testset.write_pair, []

    def second_pair_interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(testset, "write_pair", second_pair_interrupted)
    assert main(args + ["--pairs", "2", "--overwrite"]) == 130
    assert {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ts"]
    monkeypatch.setattr(testset, "write_pair", real)
    assert main(args + ["--pairs", "2", "--overwrite"]) == 0  # pair_0002 of the old set must go
    assert sorted(p.name for p in out.iterdir()) == ["manifest.csv", "pair_0000", "pair_0001", "testset.json"]
    assert sorted(p.name for p in out.glob("pair_0000/*")) == sorted(
        ["disp_true.nii.gz", "disp_true.npz", "fixed.nii.gz", "fixed_seg.nii.gz", "moving.nii.gz",
         "moving_seg.nii.gz"])

