"""The one training loop every design uses (paper section 2.4), set entirely from gin.

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
DistributedDataParallel (gloo on CPU, NCCL on CUDA); gradient all-reduce runs only on
the last micro-batch of each accumulation group (``no_sync`` on the others). Rank 0
writes checkpoints and logs.

Run folder: ``config.gin`` (the operative gin config), ``last.pt``, ``best.pt`` (see
:mod:`ddmr_core.checkpoint`), TensorBoard events under ``logs/``.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

import gin
import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from .checkpoint import load_checkpoint, save_checkpoint
from .config import config_text
from .devices import resolve_device
from .errors import CheckpointError, ConfigError, DataError, DdmrError
from .io import check_output_folder, write_text_atomic
from .similarity import dice
from .spatial import jacobian_determinant, one_hot, warp
from . import transfer as _transfer

#: Offset between the augmentation seeds of two training epochs (larger than any dataset).
INDEX_STRIDE = 1_000_003


class TrainingError(DdmrError):
    """Training cannot go on (e.g. the loss stayed non-finite); the last good checkpoint is kept."""


class _LossForward(nn.Module):
    """``forward(batch) -> (total, terms, out)``: lets DDP see ``compute_loss`` as a forward."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch):
        return self.model.compute_loss(batch)


class _ListSampler(Sampler):
    """Yields a fixed list of indices (one epoch's order, possibly resumed mid-way)."""

    def __init__(self, indices: Iterable[int]):
        self.indices = list(indices)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def _plain(obj):
    """Tensors, numbers, strings, lists and dicts only (``weights_only`` loading)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _rng_state() -> dict:
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]][: torch.cuda.device_count()])


def dice_score(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean Dice (:func:`ddmr_core.similarity.dice`) over samples and labels of
    thresholded one-hot maps ``(B, L, ...)``; labels absent from both are left out.
    Returns a scalar (NaN when no label is present)."""
    return torch.nanmean(dice(pred > 0.5, target > 0.5, dims=range(2, pred.dim())))


