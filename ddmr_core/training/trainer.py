"""The one trainer every design uses (paper section 2.4), set entirely from gin: the run's
set-up here, the loop in :mod:`ddmr_core.training.loop`.

Per optimiser step the trainer runs ``accumulate`` micro-batches of ``batch_size``
samples: dataset sample -> (on the device) one-hot segmentations -> augmentation
pipeline -> ``RegistrationModel.compute_loss`` -> backward, and steps Adam once.
After each epoch it validates on pairs that are the same every epoch (the
augmentation is seeded by the validation sample index only), steps
ReduceLROnPlateau on the validation loss, saves ``best.pt`` when the validation loss
improved and ``last.pt`` always, and stops early after ``early_stopping_patience``
epochs without improvement.

Determinism and exact resume: the sample order of epoch ``e`` comes from
``DistributedSampler(seed=seed).set_epoch(e)`` and the training augmentation of a sample
is seeded from ``(epoch + 1) * INDEX_STRIDE + index``, so neither needs hidden state; the
checkpoint stores the position inside the epoch, model/optimiser/scheduler states, the
counters and the RNG states, and ``resume`` continues bit for bit on CPU.

Under ``torchrun`` (``WORLD_SIZE > 1``) the loss module is wrapped in
DistributedDataParallel (gloo on CPU, NCCL on CUDA; :mod:`ddmr_core.training.distributed`);
gradient all-reduce runs only on the last micro-batch of each accumulation group
(``no_sync`` on the others). Rank 0 writes checkpoints and logs.

Run folder: :mod:`ddmr_core.training.run_folder`. Transfer learning's phases:
:mod:`ddmr_core.training.transfer`.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any, Iterable

import gin
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from ..model.checkpoint import load_training_state, save_checkpoint, training_state
from ..model.schedule import Schedule
from ..devices import resolve_device
from ..errors import ConfigError, DataError, DdmrError
from ..data.guards import check_memory, training_bytes
from ..spatial.fields import one_hot
from .log import TrainingLog
from .run_folder import check_run_folder, write_config_copy
from .validation import validate
from .loop import TrainingLoop
from . import distributed as _dist
from . import transfer as _transfer

#: Offset between the augmentation seeds of two training epochs (larger than any dataset).
INDEX_STRIDE = 1_000_003
class _ListSampler(Sampler):
    """Yields a fixed list of indices (one epoch's order, possibly resumed mid-way)."""

    def __init__(self, indices: Iterable[int]):
        self.indices = list(indices)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def _check_options(*, batch_size, accumulate, max_epochs, max_nonfinite, lr, weighting_lr, max_steps,
                   max_time, warmup_steps, patience_after_steps, lr_schedule) -> None:
    """Raise ConfigError naming the binding (or option) of a :class:`Trainer` option out of range."""
    for name, value, low in (("batch_size", batch_size, 1), ("accumulate", accumulate, 1),
                             ("max_epochs", max_epochs, 0), ("max_nonfinite", max_nonfinite, 1)):
        if int(value) < low:
            raise ConfigError(f"ddmr.Trainer.{name} must be >= {low}, got {value}")
    if lr <= 0:
        raise ConfigError(f"ddmr.Trainer.lr must be positive, got {lr}")
    if weighting_lr is not None and not weighting_lr > 0:
        raise ConfigError(f"ddmr.Trainer.weighting_lr must be positive or None, got {weighting_lr!r}")
    if max_steps is not None and max_steps < 0:
        raise ConfigError(f"--max-steps must be >= 0, got {max_steps}")
    if max_time is not None and not max_time > 0:
        raise ConfigError(f"--max-time must be positive, got {max_time}")
    for name, value in (("warmup_steps", warmup_steps), ("patience_after_steps", patience_after_steps)):
        if int(value) != value or value < 0:
            raise ConfigError(f"ddmr.Trainer.{name} must be a non-negative integer, got {value!r}")
    if lr_schedule not in ("plateau", "cosine"):
        raise ConfigError(f"ddmr.Trainer.lr_schedule must be 'plateau' or 'cosine', got {lr_schedule!r}")


@gin.configurable(module="ddmr")
class Trainer:
    """Gradient-accumulating trainer. ``run_dir``, ``device``, ``max_steps`` and ``resume``
    come from the command line; everything else from gin (``ddmr.Trainer.<param>``).
    This class is the run's state: it builds and checks the run (:meth:`setup`), holds
    its components, counters, history and :class:`~ddmr_core.model.schedule.Schedule`
    (:meth:`state`) and turns loader samples into training pairs (:meth:`prepare`);
    :meth:`fit` hands it to the loop, :class:`~ddmr_core.training.loop.TrainingLoop`.

    Args:
        run_dir: folder of the run (created).
        model, dataset, augmentation: built from gin (``ddmr.build_model()`` etc.) when None.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or None (CUDA when available):
            :func:`ddmr_core.devices.resolve_device`.
        max_steps: stop after this many optimiser steps (None: no limit).
        max_time: stop at the first optimiser-step boundary after this many seconds of
            training, counted over the whole run (a resumed run continues the count),
            with a resumable ``last.pt`` (None: no limit).
        resume: continue from ``run_dir/last.pt``.
        lr: Adam learning rate (paper 1e-3; a ``transfer`` strategy replaces it).
        lr_schedule: ``"plateau"`` (the paper: ReduceLROnPlateau on the validation loss)
            or ``"cosine"``: also decay the rate to 0 along a half cosine over the run's
            budget (``max_steps`` or ``max_time``, whichever is further along), so a run
            planned in time ends at a low rate.
        weighting_lr: Adam learning rate of the loss weighting's own parameters (the
            log-variances of ``uw``) when it should differ from ``lr`` (None: ``lr``, the
            paper). Adam moves each log-variance by about the rate per step, so at 3e-3 a
            weight takes ~2000 steps to travel the factor of ~100 to its plateau
            (``docs/research_notes.md``, "Training that learns"). Scaled by the warm-up,
            the schedule and a finetuning phase change like ``lr``.
        warmup_steps: raise the learning rate linearly from ``lr / warmup_steps`` to ``lr``
            over the first optimiser steps (0: none, the paper). Adam's first steps move
            every weight by about ``lr`` whatever its gradient, which throws a deep, wide
            U-Net far off before its moment estimates mean anything
            (``docs/research_notes.md``, "Training that learns").
        batch_size: samples per micro-batch (paper 1).
        accumulate: micro-batches per optimiser step (paper 8).
        max_epochs: epoch limit (paper 1e5, stopped by hand / early stopping).
        plateau_factor, plateau_patience: ReduceLROnPlateau on the validation loss (paper 0.1, 10).
        early_stopping_patience: epochs without validation improvement before stopping
            (None: never). Larger than ``plateau_patience`` so the lower rate gets a chance.
        patience_after_steps: validations before this many optimiser steps neither drop the
            rate nor count towards early stopping (``best.pt`` is still kept): for training
            that sits on a plateau at its start before it learns, where the paper's patience
            would cut the rate, or stop the run, before it has begun (0: the paper).
        min_delta: improvement smaller than this does not count.
        max_nonfinite: stop after this many optimiser steps in a row with a non-finite
            loss or gradient (each such step is skipped).
        grad_clip: clip the gradient norm to this value (None: no clipping).
        seed: sample order and augmentation seed.
        num_workers: DataLoader worker processes.
        bf16: bf16 autocast of the forward pass on CUDA (ignored on CPU).
        cudnn_benchmark: let cuDNN time its algorithms once per layer shape (training
            shapes never change); cuDNN's default choices can make bf16 training slower
            than fp32 (``benchmarks/gpu_check.py`` measures both). Bit-exact resume is
            promised on the CPU only.
        transfer: a :class:`ddmr_core.training.transfer.finetune` to start from a pretrained model.
        progress: show a tqdm progress bar (rank 0).
        log_images: write image slices to TensorBoard at each validation.
        find_unused_parameters: passed to DistributedDataParallel.
        memory_check: refuse to start when the estimated memory of a training step
            (:func:`ddmr_core.data.guards.training_bytes`) exceeds what is available
            (``--no-memory-check`` turns it off).
    """

    def __init__(
        self,
        run_dir: str | Path,
        model: nn.Module | None = None,
        dataset=None,
        augmentation: nn.Module | None = None,
        device: str | None = None,
        max_steps: int | None = None,
        resume: bool = False,
        lr: float = 1e-3,
        weighting_lr: float | None = None,
        warmup_steps: int = 0,
        lr_schedule: str = "plateau",
        max_time: float | None = None,
        batch_size: int = 1,
        accumulate: int = 8,
        max_epochs: int = 100_000,
        plateau_factor: float = 0.1,
        plateau_patience: int = 10,
        early_stopping_patience: int | None = 30,
        patience_after_steps: int = 0,
        min_delta: float = 0.0,
        max_nonfinite: int = 10,
        grad_clip: float | None = None,
        seed: int = 0,
        num_workers: int = 0,
        bf16: bool = False,
        cudnn_benchmark: bool = True,
        transfer: _transfer.finetune | None = None,
        progress: bool = True,
        log_images: bool = True,
        find_unused_parameters: bool = False,
        memory_check: bool = True,
    ):
        _check_options(batch_size=batch_size, accumulate=accumulate, max_epochs=max_epochs, max_nonfinite=max_nonfinite,
                       lr=lr, weighting_lr=weighting_lr, max_steps=max_steps, max_time=max_time,
                       warmup_steps=warmup_steps, patience_after_steps=patience_after_steps, lr_schedule=lr_schedule)
        self.run_dir = Path(run_dir)
        self.resume, self.max_steps, self.max_time = resume, max_steps, max_time
        self.warmup_steps = int(warmup_steps)
        self.lr_schedule = lr_schedule
        self.batch_size, self.accumulate, self.max_epochs = int(batch_size), int(accumulate), int(max_epochs)
        self.plateau_factor, self.plateau_patience = plateau_factor, plateau_patience
        self.early_stopping_patience, self.min_delta = early_stopping_patience, min_delta
        self.patience_after_steps = int(patience_after_steps)
        self.max_nonfinite, self.grad_clip, self.seed = int(max_nonfinite), grad_clip, int(seed)
        self.num_workers, self.progress, self.log_images = num_workers, progress, log_images
        self.transfer = transfer
        self.base_lr = transfer.lr if transfer is not None else lr
        self.weighting_lr = None if weighting_lr is None else float(weighting_lr)
        self.find_unused_parameters = find_unused_parameters
        self.memory_check = bool(memory_check)

        self.world, self.rank, self.local_rank = _dist.ranks()  # torchrun exports them
        self.device = self._resolve_device(device)
        self.bf16 = bool(bf16) and self.device.type == "cuda"
        self.cudnn_benchmark = bool(cudnn_benchmark)
        self.owns_process_group = False

        self.model, self.dataset, self.augmentation = model, dataset, augmentation
        self.counters = {"epoch": 0, "batch_in_epoch": 0, "global_step": 0, "optimizer_steps": 0,
                         "best_val": math.inf, "bad_epochs": 0, "nonfinite_total": 0,
                         "nonfinite_in_a_row": 0, "phase": 0, "phase_epochs": 0, "train_seconds": 0.0}
        #: one dict per validation: epoch, step, seconds (training wall time), metrics
        self.history: list[dict] = []
        #: called with each ``history`` entry as it is made (benchmarks print curves)
        self.on_validation = None
        self._clock = None
        #: sample indices this rank trained on (for checks and tests)
        self.seen_indices: list[int] = []
        #: rank 0's :class:`~ddmr_core.training.log.TrainingLog` while :meth:`fit` runs
        self.log: TrainingLog | None = None
        self.setup_done = False

    # ----------------------------------------------------------------- set-up
    def _resolve_device(self, device) -> torch.device:
        """:func:`ddmr_core.devices.resolve_device`; a CUDA device gets an index (this
        process's ``LOCAL_RANK`` under torchrun)."""
        dev = resolve_device(device)
        if dev.type == "cuda":
            return torch.device("cuda", self.local_rank if self.world > 1 else (dev.index or 0))
        if self.world > 1 and dev.type != "cpu":
            raise DdmrError(f"--device {str(device)!r}: distributed training runs on cpu or cuda")
        return dev

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def setup(self) -> None:
        """Build everything and check every input before anything is written to ``run_dir``."""
        from ..data.datasets import build_augmentation, build_dataset, input_size
        from ..model.build import build_model, check_model_memory

        if self.distributed:
            self.owns_process_group = _dist.start(self.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            torch.backends.cudnn.benchmark = self.cudnn_benchmark
        torch.manual_seed(self.seed)  # same initial weights everywhere (DDP also broadcasts)

        run_dir = self.run_dir
        check_run_folder(run_dir, self.resume)
        if self.model is None:
            if self.memory_check:  # before the weights are allocated
                check_model_memory(self.device)
            self.model = build_model()
        self.dataset = self.dataset if self.dataset is not None else build_dataset()
        self.augmentation = self.augmentation if self.augmentation is not None else build_augmentation()
        self.input_size = input_size()  # None: the dataset's own grid, below
        self.labels = tuple(getattr(self.dataset, "labels", ()) or ())
        if hasattr(self.model, "check_segmentations"):  # before anything is written
            self.model.check_segmentations(self.labels)
        if not len(getattr(self.model, "losses", (None,))) and getattr(self.model, "supervision", None) is None:
            raise ConfigError("the model has no loss to train on: bind ddmr.build_model.losses (e.g. include a "
                              "mixins/losses/ config) or ddmr.build_model.supervision")
        self.model.to(self.device).train()
        self.augmentation.to(self.device)

        self.train_set = self.dataset.split("train")
        self.val_set = self.dataset.split("validation")
        for name, split in (("training", self.train_set), ("validation", self.val_set)):
            if len(split) == 0:
                raise DataError(f"the dataset's {name} split is empty; the trainer needs both "
                                "(validation drives the schedule, early stopping and best.pt)")
        if self.input_size is None:  # no SIZE in the config: the dataset's own grid
            self.input_size = tuple(int(n) for n in self.train_set[0]["image"].shape[1:])
        need = training_bytes(self.input_size, self.batch_size, sum(p.numel() for p in self.model.parameters()))
        check_memory(need, f"a training step on a {tuple(self.input_size)} grid with batches of {self.batch_size}",
                     skip=not self.memory_check, device=self.device)
        self.sampler = DistributedSampler(self.train_set, num_replicas=self.world, rank=self.rank,
                                          shuffle=True, seed=self.seed, drop_last=False)
        self.optimizer = torch.optim.Adam(self._param_groups(), lr=self.base_lr)
        self.scheduler = self.new_scheduler()

        if self.resume:
            self._load_resume(run_dir / "last.pt")
        elif self.transfer is not None:
            _transfer.load_pretrained(self.model, self.transfer.checkpoint, self.transfer.load_weighting)
        # the one schedule of the run: the model's (its supervision ramp), with the rate's
        # warm-up and cosine decay over the budget; the loop advances it
        self.schedule = self.model.schedule if hasattr(self.model, "schedule") else Schedule()
        self.schedule.step = self.counters["optimizer_steps"]
        self.schedule.warmup_steps, self.schedule.cosine = self.warmup_steps, self.lr_schedule == "cosine"
        self.schedule.max_steps, self.schedule.max_time = self.max_steps, self.max_time
        _transfer.set_phase(self.model, self.transfer, self.counters["phase"])
        self.wrap()

        # every input is valid: only now touch the run folder
        if self.is_main:
            write_config_copy(run_dir)
            self.log = TrainingLog(run_dir)
        self.setup_done = True

    def _param_groups(self) -> list[dict]:
        """The optimiser's groups: every parameter at ``lr``, or, with ``weighting_lr``,
        the loss weighting's parameters in a second group at that rate."""
        weighting = getattr(self.model, "weighting", None)
        own = [] if weighting is None or self.weighting_lr is None else list(weighting.parameters())
        if not own:
            return [{"params": list(self.model.parameters())}]
        ids = {id(p) for p in own}
        rest = [p for p in self.model.parameters() if id(p) not in ids]
        return [{"params": rest}, {"params": own, "lr": self.weighting_lr}]

    def base_rates(self) -> list[float]:
        """Each optimiser group's rate before warm-up and schedule."""
        return [self.base_lr] + [self.weighting_lr] * (len(self.optimizer.param_groups) - 1)

    def new_scheduler(self):
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="min", factor=self.plateau_factor, patience=self.plateau_patience)

    def wrap(self) -> None:
        self.loss_module = _dist.wrap(self.model, self.world, self.device, self.find_unused_parameters)

    def _load_resume(self, path: Path) -> None:
        ckpt = load_training_state(path, self.model, self.optimizer, self.scheduler)
        self.counters.update(ckpt["counters"])
        self.history = [dict(h) for h in ckpt.get("history", [])]

    def fit(self) -> dict:
        """Train until ``max_epochs``, early stopping or a budget; returns a summary
        (:meth:`ddmr_core.training.loop.TrainingLoop.fit`)."""
        return TrainingLoop(self).fit()

    # ------------------------------------------------------------ wall clock
    def start_clock(self) -> None:
        """Start counting this session's training time on top of the run's so far."""
        self._clock = (time.perf_counter(), self.counters["train_seconds"])

    def elapsed(self) -> float:
        """Seconds of training (and validation) in this run so far, across resumes."""
        if self._clock is None:
            return float(self.counters["train_seconds"])
        start, before = self._clock
        return before + time.perf_counter() - start

    # ------------------------------------------------------------- checkpoints
    def state(self) -> dict[str, Any]:
        """The checkpoint dict of the run now (:func:`ddmr_core.model.checkpoint.training_state`)."""
        return training_state(self.model, self.optimizer, self.scheduler,
                              {**self.counters, "train_seconds": self.elapsed()}, self.history,
                              self.input_size, self.labels, getattr(self.dataset, "preprocess", None))

    def save(self, name: str) -> None:
        if self.is_main:
            save_checkpoint(self.run_dir / name, self.state())

    # -------------------------------------------------------------- validation
    @torch.no_grad()
    def validate(self) -> dict:
        """Mean validation loss, terms and metrics over this rank's share of the validation
        pairs, all-reduced (:func:`ddmr_core.training.validation.validate`)."""
        self.model.eval()
        mine = list(range(self.rank, len(self.val_set), self.world))
        batches = (self.prepare(sample, train=False) for sample in self.loader(self.val_set, mine))
        metrics, first = validate(self.model, batches, self.autocast, self.world, self.device)
        if self.log is not None:
            self.log.validation(self.counters["global_step"], metrics, first if self.log_images else None)
        self.model.train()
        return metrics

    # ------------------------------------------------------------------ data
    def prepare(self, sample: dict, train: bool) -> dict:
        """A loader batch -> the augmented pair dict on the device (no gradients)."""
        dev = self.device
        image = sample["image"].to(dev, non_blocking=True).float()
        seg = sample.get("seg")
        want_segs = seg is not None and self.labels and (not train or self.model.needs_segmentations)
        # no resizing here: the augmentation's ``resize`` step brings images to the network
        # grid and keeps spacing and affine consistent with it
        segs = one_hot(seg.to(dev), self.labels) if want_segs else None
        index = torch.as_tensor(sample["index"], dtype=torch.long)
        if train:  # a new draw every epoch; validation pairs stay the same
            index = index + (self.counters["epoch"] + 1) * INDEX_STRIDE
        with torch.no_grad():
            return self.augmentation(
                image, segs=segs, spacing=sample["spacing"].to(dev).float(),
                affine=sample["affine"].to(dev), index=index.to(dev))

    def loader(self, dataset, indices) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, sampler=_ListSampler(indices),
                          num_workers=self.num_workers, pin_memory=self.device.type == "cuda")

    def autocast(self):
        if self.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()


def train(config: str | Path | None, bindings=(), run_dir: str | Path = "run", max_steps=None,
          device=None, resume=False, registry=None, max_time=None, memory_check: bool = True) -> Trainer:
    """Parse a config and bindings, then build and run :class:`Trainer` (what ``ddmr train`` does)."""
    from ..config.parsing import parse_config

    parse_config([config] if config else [], bindings, registry=registry, check_macros=True)
    trainer = Trainer(run_dir=run_dir, max_steps=max_steps, max_time=max_time, device=device, resume=resume,
                      memory_check=memory_check)
    trainer.fit()
    return trainer
