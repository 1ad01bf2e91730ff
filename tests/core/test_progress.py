"""Progress of the long steps: one bar on stderr (rate and ETA) on a terminal, nothing per
file or pair otherwise, and off with ``--no-progress`` or ``DDMR_PROGRESS=0``."""

import io

import pytest

from ddmr_core import progress
from ddmr_core.cli import main

PHANTOM = ["--gin", "ddmr.datasets.abdomen_phantom.patients = 4",
           "--gin", "ddmr.datasets.abdomen_phantom.splits = (2, 1, 1)",
           "--gin", "ddmr.datasets.abdomen_phantom.spacing = (6.0, 6.0, 6.0)"]


AUG = "ddmr.build_augmentation.steps = [@ddmr.augmenters.rigid()]\nddmr.augmenters.rigid.max_translation = 2.0\n"


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_bars_are_drawn_on_a_terminal_only(monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert not progress.enabled()
    assert progress.enabled(True) and not progress.enabled(False)
    term = _Terminal()
    monkeypatch.setattr("sys.stderr", term)
    assert progress.enabled()
    monkeypatch.setenv(progress.ENV, "0")
    assert not progress.enabled() and progress.enabled(True)


def test_a_bar_shows_the_count_rate_and_eta(monkeypatch):
    term = _Terminal()
    monkeypatch.setattr("sys.stderr", term)
    monkeypatch.delenv(progress.ENV, raising=False)
    bar = progress.bar(4, "evaluate", "run")
    for _ in range(4):
        bar.update(1)
    bar.close()
    text = term.getvalue()
    assert "evaluate" in text and "4/4" in text and "run/s" in text and "<" in text  # elapsed<remaining


def test_prepare_and_build_testset_print_a_summary_not_a_line_per_item(tmp_path, capsys):
    """Under pytest stderr is no terminal: no bar, and stdout has the one summary line."""
    assert main(["prepare", "--dataset", "abdomen_phantom", "--out", str(tmp_path / "cache"), "--size", "16",
                 "--workers", "0", *PHANTOM]) == 0
    out, err = capsys.readouterr()
    assert out.count("\n") == 1 and out.startswith("prepared 4 samples") and err == ""
    aug = tmp_path / "aug.gin"
    aug.write_text(AUG)
    assert main(["build-testset", "--dataset", "synthetic", "--pairs", "3", "--size", "12", "--seed", "7",
                 "--out", str(tmp_path / "ts"), "--augment", str(aug)]) == 0
    out, err = capsys.readouterr()
    assert out.count("\n") == 1 and out.startswith("wrote 3 pairs") and err == ""


@pytest.mark.parametrize("flag", [[], ["--no-progress"]])
def test_a_terminal_gets_one_bar_unless_no_progress(tmp_path, capsys, monkeypatch, flag):
    monkeypatch.delenv(progress.ENV, raising=False)
    term = _Terminal()
    monkeypatch.setattr("sys.stderr", term)
    aug = tmp_path / "aug.gin"
    aug.write_text(AUG)
    assert main(flag + ["build-testset", "--dataset", "synthetic", "--pairs", "3", "--size", "12", "--seed", "7",
                        "--out", str(tmp_path / "ts"), "--augment", str(aug)]) == 0
    drawn = term.getvalue()
    if flag:
        assert drawn == ""
    else:
        assert "build-testset" in drawn and "3/3" in drawn and "pair/s" in drawn
    assert progress.ENV not in __import__("os").environ  # --no-progress does not outlive the command


def test_evaluate_counts_method_pair_runs_on_one_bar(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    aug = tmp_path / "aug.gin"
    aug.write_text(AUG)
    assert main(["build-testset", "--dataset", "synthetic", "--pairs", "2", "--size", "12", "--seed", "7",
                 "--out", str(tmp_path / "ts"), "--augment", str(aug)]) == 0
    term = _Terminal()
    monkeypatch.setattr("sys.stderr", term)
    capsys.readouterr()
    assert main(["evaluate", "--testset", str(tmp_path / "ts"), "--baseline", "identity", "--baseline", "identity",
                 "--metric", "dsc", "--out", str(tmp_path / "ev"), "--no-figures"]) == 0
    out = capsys.readouterr().out
    assert not [line for line in out.splitlines() if line.startswith("[")]  # no line per method and pair
    assert "evaluate" in term.getvalue() and "4/4" in term.getvalue() and "run/s" in term.getvalue()
