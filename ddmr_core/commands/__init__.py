"""One module per ``ddmr`` sub-command (see :mod:`ddmr_core.cli`), the table that names
them, and the arguments they share.

Each module defines ``add_arguments(parser)`` and ``run(args) -> int``; :data:`COMMANDS`
lists them with their one-line help, so ``ddmr --help`` and the parsing of one command
import only that command's module (a module may import torch, MONAI or ANTs at its top;
``ddmr --help`` imports none of them)."""

from __future__ import annotations

import argparse
import re

#: ``(command, module, help)`` in the order ``ddmr --help`` lists them: the one list of
#: commands (a test checks it against the modules of this package)
COMMANDS = (
    ("demo", "demo", "the main job: train UW-NSD on the embedded brain template, evaluate against ANTs"),
    ("prepare", "prepare", "preprocess a dataset once and cache it on disk (for fast training epochs)"),
    ("train", "train", "train a registration model from a gin config (resume, finetune, multi-device)"),
    ("build-testset", "build_testset",
     "write fixed evaluation pairs (images, label maps, ground-truth fields) to a folder"),
    ("evaluate", "evaluate", "evaluate models and baselines on a test set (per-pair CSV, summary table, figures)"),
    ("register", "register", "register images with a trained model (ITK/ANTs field, warped image, Dice/TRE)"),
    ("warp", "warp", "apply a saved field (field.nii.gz or field.npz) to another image or label map"),
    ("jacobian", "jacobian", "write the Jacobian determinant map of a saved field and print its folding percentage"),
    ("serve", "serve",
     "a local web application: register a pair in the browser, see slices, overlay, field, Jacobian; download"),
    ("export", "export",
     "strip a training checkpoint to a model for inference (weights, config, card) to ship or share"),
    ("reproduce", "reproduce",
     "run one of the paper's experiments (six designs, finetuning, ANTs baselines) and write its table"),
    ("models", "models",
     "list the shipped models (name, version, task, modalities, size, licence) or show a model card"),
    ("plugins", "plugins", "list registered plugins (name, kind, distribution)"),
)

_DURATION = re.compile(r"^(?:(\d+(?:\.\d*)?)h)?(?:(\d+(?:\.\d*)?)m)?(?:(\d+(?:\.\d*)?)s?)?$")


def duration(text: str) -> float:
    """Seconds of a wall-clock budget: ``"45m"``, ``"1h30m"``, ``"90s"`` or ``"2700"``
    (plain numbers are seconds). An ``argparse`` type: anything else is a usage error."""
    m = _DURATION.match(str(text).strip().lower())
    if not m or not any(m.groups()):
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: use e.g. 45m, 1h30m, 90s or 2700 (seconds)")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in m.groups())
    total = 3600 * hours + 60 * minutes + seconds
    if total <= 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: it must be positive")
    return total


def add_field_argument(parser) -> None:
    """``--field F``: a saved displacement field (:func:`ddmr_core.data.field_io.load_field`)."""
    parser.add_argument("--field", required=True, metavar="F",
                        help="displacement field: ITK/ANTs NIfTI (field.nii.gz) or ddmr's field.npz")


def add_trust_config_argument(parser) -> None:
    """``--trust-config``: let this command's configs import any module and include any
    file (:mod:`ddmr_core.config.trust`; by default configs are data)."""
    parser.add_argument("--trust-config", action="store_true",
                        help="let the gin configs and bindings import any Python module and include any file "
                             "(by default they may import only ddmr's modules and plugins, and include only "
                             ".gin files among the shipped configs and in the given config's folder tree)")
