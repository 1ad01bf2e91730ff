"""The optimisation loop of :class:`~ddmr_core.training.trainer.Trainer`: epochs of accumulated
micro-batches, optimiser steps (warm-up and the cosine schedule on top of the
scheduler's rate, non-finite steps skipped), validation, the end-of-epoch decisions
(plateau schedule, ``best.pt``/``last.pt``, early stopping, transfer phases) and the
step and wall-clock budgets, and Ctrl-C or SIGTERM (``last.pt`` saved at the last
completed optimiser step, resumable).

:class:`TrainingLoop` is the trainer's base class; it uses what the trainer's set-up
builds (``Trainer.setup``): ``model``, ``loss_module`` (the model's loss, inside DDP under
torchrun), ``optimizer``, ``scheduler``, ``sampler``, ``train_set``, ``val_set``,
``counters``, ``history``, ``log`` and the configuration attributes, and its methods
``prepare``, ``_loader``, ``_autocast``, ``_new_scheduler``, ``_wrap``, ``save``.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import time
from collections import defaultdict

import torch

from . import distributed as _dist
from . import transfer as _transfer
from ..errors import DdmrError
from .log import epoch_line, progress_bar
from .validation import validate


def _raise_signal(signum, frame, previous) -> None:
    """What the handler in place before training does with the signal: call it (the
    CLI's raise ``KeyboardInterrupt`` or its ``Terminated``), or as Python's defaults would:
    ``KeyboardInterrupt`` for SIGINT, exit status 143 for SIGTERM."""
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_IGN:
        return
    elif signum == signal.SIGINT:
        raise KeyboardInterrupt
    else:
        raise SystemExit(128 + signum)


class TrainingError(DdmrError):
    """Training cannot go on (e.g. the loss stayed non-finite); the last good checkpoint is kept."""


class TrainingLoop:
    """Epochs, optimiser steps, validation and stopping (see the module docstring)."""

    def _weights_finite(self) -> bool:
        """Every floating-point parameter and buffer of the model is finite."""
        return all(bool(torch.isfinite(t).all()) for t in self.model.state_dict().values()
                   if t.is_floating_point())

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
            with self._deferred_signals():
                while reason == "max_epochs" and c["epoch"] < self.max_epochs:
                    if not self._train_epoch():
                        reason = self._budget_spent() or "max_steps"
                        break
                    metrics = self.validate()
                    with self._critical():
                        stop = self._end_epoch(metrics)
                    if stop:
                        reason = "early_stopping"
                        break
            _dist.barrier(self._owns_process_group)  # rank 0's last checkpoint is written before anyone leaves
        except (KeyboardInterrupt, SystemExit):  # Ctrl-C or SIGTERM: keep the work done so far
            self._save_interrupted()
            raise
        finally:
            if self.log is not None:
                self.log.close()
                self.log = None
            _dist.finish(self._owns_process_group)
            self._owns_process_group = False
        return {"stopped": reason, **self.counters}

    # ------------------------------------------------------------ interruption
    # SIGINT and SIGTERM stop training at once, and ``last.pt`` is saved at the last
    # completed optimiser step (resumable with ``--resume``). A signal that arrives while
    # an optimiser step or an epoch's end updates the weights and counters waits until
    # they are consistent (:meth:`_critical`), so the checkpoint never mixes two steps.
    _critical_depth = 0
    _pending_signal = None

    @contextlib.contextmanager
    def _deferred_signals(self):
        """While training (main thread only): SIGINT and SIGTERM raise as before (the
        previous handler's exception: ``KeyboardInterrupt``, the CLI's ``Terminated``)
        except inside :meth:`_critical`, where they are held until it ends."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def handler(signum, frame):
            if self._critical_depth:
                self._pending_signal = (signum, frame, previous[signum])
            else:
                _raise_signal(signum, frame, previous[signum])

        for s in previous:
            signal.signal(s, handler)
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h if h is not None else signal.SIG_DFL)

    @contextlib.contextmanager
    def _critical(self):
        self._critical_depth += 1
        try:
            yield
        finally:
            self._critical_depth -= 1
            if not self._critical_depth and self._pending_signal is not None:
                pending, self._pending_signal = self._pending_signal, None
                _raise_signal(*pending)

    def _save_interrupted(self) -> None:
        """Save ``last.pt`` at the last completed optimiser step (rank 0; not when the
        weights are no longer finite, so a blown-up state never replaces it)."""
        if not (self._setup_done and self.is_main) or not self._weights_finite():
            return
        self.save("last.pt")
        print(f"ddmr train: stopped at optimiser step {self.counters['optimizer_steps']}; "
              f"{str(self.run_dir / 'last.pt')!r} is saved, continue with --resume", file=sys.stderr, flush=True)

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
        # every rank must stop at the same step
        if self.max_time is not None and _dist.any_rank(self.elapsed() >= self.max_time, self.world, self.device):
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
        bar = progress_bar(n_micro, start, c["epoch"] + 1) if self.progress and self.is_main else None
        self.model.train()
        group_losses, group_terms, nonfinite = [], defaultdict(list), torch.zeros((), device=self.device)
        try:
            for i, sample in enumerate(loader, start=start):
                group_start = (i // self.accumulate) * self.accumulate
                group_len = min(self.accumulate, n_micro - group_start)
                last = i == group_start + group_len - 1
                self.seen_indices.extend(int(v) for v in torch.as_tensor(sample["index"]).view(-1))
                batch = self.prepare(sample, train=True)
                self.model.step = c["optimizer_steps"]  # RegistrationModel.step: schedules over the run
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
                    with self._critical():  # weights, optimiser and counters move together
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
        # every rank must take the same decision
        bad = _dist.any_rank(nonfinite + (~torch.isfinite(grad_norm)).float(), self.world, self.device)
        step = c["global_step"]
        c["global_step"] += 1
        if bad:
            self.optimizer.zero_grad(set_to_none=True)
            c["nonfinite_total"] += 1
            c["nonfinite_in_a_row"] += 1
            if self.log is not None:
                self.log.nonfinite(step, c["nonfinite_total"])
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
        if self.log is not None:
            self.log.step(step, loss, terms, self.model.current_weights(), self.optimizer.param_groups[0]["lr"],
                          grad_norm.item())
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
        """Mean validation loss, terms and metrics over this rank's share of the validation
        pairs, all-reduced (:func:`ddmr_core.training.validation.validate`)."""
        self.model.eval()
        mine = list(range(self.rank, len(self.val_set), self.world))
        batches = (self.prepare(sample, train=False) for sample in self._loader(self.val_set, mine))
        metrics, first = validate(self.model, batches, self._autocast, self.world, self.device)
        if self.log is not None:
            self.log.validation(self.counters["global_step"], metrics, first if self.log_images else None)
        self.model.train()
        return metrics

    def _end_epoch(self, metrics: dict) -> bool:
        """Schedule, checkpoint, early stopping, two-step phases; True to stop."""
        c = self.counters
        val = metrics["loss"]
        counting = c["optimizer_steps"] >= self.patience_after_steps  # the plateau's patience runs
        if counting:
            self.scheduler.step(val)
        c["epoch"] += 1
        c["batch_in_epoch"] = 0
        c["phase_epochs"] += 1
        # a checkpoint is "good" only with finite weights and a finite validation loss
        healthy = math.isfinite(val) and self._weights_finite()
        improved = healthy and val < c["best_val"] - self.min_delta
        if improved:
            c["best_val"], c["bad_epochs"] = val, 0
        elif counting:
            c["bad_epochs"] += 1
        patience_out = self.early_stopping_patience is not None and c["bad_epochs"] >= self.early_stopping_patience
        stop = patience_out
        if _transfer.next_phase(self.transfer, c, patience_out):
            # second step: the whole model, from the base rate, with fresh patience
            for g, lr in zip(self.optimizer.param_groups, self.base_rates()):
                g["lr"] = lr
            self.scheduler = self._new_scheduler()
            _transfer.set_phase(self.model, self.transfer, 1)
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
        if self.log is not None:
            self.log.epoch(c["epoch"], c["global_step"])
        if self.is_main and self.progress:
            print(epoch_line(c["epoch"], metrics, improved), flush=True)
        return stop