@gin.configurable(module="ddmr")
class Trainer:
    """Gradient-accumulating trainer. ``run_dir``, ``device``, ``max_steps`` and ``resume``
    come from the command line; everything else from gin (``ddmr.Trainer.<param>``).

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
        warmup_steps: raise the learning rate linearly from ``lr / warmup_steps`` to ``lr``
            over the first optimiser steps (0: none, the paper). Adam's first steps move
            every weight by about ``lr`` whatever its gradient, which throws a deep, wide
            U-Net far off before its moment estimates mean anything
            (``docs/ARCHITECTURE.md``, "Training that learns").
        batch_size: samples per micro-batch (paper 1).
        accumulate: micro-batches per optimiser step (paper 8).
        max_epochs: epoch limit (paper 1e5, stopped by hand / early stopping).
        plateau_factor, plateau_patience: ReduceLROnPlateau on the validation loss (paper 0.1, 10).
        early_stopping_patience: epochs without validation improvement before stopping
            (None: never). Larger than ``plateau_patience`` so the lower rate gets a chance.
        min_delta: improvement smaller than this does not count.
        max_nonfinite: stop after this many optimiser steps in a row with a non-finite
            loss or gradient (each such step is skipped).
        grad_clip: clip the gradient norm to this value (None: no clipping).
        seed: sample order and augmentation seed.
        num_workers: DataLoader worker processes.
        bf16: bf16 autocast of the forward pass on CUDA (ignored on CPU).
        cudnn_benchmark: let cuDNN time its algorithms once per layer shape (training
            shapes never change). Without it, bf16 training of the paper network ran at
            0.21x the fp32 speed on an H200 (cuDNN's default choice for one layer's
            weight gradient took 83 % of the step); with it, 1.15x
            (``benchmarks/gpu_check.py``). Bit-exact resume is promised on the CPU only.
        transfer: a :class:`ddmr_core.transfer.finetune` to start from a pretrained model.
        progress: show a tqdm progress bar (rank 0).
        log_images: write image slices to TensorBoard at each validation.
        find_unused_parameters: passed to DistributedDataParallel.
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
        warmup_steps: int = 0,
        lr_schedule: str = "plateau",
        max_time: float | None = None,
        batch_size: int = 1,
        accumulate: int = 8,
        max_epochs: int = 100_000,
        plateau_factor: float = 0.1,
        plateau_patience: int = 10,
        early_stopping_patience: int | None = 30,
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
    ):
        for name, value, low in (("batch_size", batch_size, 1), ("accumulate", accumulate, 1),
                                 ("max_epochs", max_epochs, 0), ("max_nonfinite", max_nonfinite, 1)):
            if int(value) < low:
                raise ConfigError(f"ddmr.Trainer.{name} must be >= {low}, got {value}")
        if lr <= 0:
            raise ConfigError(f"ddmr.Trainer.lr must be positive, got {lr}")
        if max_steps is not None and max_steps < 0:
            raise ConfigError(f"--max-steps must be >= 0, got {max_steps}")
        if max_time is not None and not max_time > 0:
            raise ConfigError(f"--max-time must be positive, got {max_time}")
        if int(warmup_steps) != warmup_steps or warmup_steps < 0:
            raise ConfigError(f"ddmr.Trainer.warmup_steps must be a non-negative integer, got {warmup_steps!r}")
        self.run_dir = Path(run_dir)
        self.resume, self.max_steps, self.max_time = resume, max_steps, max_time
        self.warmup_steps = int(warmup_steps)
        if lr_schedule not in ("plateau", "cosine"):
            raise ConfigError(f"ddmr.Trainer.lr_schedule must be 'plateau' or 'cosine', got {lr_schedule!r}")
        self.lr_schedule = lr_schedule
        self.batch_size, self.accumulate, self.max_epochs = int(batch_size), int(accumulate), int(max_epochs)
        self.plateau_factor, self.plateau_patience = plateau_factor, plateau_patience
        self.early_stopping_patience, self.min_delta = early_stopping_patience, min_delta
        self.max_nonfinite, self.grad_clip, self.seed = int(max_nonfinite), grad_clip, int(seed)
        self.num_workers, self.progress, self.log_images = num_workers, progress, log_images
        self.transfer = transfer
        self.base_lr = transfer.lr if transfer is not None else lr
        self.find_unused_parameters = find_unused_parameters

        # distributed set-up (torchrun exports these)
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = self._resolve_device(device)
        self.bf16 = bool(bf16) and self.device.type == "cuda"
        self.cudnn_benchmark = bool(cudnn_benchmark)
        self._owns_process_group = False

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
        self.writer = None
        self._setup_done = False

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
        from .experiment import build_augmentation, build_dataset, build_model, input_size

        if self.distributed and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
            self._owns_process_group = True
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            torch.backends.cudnn.benchmark = self.cudnn_benchmark
        torch.manual_seed(self.seed)  # same initial weights everywhere (DDP also broadcasts)

        run_dir = self.run_dir
        # a folder, or one that can be created, and writable: checked before any work,
        # written (created) only once every input is valid
        check_output_folder(run_dir, "run directory", replace=False)
        if not self.resume and any((run_dir / n).exists() for n in ("last.pt", "best.pt")):
            raise DdmrError(
                f"run directory {str(run_dir)!r} already holds a training run; pass --resume to "
                "continue it or choose another --out"
            )
        self.model = self.model if self.model is not None else build_model()
        self.dataset = self.dataset if self.dataset is not None else build_dataset()
        self.augmentation = self.augmentation if self.augmentation is not None else build_augmentation()
        self.input_size = input_size()  # None: the dataset's own grid, below
        self.labels = tuple(getattr(self.dataset, "labels", ()) or ())
        if hasattr(self.model, "check_segmentations"):  # before anything is written
            self.model.check_segmentations(self.labels)
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
        self.sampler = DistributedSampler(self.train_set, num_replicas=self.world, rank=self.rank,
                                          shuffle=True, seed=self.seed, drop_last=False)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.base_lr)
        self.scheduler = self._new_scheduler()

        if self.resume:
            self._load_resume(run_dir / "last.pt")
        elif self.transfer is not None:
            _transfer.load_pretrained(self.model, self.transfer.checkpoint, self.transfer.load_weighting)
        _transfer.set_phase(self.model, self.transfer, self.counters["phase"])
        self._wrap()

        # every input is valid: only now touch the run folder
        if self.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(run_dir / "config.gin", config_text())
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(run_dir / "logs"))
        self._setup_done = True

    def _new_scheduler(self):
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="min", factor=self.plateau_factor, patience=self.plateau_patience)

    def _wrap(self) -> None:
        self.loss_module = _LossForward(self.model)
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.loss_module = DistributedDataParallel(
                self.loss_module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.find_unused_parameters)

    def _load_resume(self, path: Path) -> None:
        ckpt = load_checkpoint(path)
        for key in ("optimizer", "scheduler", "counters"):
            if key not in ckpt:
                raise CheckpointError(f"checkpoint {str(path)!r} lacks {key!r}; it cannot be resumed")
        try:
            self.model.load_state_dict(ckpt["model"], strict=True)
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
        except (RuntimeError, ValueError, KeyError) as exc:
            lines = [l.strip() for l in str(exc).splitlines() if l.strip()] or [type(exc).__name__]
            first = " ".join(lines[:2])[:400]
            raise CheckpointError(
                f"checkpoint {str(path)!r} does not match the model the config builds "
                f"(different architecture?): {first}") from exc
        self.counters.update(ckpt["counters"])
        self.history = [dict(h) for h in ckpt.get("history", [])]
        if "rng" in ckpt:
            _set_rng_state(ckpt["rng"])

    # ------------------------------------------------------------- checkpoints
    def state(self) -> dict[str, Any]:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "counters": {**self.counters, "train_seconds": self.elapsed()},
            "history": _plain(self.history),
            "rng": _rng_state(),
            "gin_config": config_text(),
            "input_size": list(self.input_size) if self.input_size else None,
            "labels": list(self.labels),
        }
        preprocess = getattr(self.dataset, "preprocess", None)
        if preprocess is not None:
            state["preprocess"] = _plain(preprocess)
        return state

    def _weights_finite(self) -> bool:
        """Every floating-point parameter and buffer of the model is finite."""
        return all(bool(torch.isfinite(t).all()) for t in self.model.state_dict().values()
                   if t.is_floating_point())

    def save(self, name: str) -> None:
        if self.is_main:
            save_checkpoint(self.run_dir / name, self.state())

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

    def _loader(self, dataset, indices) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, sampler=_ListSampler(indices),
                          num_workers=self.num_workers, pin_memory=self.device.type == "cuda")

    def _autocast(self):
        if self.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ---------------------------------------------------------------- training
    def fit(self) -> dict:
        """Train until ``max_epochs``, early stopping or ``max_steps``; returns a summary."""
        if not self._setup_done:
            self.setup()
        reason = "max_epochs"
        c = self.counters
        self._clock = (time.perf_counter(), c["train_seconds"])
        if self.early_stopping_patience is not None and c["bad_epochs"] >= self.early_stopping_patience:
            reason = "early_stopping"  # a resumed run that had already stopped
        try:
            while reason == "max_epochs" and c["epoch"] < self.max_epochs:
                if not self._train_epoch():
                    reason = self._budget_spent() or "max_steps"
                    break
                metrics = self.validate()
                if self._end_epoch(metrics):
                    reason = "early_stopping"
                    break
            if self._owns_process_group:
                dist.barrier()  # rank 0's last checkpoint is written before anyone leaves
        finally:
            if self.writer is not None:
                self.writer.flush()
                self.writer.close()
                self.writer = None
            if self._owns_process_group and dist.is_initialized():
                dist.destroy_process_group()
                self._owns_process_group = False
        return {"stopped": reason, **self.counters}

    def elapsed(self) -> float:
        """Seconds of training (and validation) in this run so far, across resumes."""
        if self._clock is None:
            return float(self.counters["train_seconds"])
        start, before = self._clock
        return before + time.perf_counter() - start

    def _budget_spent(self) -> str | None:
        """``"max_steps"`` or ``"max_time"`` when that budget is used up, else None."""
        if self.max_steps is not None and self.counters["global_step"] >= self.max_steps:
            return "max_steps"
        if self.max_time is not None:
            spent = self.elapsed() >= self.max_time
            if self.distributed:  # every rank must stop at the same step
                flag = torch.tensor(float(spent), device=self.device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                spent = bool(flag.item())
            if spent:
                return "max_time"
        return None

    def _steps_left(self) -> bool:
        return self._budget_spent() is None

    def _train_epoch(self) -> bool:
        """One epoch from the saved position; False when ``max_steps`` stopped it."""
        c = self.counters
        if not self._steps_left():
            return False
        self.sampler.set_epoch(c["epoch"])
        order = list(iter(self.sampler))
        n_micro = math.ceil(len(order) / self.batch_size)
        start = c["batch_in_epoch"]
        loader = self._loader(self.train_set, order[start * self.batch_size:])
        bar = None
        if self.progress and self.is_main:
            from tqdm.auto import tqdm

            # in a log file (no terminal) every redraw is a new chunk of text: redraw rarely
            interactive = sys.stderr.isatty()
            bar = tqdm(total=n_micro, initial=start, desc=f"epoch {c['epoch'] + 1}", unit="batch",
                       dynamic_ncols=True, leave=False, mininterval=0.1 if interactive else 30.0)
        self.model.train()
        group_losses, group_terms, nonfinite = [], defaultdict(list), torch.zeros((), device=self.device)
        try:
            for i, sample in enumerate(loader, start=start):
                group_start = (i // self.accumulate) * self.accumulate
                group_len = min(self.accumulate, n_micro - group_start)
                last = i == group_start + group_len - 1
                self.seen_indices.extend(int(v) for v in torch.as_tensor(sample["index"]).view(-1))
                batch = self.prepare(sample, train=True)
                sync = contextlib.nullcontext()
                if self.distributed and not last:
                    sync = self.loss_module.no_sync()
                with sync:
                    with self._autocast():
                        total, terms, _ = self.loss_module(batch)
                    total = total.float()
                    (total / group_len).backward()
                nonfinite = nonfinite + (~torch.isfinite(total.detach())).float()
                group_losses.append(total.detach())
                for k, v in terms.items():
                    group_terms[k].append(v.detach().float())
                if bar is not None:
                    bar.update(1)
                if last:
                    loss = self._optimizer_step(group_losses, group_terms, nonfinite)
                    c["batch_in_epoch"] = i + 1
                    if bar is not None and loss is not None:
                        bar.set_postfix(loss=f"{loss:.4g}", lr=f"{self.optimizer.param_groups[0]['lr']:.1e}")
                    group_losses, group_terms = [], defaultdict(list)
                    nonfinite = torch.zeros((), device=self.device)
                    if not self._steps_left() and c["batch_in_epoch"] < n_micro:
                        if self._weights_finite():  # a blown-up state never replaces last.pt
                            self.save("last.pt")  # mid-epoch position, resumable
                        return False
        finally:
            if bar is not None:
                bar.close()
        return True

    def _params(self):
        return [p for p in self.model.parameters() if p.requires_grad and p.grad is not None]

    def _optimizer_step(self, losses, terms, nonfinite) -> float | None:
        """Step on the accumulated gradients unless the loss or gradient is non-finite."""
        c = self.counters
        params = self._params()
        grads = [p.grad for p in params]
        if self.grad_clip is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        elif grads:
            grad_norm = torch.nn.utils.get_total_norm(grads)
        else:
            grad_norm = torch.zeros((), device=self.device)
        bad = nonfinite + (~torch.isfinite(grad_norm)).float()
        if self.distributed:  # every rank must take the same decision
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        step = c["global_step"]
        c["global_step"] += 1
        if bad.item() > 0:
            self.optimizer.zero_grad(set_to_none=True)
            c["nonfinite_total"] += 1
            c["nonfinite_in_a_row"] += 1
            if self.writer is not None:
                self.writer.add_scalar("train/nonfinite_steps", c["nonfinite_total"], step)
            if c["nonfinite_in_a_row"] >= self.max_nonfinite:
                best_pt = self.run_dir / "best.pt"
                kept = (f"the last good checkpoint {str(best_pt)!r} is left as it was"
                        if best_pt.exists() else "no good checkpoint had been written yet")
                raise TrainingError(
                    f"training stopped: the loss or its gradient was non-finite in "
                    f"{c['nonfinite_in_a_row']} optimiser steps in a row (epoch {c['epoch'] + 1}, "
                    f"step {step + 1}; {c['nonfinite_total']} skipped in all); {kept}. Try a lower "
                    "learning rate (ddmr.Trainer.lr) or ddmr.Trainer.grad_clip, or check the data")
            return None
        self._step_with_warmup()
        self.optimizer.zero_grad(set_to_none=True)
        c["nonfinite_in_a_row"] = 0
        c["optimizer_steps"] += 1
        loss = torch.stack(losses).mean().item()
        if self.writer is not None:
            w = self.writer
            w.add_scalar("train/loss", loss, step)
            for k, v in terms.items():
                w.add_scalar(f"train/terms/{k}", torch.stack(v).mean().item(), step)
            for k, v in self.model.current_weights().items():
                w.add_scalar(f"weights/{k}", float(v), step)
            w.add_scalar("train/lr", self.optimizer.param_groups[0]["lr"], step)
            w.add_scalar("train/grad_norm", grad_norm.item(), step)
        return loss

    def lr_factor(self) -> float:
        """The factor on the scheduler's rate for the next step: the linear warm-up, times
        the cosine decay over the budget (``lr_schedule="cosine"``)."""
        k = self.counters["optimizer_steps"]
        factor = (k + 1) / self.warmup_steps if k < self.warmup_steps else 1.0
        if self.lr_schedule == "cosine":
            done = 0.0
            if self.max_steps:
                # the step being taken was counted already: the first step has done = 0
                done = max(done, (self.counters["global_step"] - 1) / self.max_steps)
            if self.max_time:
                done = max(done, self.elapsed() / self.max_time)
            factor *= 0.5 * (1.0 + math.cos(math.pi * min(done, 1.0)))
        return factor

    def _step_with_warmup(self) -> None:
        """``optimizer.step()`` with the rate times :meth:`lr_factor`. The scheduler's
        rate stays in the param groups; the factor applies to this step only."""
        factor = self.lr_factor()
        if factor == 1.0:
            self.optimizer.step()
            return
        rates = [g["lr"] for g in self.optimizer.param_groups]
        for g in self.optimizer.param_groups:
            g["lr"] = g["lr"] * factor
        try:
            self.optimizer.step()
        finally:
            for g, lr in zip(self.optimizer.param_groups, rates):
                g["lr"] = lr

    # -------------------------------------------------------------- validation
    @torch.no_grad()
    def validate(self) -> dict:
        """Mean validation loss, terms and metrics over this rank's share, all-reduced."""
        self.model.eval()
        mine = list(range(self.rank, len(self.val_set), self.world))
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, float] = defaultdict(float)
        first = None
        for sample in self._loader(self.val_set, mine):
            batch = self.prepare(sample, train=False)
            with self._autocast():
                total, terms, out = self.model.compute_loss(batch)
            n = batch["fixed"].shape[0]
            vals = {"loss": total.float(), **{f"terms/{k}": v.float() for k, v in terms.items()}}
            disp = out["disp"].float()
            if batch.get("fixed_segs") is not None:
                warped_segs = out.get("warped_segs")
                if warped_segs is None:
                    warped_segs = warp(batch["moving_segs"], disp, mode="linear", padding="zeros")
                vals["dice"] = dice_score(warped_segs, batch["fixed_segs"])
            if batch.get("disp_true") is not None:
                # mean end-point error against the synthetic field, voxels
                vals["field_error"] = (disp - batch["disp_true"]).norm(dim=1).mean()
            vals["negative_jacobian"] = (jacobian_determinant(disp) <= 0).float().mean()
            for k, v in vals.items():
                v = float(v)
                if math.isfinite(v) or k == "loss":
                    sums[k] += v * n
                    counts[k] += n
            if first is None:
                first = (batch, out)
        keys = sorted(set(sums) | {"loss"})
        if self.distributed:
            # a rank with no validation pair has fewer keys: reduce over the union
            gathered = [None] * self.world
            dist.all_gather_object(gathered, keys)
            keys = sorted(set().union(*gathered))
            t = torch.tensor([[sums[k], counts[k]] for k in keys], dtype=torch.float64, device=self.device)
            dist.all_reduce(t)
            sums = {k: t[i, 0].item() for i, k in enumerate(keys)}
            counts = {k: t[i, 1].item() for i, k in enumerate(keys)}
        metrics = {k: (sums[k] / counts[k] if counts[k] else math.nan) for k in keys}
        if not math.isfinite(metrics["loss"]):
            metrics["loss"] = math.inf
        step = self.counters["global_step"]
        if self.writer is not None:
            for k, v in metrics.items():
                if math.isfinite(v):
                    self.writer.add_scalar(f"validation/{k}", v, step)
            if self.log_images and first is not None:
                self._log_images(*first, step)
        self.model.train()
        return metrics

    def _log_images(self, batch, out, step) -> None:
        """Middle slice (array axis 0) of fixed, moving, warped and field magnitude."""
        def mid(vol):  # (B, C, D, H, W) -> (1, H, W) in [0, 1]
            s = vol[0, :1, vol.shape[2] // 2].float().cpu()
            return s.clamp(0, 1)

        mag = out["disp"][:1].float().norm(dim=1, keepdim=True)
        peak = float(mag.max())
        for name, vol in (("fixed", batch["fixed"]), ("moving", batch["moving"]), ("warped", out["warped"]),
                          ("field_magnitude", mag / peak if peak > 0 else mag)):
            self.writer.add_image(f"validation/{name}", mid(vol), step)
        self.writer.add_scalar("validation/field_magnitude_max_voxels", peak, step)

    def _end_epoch(self, metrics: dict) -> bool:
        """Schedule, checkpoint, early stopping, two-step phases; True to stop."""
        c = self.counters
        val = metrics["loss"]
        self.scheduler.step(val)
        c["epoch"] += 1
        c["batch_in_epoch"] = 0
        c["phase_epochs"] += 1
        # a checkpoint is "good" only with finite weights and a finite validation loss
        healthy = math.isfinite(val) and self._weights_finite()
        improved = healthy and val < c["best_val"] - self.min_delta
        if improved:
            c["best_val"], c["bad_epochs"] = val, 0
        else:
            c["bad_epochs"] += 1
        patience_out = self.early_stopping_patience is not None and c["bad_epochs"] >= self.early_stopping_patience
        stop = patience_out
        t = self.transfer
        if t is not None and t.strategy == "two_step" and c["phase"] == 0 and (
                patience_out or c["phase_epochs"] >= t.decoder_epochs):
            # second step: the whole model, from the base rate, with fresh patience
            c["phase"], c["phase_epochs"], c["bad_epochs"] = 1, 0, 0
            for g in self.optimizer.param_groups:
                g["lr"] = self.base_lr
            self.scheduler = self._new_scheduler()
            _transfer.set_phase(self.model, t, 1)
            self._wrap()
            stop = False
        entry = {"epoch": c["epoch"], "step": c["optimizer_steps"], "seconds": round(self.elapsed(), 3),
                 **{k: float(v) for k, v in metrics.items()}}
        self.history.append(entry)
        if self.on_validation is not None and self.is_main:
            self.on_validation(entry)
        if improved:
            self.save("best.pt")
        if healthy:  # a blown-up run keeps the last.pt from before the blow-up
            self.save("last.pt")
        if self.writer is not None:
            self.writer.add_scalar("train/epoch", c["epoch"], c["global_step"])
            self.writer.flush()
        if self.is_main and self.progress:
            extra = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k != "loss" and not k.startswith("terms/"))
            print(f"epoch {c['epoch']}: validation loss {val:.4g}{' (best)' if improved else ''}"
                  f"{', ' + extra if extra else ''}", flush=True)
        return stop


def train(config: str | Path | None, bindings=(), run_dir: str | Path = "run", max_steps=None,
          device=None, resume=False, registry=None, max_time=None) -> Trainer:
    """Parse a config and bindings, then build and run :class:`Trainer` (what ``ddmr train`` does)."""
    from .config import parse_config

    parse_config([config] if config else [], bindings, registry=registry, check_macros=True)
    trainer = Trainer(run_dir=run_dir, max_steps=max_steps, max_time=max_time, device=device, resume=resume)
    trainer.fit()
    return trainer
