"""Bad input across the commands, as a table (issue 17).

Each case is one ``ddmr`` command line run in-process on a shared workspace of tiny
(16^3) fixtures. Every case must

* exit with the expected status (2: a user error),
* print exactly one line on stderr, ``ddmr: error: ...``, holding the expected words,
* print none of the ``forbidden`` words on stdout or stderr (a hostile checkpoint must
  neither run code, e.g. ``import this`` printing the Zen of Python, nor echo a file it
  tries to ``include``),
* leave the workspace exactly as it was: every file (content and mode) and folder,
  hidden ones included -- so nothing existing is lost (``prev_out`` is an earlier
  ``ddmr register`` output that a successful run would replace), no output folder is
  created, and no temporary file is left behind. The workspace also holds the marker
  that a malicious pickle would create if it ever ran.

The cases of issue 17's point 3 (tracebacks where one line was promised) are the
``p3-*`` ids.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from tiny_workspace import SECRET, ZEN, snapshot

from ddmr_core.cli import main


# ------------------------------------------------------------------- table
@dataclass
class Case:
    id: str
    argv: str  # a command line; {name} placeholders name workspace entries
    words: tuple  # expected in the one error line
    rc: int = 2
    forbidden: tuple = ()  # must appear neither on stdout nor on stderr


REG = "register --fixed {f} --moving {m}"
REG_OUT = REG + " --model {good} --out {prev_out}"
TRAIN = "train experiments/brain/bl_n.gin --out {new_out}"
EVAL = "evaluate --testset {testset} --baseline identity --no-figures"
PREP = "prepare --dataset synthetic --size 16"
BUILD = "build-testset --dataset synthetic --pairs 1 --size 16 --seed 0"

CASES = [
    # --- register: images and label maps
    Case("reg-fixed-missing", "register --fixed {ws}/gone.nii.gz --moving {m} --model {good} --out {prev_out}",
         ("gone.nii.gz", "not found")),
    Case("reg-moving-junk", "register --fixed {f} --moving {junk} --model {good} --out {prev_out}",
         ("junk.nii.gz", "cannot be read")),
    Case("reg-fixed-4d", "register --fixed {four_d} --moving {m} --model {good} --out {prev_out}", ("four_d", "4-D")),
    Case("reg-moving-2d", "register --fixed {f} --moving {two_d} --model {good} --out {prev_out}", ("two_d", "2-D")),
    Case("reg-fixed-nan", "register --fixed {nan_image} --moving {m} --model {good} --out {prev_out}",
         ("nan_image", "NaN")),
    Case("reg-fixed-zero", "register --fixed {zero} --moving {m} --model {good} --out {prev_out}",
         ("zero.nii.gz", "constant")),
    Case("reg-moving-constant", "register --fixed {f} --moving {const} --model {good} --out {prev_out}",
         ("const.nii.gz", "constant")),
    Case("reg-constant-with-labels", "register --fixed {const} --moving {m} --fixed-seg {fs} --moving-seg {ms} "
         "--model {good} --out {prev_out}", ("const.nii.gz", "constant")),
    Case("reg-seg-shape", REG_OUT + " --fixed-seg {seg_small}", ("seg_small", "shape")),
    Case("reg-seg-affine", REG_OUT + " --moving-seg {seg_moved}", ("seg_moved", "affine")),
    Case("reg-seg-fractions", REG_OUT + " --fixed-seg {seg_frac}", ("seg_frac", "non-integer")),
    Case("reg-seg-over-255", REG_OUT + " --moving-seg {seg_big}", ("seg_big", "0..255")),
    Case("reg-only-fixed", "register --fixed {f} --model {good} --out {prev_out}", ("--moving",)),
    Case("reg-pairs-and-fixed", "register --pairs {pairs_twice} --fixed {f} --model {good} --out {prev_out}",
         ("not both",)),
    Case("reg-device", REG_OUT + " --device nonsense", ("nonsense", "device")),
    # --- register: checkpoints, broken
    Case("ckpt-missing", REG + " --model {ws}/none.pt --out {prev_out}", ("none.pt", "not found")),
    Case("ckpt-empty", REG + " --model {empty} --out {prev_out}", ("empty.pt", "empty or truncated")),
    Case("ckpt-text", REG + " --model {text} --out {prev_out}", ("text.pt", "cannot be read")),
    Case("ckpt-foreign", REG + " --model {foreign} --out {prev_out}", ("foreign.pt", "not a ddmr checkpoint")),
    Case("ckpt-no-config", REG + " --model {no_config} --out {prev_out}", ("no_config.pt", "gin_config")),
    Case("ckpt-other-arch", REG + " --model {other_arch} --out {prev_out}", ("other_arch.pt", "does not match")),
    Case("ckpt-bad-config", REG + " --model {bad_config} --out {prev_out}", ("bad_config.pt", "invalid gin config")),
    Case("ckpt-unknown-ref", REG + " --model {unknown_ref} --out {prev_out}", ("unknown_ref.pt", "nope")),
    # --- register: checkpoints, hostile (issue 17, point 1)
    Case("ckpt-pickle", REG + " --model {pickle} --out {prev_out}", ("pickle.pt", "Python objects")),
    Case("ckpt-import-this", REG + " --model {import_this} --out {prev_out}",
         ("import_this.pt", "`import`", "refused"), forbidden=(ZEN,)),
    Case("ckpt-include-file", REG + " --model {include_secret} --out {prev_out}",
         ("include_secret.pt", "`include`", "refused"), forbidden=(SECRET,)),
    Case("ckpt-include-passwd", REG + " --model {include_passwd} --out {prev_out}",
         ("include_passwd.pt", "`include`"), forbidden=("root:",)),
    Case("ckpt-dynamic-registration", REG + " --model {dynamic} --out {prev_out}", ("dynamic.pt", "`import`")),
    Case("ckpt-model-builds-dataset", REG + " --model {dataset_ref} --out {prev_out}",
         ("dataset_ref.pt", "nifti_folder", "not a model component")),
    Case("ckpt-macro-builds-dataset", REG + " --model {macro_ref} --out {prev_out}",
         ("macro_ref.pt", "nifti_folder", "not a model component")),
    # --- register: non-finite and diverged models (point 2)
    Case("ckpt-nan-weights", REG + " --model {nan_weights} --out {prev_out}", ("nan_weights.pt", "non-finite weights")),
    Case("ckpt-blown-up", REG + " --model {huge_weights} --out {prev_out}",
         ("huge_weights.pt", "not a registration")),
    # --- register: output folder
    Case("p3-reg-out-file", REG + " --model {good} --out {a_file}", ("a_file", "not a folder")),
    Case("p3-reg-out-under-file", REG + " --model {good} --out {a_file}/sub", ("a_file", "is a file")),
    Case("p3-reg-out-proc", REG + " --model {good} --out /proc/ddmr_x", ("/proc", "cannot write")),
    Case("reg-out-foreign", REG + " --model {good} --out {foreign_dir}", ("foreign_dir", "did not write")),
    Case("reg-out-root", REG + " --model {good} --out /", ("'/'", "current folder or one above")),
    Case("reg-model-unknown-name", REG + " --model brain_mr --out {prev_out}",
         ("'brain_mr'", "neither a checkpoint file nor a registered model", "available models")),
    Case("reg-model-name-or-missing-file", REG + " --model {ws}/brain-mr --out {prev_out}", ("brain-mr", "not found")),
    # --- register --pairs
    Case("pairs-missing-csv", "register --pairs {ws}/none.csv --model {good} --out {new_out}", ("none.csv", "not found")),
    Case("pairs-no-rows", "register --pairs {pairs_empty} --model {good} --out {new_out}", ("pairs_empty", "no rows")),
    Case("pairs-no-moving", "register --pairs {pairs_no_moving} --model {good} --out {new_out}",
         ("pairs_no_moving", "lacks column")),
    Case("pairs-missing-file", "register --pairs {pairs_missing} --model {good} --out {new_out}",
         ("line 2", "gone.nii.gz")),
    Case("pairs-bad-name", "register --pairs {pairs_bad_name} --model {good} --out {new_out}",
         ("../up", "plain folder name")),
    Case("pairs-twice", "register --pairs {pairs_twice} --model {good} --out {new_out}", ("'a'", "twice")),
    Case("pairs-constant-second", "register --pairs {pairs_constant} --model {good} --out {new_out}",
         ("const.nii.gz", "constant")),
    Case("pairs-four-d-second", "register --pairs {pairs_four_d} --model {good} --out {prev_out}", ("four_d", "4-D")),
    # --- evaluate
    Case("eval-no-testset", "evaluate --testset {ws}/none --baseline identity --out {new_out}", ("none", "not found")),
    Case("eval-no-manifest", "evaluate --testset {no_manifest} --baseline identity --out {new_out}",
         ("manifest.csv",)),
    Case("eval-no-method", "evaluate --testset {testset} --out {new_out}", ("nothing to evaluate",)),
    Case("eval-unknown-baseline", "evaluate --testset {testset} --baseline nope --out {new_out}",
         ("nope", "baselines")),
    Case("eval-unknown-metric", EVAL + " --metric nope --out {new_out}", ("nope", "metrics")),
    Case("p3-eval-out-file", EVAL + " --out {a_file}", ("a_file", "not a folder")),
    Case("eval-out-under-file", EVAL + " --out {a_file}/sub", ("a_file", "is a file")),
    Case("eval-out-foreign", EVAL + " --out {foreign_dir}", ("foreign_dir", "did not write")),
    Case("eval-gin-malformed", EVAL + " --out {new_out} --gin 'ddmr.metrics.ncc.win = ((('",
         ("invalid gin config", "unclosed")),
    Case("eval-gin-unknown-parameter", EVAL + " --out {new_out} --gin 'ddmr.baselines.identity.nope = 1'", ("nope",)),
    Case("eval-config-missing", EVAL + " --out {new_out} --config {ws}/none.gin", ("none.gin", "not found")),
    Case("eval-model-unknown-name", EVAL + " --model nosuch-model --out {new_out}",
         ("'nosuch-model'", "available models")),
    # --- warp (issue 15): nothing is written, an existing output is kept
    Case("warp-field-missing", "warp --field {ws}/none.nii.gz --moving {m} --out {ws}/w.nii.gz",
         ("none.nii.gz", "not found")),
    Case("warp-field-junk", "warp --field {junk} --moving {m} --out {ws}/w.nii.gz", ("junk.nii.gz", "cannot be read")),
    Case("warp-field-is-an-image", "warp --field {f} --moving {m} --out {ws}/w.nii.gz", ("f.nii.gz", "(X, Y, Z, 1, 3)")),
    Case("warp-field-suffix", "warp --field {good} --moving {m} --out {ws}/w.nii.gz", ("good.pt", ".npz")),
    Case("warp-field-npz-junk", "warp --field {ws}/none.npz --moving {m} --out {ws}/w.nii.gz", ("none.npz", "not found")),
    Case("warp-moving-missing", "warp --field {field} --moving {ws}/gone.nii.gz --out {ws}/w.nii.gz",
         ("gone.nii.gz", "not found")),
    Case("warp-moving-4d", "warp --field {field} --moving {four_d} --out {f}", ("four_d", "4-D")),
    Case("warp-moving-nan", "warp --field {field_npz} --moving {nan_image} --out {f}", ("nan_image", "NaN")),
    Case("warp-labels-fractions", "warp --field {field} --moving {seg_frac} --labels --out {ws}/w.nii.gz",
         ("seg_frac", "non-integer")),
    Case("warp-labels-over-255", "warp --field {field} --moving {seg_big} --labels --out {ws}/w.nii.gz",
         ("seg_big", "0..255")),
    Case("warp-out-folder", "warp --field {field} --moving {m} --out {prev_out}", ("prev_out", "is a folder")),
    Case("warp-out-suffix", "warp --field {field} --moving {m} --out {ws}/w.txt", ("w.txt", ".nii")),
    Case("warp-out-under-file", "warp --field {field} --moving {m} --out {a_file}/w.nii.gz", ("a_file", "is a file")),
    Case("warp-out-proc", "warp --field {field} --moving {m} --out /proc/ddmr_w.nii.gz", ("/proc", "cannot write")),
    # --- jacobian (issue 15)
    Case("jac-field-missing", "jacobian --field {ws}/none.nii.gz --out {ws}/j.nii.gz", ("none.nii.gz", "not found")),
    Case("jac-field-is-an-image", "jacobian --field {m} --out {f}", ("m.nii.gz", "(X, Y, Z, 1, 3)")),
    Case("jac-field-suffix", "jacobian --field {pairs_empty} --out {ws}/j.nii.gz", ("pairs_empty.csv", ".npz")),
    Case("jac-out-folder", "jacobian --field {field} --out {foreign_dir}", ("foreign_dir", "is a folder")),
    Case("jac-out-suffix", "jacobian --field {field} --out {ws}/j.png", ("j.png", ".nii")),
    Case("jac-out-proc", "jacobian --field {field_npz} --out /proc/ddmr_j.nii.gz", ("/proc", "cannot write")),
    # --- prepare
    Case("prep-unknown-dataset", "prepare --dataset nope --out {new_out}", ("nope", "datasets")),
    Case("prep-workers", PREP + " --out {new_out} --workers -1", ("--workers", "-1")),
    Case("prep-size", PREP + " --out {new_out} --size 1", ("--size",)),
    Case("p3-prep-out-file", PREP + " --out {a_file}", ("a_file", "not a folder")),
    Case("prep-out-proc", PREP + " --out /proc/ddmr_x", ("/proc", "cannot write")),
    Case("prep-gin-malformed", PREP + " --out {new_out} --gin 'ddmr.datasets.synthetic.subjects = ((('",
         ("invalid gin config",)),
    Case("prep-out-foreign", PREP + " --out {foreign_dir}", ("foreign_dir", "not a ddmr prepare cache")),
    # --- build-testset
    Case("build-pairs", "build-testset --dataset synthetic --pairs 0 --size 16 --seed 0 --out {new_out}",
         ("--pairs",)),
    Case("build-size", "build-testset --dataset synthetic --pairs 1 --size 1 --seed 0 --out {new_out}", ("--size",)),
    Case("p3-build-out-file", BUILD + " --out {a_file}", ("a_file", "not a folder")),
    Case("build-out-under-file", BUILD + " --out {a_file}/sub", ("a_file", "is a file")),
    Case("build-existing-testset", BUILD + " --out {testset}", ("already holds a test set", "--overwrite")),
    Case("build-out-foreign", BUILD + " --out {foreign_dir} --overwrite", ("foreign_dir", "did not write")),
    Case("build-unknown-dataset", "build-testset --dataset nope --pairs 1 --size 16 --seed 0 --out {new_out}",
         ("nope", "datasets")),
    Case("build-augment-missing", BUILD + " --out {new_out} --augment {ws}/none.gin", ("none.gin", "not found")),
    # --- train (everything is checked before the run folder is touched)
    Case("train-config-missing", "train {ws}/none.gin --out {new_out}", ("none.gin", "not found")),
    Case("p3-train-gin-malformed", TRAIN + " --gin 'ddmr.Trainer.lr = ((('", ("invalid gin config", "unclosed")),
    Case("p3-train-lr-string", TRAIN + " --gin \"ddmr.Trainer.lr = 'abc'\"", ("lr", "'abc'", "expects a number")),
    Case("train-lr-none", TRAIN + " --gin 'ddmr.Trainer.lr = None'", ("lr", "expects a number")),
    Case("train-patience-string", TRAIN + " --gin \"ddmr.Trainer.early_stopping_patience = '3'\"",
         ("early_stopping_patience", "expects a number")),
    Case("train-unknown-parameter", TRAIN + " --gin 'ddmr.Trainer.nope = 1'", ("nope",)),
    Case("train-unknown-backbone", TRAIN + " --gin 'ddmr.build_model.backbone = @ddmr.backbones.nope()'",
         ("nope", "backbones")),
    Case("train-max-steps", TRAIN + " --max-steps -1", ("--max-steps",)),
    Case("train-device", TRAIN + " --device nonsense", ("--device", "'nonsense'", "not a device name")),
    Case("train-device-type", TRAIN + " --device meta", ("--device", "'meta'", "cpu, cuda, mps")),
    Case("eval-device", EVAL + " --out {new_out} --device nonsense", ("--device", "'nonsense'")),
    Case("demo-device", "demo --out {new_out} --device cuda:x", ("--device", "'cuda:x'")),
    # --- demo and reproduce: arguments checked before any step runs
    Case("demo-unknown-baseline", "demo --out {new_out} --baselines nope", ("nope", "baselines")),
    Case("demo-size", "demo --out {new_out} --size 20", ("--size", "16")),
    Case("demo-steps", "demo --out {new_out} --steps 0", ("--steps",)),
    Case("reproduce-pairs", "reproduce brain --out {new_out} --pairs -2", ("--pairs", "-2")),
    Case("reproduce-steps", "reproduce brain --out {new_out} --steps 0", ("--steps",)),
    Case("reproduce-size", "reproduce brain --out {new_out} --size 0", ("--size",)),
    Case("reproduce-finetune-without-brain", "reproduce finetune_full --out {new_out}", ("brain",)),
]


def test_the_table_is_large_enough():
    assert len(CASES) >= 60
    assert len({c.id for c in CASES}) == len(CASES)
    assert sum(c.id.startswith("p3-") for c in CASES) >= 7


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, tiny_workspace, capsys):
    workspace = tiny_workspace
    import shlex

    fields = {"field": str(Path(workspace["testset"], "pair_0000", "disp_true.nii.gz")),
              "field_npz": str(Path(workspace["testset"], "pair_0000", "disp_true.npz"))}
    argv = [a.format(**workspace, **fields) for a in shlex.split(case.argv)]
    before = snapshot(workspace["ws"])
    capsys.readouterr()
    rc = main(argv)
    out, err = capsys.readouterr()
    # the tiny untrained model's results are (rightly) flagged untrustworthy: not the error
    lines = [x for x in err.strip().splitlines() if "untrustworthy result" not in x]
    assert rc == case.rc, (rc, err)
    assert len(lines) == 1 and lines[0].startswith("ddmr: error: "), err
    for word in case.words:
        assert word in lines[0], (word, lines[0])
    for word in case.forbidden:
        assert word not in out and word not in err, word
    assert snapshot(workspace["ws"]) == before  # nothing lost, nothing new, no temporary left
    assert not Path(workspace["ws"], "PWNED").exists()


def test_hostile_checkpoints_import_nothing(tiny_workspace, capsys):
    workspace = tiny_workspace
    """In-process, the module a hostile config imports is never loaded."""
    if "this" in sys.modules:  # pragma: no cover - something imported it before
        pytest.skip("the 'this' module is already imported")
    assert main(["register", "--fixed", workspace["f"], "--moving", workspace["m"], "--model",
                 workspace["import_this"], "--out", workspace["new_out"]]) == 2
    assert "this" not in sys.modules
    assert ZEN not in capsys.readouterr().out


def test_library_parse_config_token_error_is_a_config_error():
    """Point 3's library case: a malformed text is a ConfigError, not tokenize.TokenError."""
    from ddmr_core.config.parsing import parse_config
    from ddmr_core.errors import ConfigError

    with pytest.raises(ConfigError, match="invalid gin config.*unclosed"):
        parse_config(text="ddmr.Trainer.lr = (((")
    with pytest.raises(ConfigError, match="expects a number"):
        parse_config(text="ddmr.Trainer.lr = 'abc'")
