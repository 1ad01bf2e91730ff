"""The paper's experiments as resumable protocols (what ``ddmr reproduce`` runs).

All experiments share ``OUT/data/<dataset>_<size>`` (prepared caches) and
``OUT/testsets/<dataset>_<size>`` (fixed test pairs: every method is scored on the same
pairs), and write ``OUT/<experiment>/report/summary.md`` in the paper's table format. The
finetuning experiments start from the brain runs in ``OUT/brain/runs``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ..errors import DdmrError
from .catalogue import EXPERIMENTS, design_config, design_files

if TYPE_CHECKING:  # the protocol (torch, files) is imported when a plan is made
    from .protocol import Step

#: seed of the fixed test pairs of every experiment
TESTSET_SEED = 2023


@dataclass
class Reproduction:
    """One run of a paper experiment (:data:`~ddmr_core.experiments.catalogue.EXPERIMENTS`).

    Attributes:
        experiment: its name (``brain``, ``abdomen``, ``finetune_full``,
            ``finetune_two_step``, ``baselines``).
        out: root folder of all experiments.
        size: grid ``size^3`` (paper: 128).
        steps, max_time: optimiser steps and/or seconds of training per model (None:
            until early stopping), counted over the whole run.
        recipe: include ddmr's training recipe (``mixins/recipe/learnt.gin``).
        pairs: test pairs (None: the experiment's default).
        designs: subset of the catalogue's designs, in its names (``BL-N``...).
        seeds: training seeds; seed 0 runs in ``runs/DESIGN``, seed k in ``runs/DESIGN-seedk``.
        light: the light CPU U-Net (``mixins/backbone/default.gin``) instead of the paper's.
        hybrid: ddmr's hybrid model (``mixins/model/hybrid.gin``); the report also scores the
            models without refinement.
        train_only: stop before the test set and the evaluation.
        device: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or None.
    """
    experiment: str
    out: Path | str = "paper_runs"
    size: int = 128
    steps: int | None = None
    max_time: float | None = None
    recipe: bool = False
    pairs: int | None = None
    designs: Sequence[str] = field(default_factory=lambda: list(design_files()))
    seeds: Sequence[int] = (0,)
    light: bool = False
    hybrid: bool = False
    train_only: bool = False
    device: str | None = None

    @property
    def folder(self) -> Path:
        """``OUT/<experiment>``: its runs and report."""
        return Path(self.out) / self.experiment

    def check(self) -> None:
        """Refuse bad values before any work (:class:`~ddmr_core.errors.DdmrError`, one line)."""
        if self.experiment not in EXPERIMENTS:
            raise DdmrError(f"unknown experiment {self.experiment!r}; choose from {', '.join(sorted(EXPERIMENTS))}")
        for option, value, low in (("--size", self.size, 2), ("--steps", self.steps, 1), ("--pairs", self.pairs, 1)):
            if value is not None and value < low:
                raise DdmrError(f"{option} must be at least {low}, got {value}")
        if any(int(seed) < 0 for seed in self.seeds):
            raise DdmrError(f"--seeds must be non-negative integers, got {' '.join(map(str, self.seeds))}")
        unknown = [d for d in self.designs if d not in design_files()]
        if unknown:
            raise DdmrError(f"unknown design(s) {', '.join(unknown)}; choose from {', '.join(design_files())}")
        if EXPERIMENTS[self.experiment].folder is None and self.train_only:
            raise DdmrError(f"--train-only: the {self.experiment} experiment trains nothing")

    def _bindings(self, cache: Path) -> list[str]:
        from .protocol import data_bindings

        bindings = data_bindings(cache, int(self.size), self.light)
        if self.recipe:
            bindings.append("include 'mixins/recipe/learnt.gin'")
        if self.hybrid:
            bindings.append("include 'mixins/model/hybrid.gin'")
        return bindings

    def _train_steps(self, cache: Path, runs: dict) -> list[Step]:
        """One training step per design and seed; fills ``runs`` (``{name: run folder}``)."""
        from .protocol import train_step

        root, folder = Path(self.out), EXPERIMENTS[self.experiment].folder
        bindings, steps = self._bindings(cache), []
        for design in self.designs:
            for seed in dict.fromkeys(self.seeds):
                name, folder_name = (design, design) if seed == 0 else (f"{design} (seed {seed})",
                                                                        f"{design}-seed{seed}")
                extra = list(bindings) + ([f"ddmr.Trainer.seed = {int(seed)}"] if seed != 0 else [])
                if folder.startswith("finetune"):
                    # each seed finetunes the brain model of the same seed
                    source = root / "brain" / "runs" / folder_name
                    extra.append(f"ddmr.finetune.checkpoint = '{(source / 'best.pt').as_posix()}'")
                    if not source.exists():
                        raise DdmrError(f"{self.experiment}: needs the brain run of {name} in {source}; "
                                        f"run `ddmr reproduce brain --out {root}"
                                        f"{' --seeds ' + str(seed) if seed else ''}` first")
                runs[name] = self.folder / "runs" / folder_name
                steps.append(train_step(name, design_config(folder, design), runs[name], self.steps, extra,
                                        self.device, max_time=self.max_time))
        return steps

    def plan(self) -> list[Step]:
        """The protocol's steps: prepare the data, train each design and seed, write the
        test pairs, evaluate every run beside the experiment's baselines."""
        from .protocol import evaluate_step, prepare_step, testset_step

        self.check()
        exp, root, size = EXPERIMENTS[self.experiment], Path(self.out), int(self.size)
        cache = root / "data" / f"{exp.dataset}_{size}"
        testset = root / "testsets" / f"{exp.dataset}_{size}"
        runs: dict = {}
        steps = [prepare_step(exp.dataset, size, cache)]
        if exp.folder is not None:
            steps += self._train_steps(cache, runs)
        if self.train_only:  # the markers of the train steps stay: a later run without it skips them
            return steps
        steps.append(testset_step(exp.dataset, self.pairs or exp.pairs, size, TESTSET_SEED, testset))
        steps.append(evaluate_step(testset, runs, exp.baselines, self.folder / "report", self.device,
                                   unrefined=bool(runs) and self.hybrid))
        return steps

    def run(self) -> Path | None:
        """Run (or resume) the protocol; returns the report's ``summary.md`` (None with
        ``train_only``)."""
        from .protocol import run_protocol

        run_protocol(self.folder, self.plan(), title=self.experiment)
        return None if self.train_only else self.folder / "report" / "summary.md"
