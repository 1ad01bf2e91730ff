"""The catalogue of designs and experiments: what ``ddmr reproduce`` and ``ddmr demo`` can run.

Designs are the paper's Table 1, one file each under ``configs/designs/`` (found, not
listed: a new design is a new file there, plus its ``configs/experiments/<folder>/`` files);
``bl_n.gin`` is the design ``BL-N``. Cheap to import (no torch, no gin): the command line
builds its choices from it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path


def _configs() -> Path:
    """The shipped configs' folder (package ``ddmr_configs``), found without importing gin."""
    spec = importlib.util.find_spec("ddmr_configs")
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def design_name(stem: str) -> str:
    """``uw_nsdh`` -> ``UW-NSDH``."""
    return stem.upper().replace("_", "-")


def design_files() -> dict[str, str]:
    """``{design name: file stem}`` of every ``configs/designs/*.gin``, in file-name order
    (the paper's: ``BL-N``, ``BL-NS``, ``SG-ND``, ``SG-NSD``, ``UW-NSD``, ``UW-NSDH``)."""
    stems = sorted(p.stem for p in (_configs() / "designs").glob("*.gin"))
    return {design_name(s): s for s in stems}


def design_config(folder: str, design: str) -> str:
    """The experiment config of ``design`` in ``configs/experiments/<folder>/``, relative to
    the shipped configs (``experiments/brain/bl_n.gin``)."""
    return f"experiments/{folder}/{design_files()[design]}.gin"


@dataclass(frozen=True)
class Experiment:
    """One of the paper's experiments: the dataset it runs on, the folder of its experiment
    configs under ``configs/experiments/`` (None: it trains nothing) and the baselines scored
    beside the networks."""
    dataset: str
    folder: str | None
    baselines: tuple[str, ...] = ()
    #: default number of test pairs (the test split size; 11 for the abdomen as OSLO-COMET)
    pairs: int = 8


EXPERIMENTS = {
    "brain": Experiment("mni_brain", "brain"),
    "abdomen": Experiment("abdomen_phantom", "abdomen", pairs=11),
    "finetune_full": Experiment("abdomen_phantom", "finetune_full", pairs=11),
    # Table 5: the networks and ANTs on the same pairs, runtimes measured in the same run
    "finetune_two_step": Experiment("abdomen_phantom", "finetune_two_step", ("ants_syn", "ants_syncc"), pairs=11),
    "baselines": Experiment("abdomen_phantom", None, ("ants_syn", "ants_syncc", "identity"), pairs=11),
}
