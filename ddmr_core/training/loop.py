"""The optimisation loop of a training run: epochs of accumulated micro-batches, optimiser
steps (the schedule's warm-up and cosine factor on top of the scheduler's rate, non-finite
steps skipped), validation, the end-of-epoch decisions (plateau schedule,
``best.pt``/``last.pt``, early stopping, transfer phases) and the step and wall-clock budgets,
and Ctrl-C or SIGTERM (``last.pt`` saved at the last completed optimiser step, resumable).

:class:`TrainingLoop` takes the run's state explicitly: the
:class:`~ddmr_core.training.trainer.Trainer` it is given holds the configuration, what its
set-up built (``model``, ``loss_module``, ``optimizer``, ``scheduler``, ``sampler``, the
splits, the :class:`~ddmr_core.model.schedule.Schedule`), the ``counters``, ``history`` and
``log``, and turns samples into pairs (``prepare``); the loop holds only what a loop needs
between steps (the deferred signal).
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
from collections import defaultdict

import torch

from . import distributed as _dist
from . import transfer as _transfer
from ..errors import DdmrError
from .log import epoch_line, progress_bar


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
    """Epochs, optimiser steps, validation and stopping of ``run`` (see the module docstring)."""

    def __init__(self, run):
        #: the :class:`~ddmr_core.training.trainer.Trainer` whose state this loop advances
        self.run = run

    def _weights_finite(self) -> bool:
        """Every floating-point parameter and buffer of the model is finite."""
        run = self.run
        return all(bool(torch.isfinite(t).all()) for t in run.model.state_dict().values()
                   if t.is_floating_point())

    def fit(self) -> dict:
        """Train until ``max_epochs``, early stopping or ``max_steps``; returns a summary."""
        run = self.run
        if not run.setup_done:
            run.setup()
        reason = "max_epochs"
        c = run.counters
        run.start_clock()
        if run.early_stopping_patience is not None and c["bad_epochs"] >= run.early_stopping_patience:
            reason = "early_stopping"  # a resumed run that had already stopped
        try:
            with self._deferred_signals():
                while reason == "max_epochs" and c["epoch"] < run.max_epochs:
                    if not self._train_epoch():
                        reason = self._budget_spent() or "max_steps"
                        break
                    metrics = run.validate()
                    with self._critical():
                        stop = self._end_epoch(metrics)
                    if stop:
                        reason = "early_stopping"
                        break
            _dist.barrier(run.owns_process_group)  # rank 0's last checkpoint is written before anyone leaves
        except (KeyboardInterrupt, SystemExit):  # Ctrl-C or SIGTERM: keep the work done so far
            self._save_interrupted()
            raise
        finally:
            if run.log is not None:
                run.log.close()
                run.log = None
            _dist.finish(run.owns_process_group)
            run.owns_process_group = False
        return {"stopped": reason, **run.counters}

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
        run = self.run
        if not (run.setup_done and run.is_main) or not self._weights_finite():
            return
        run.save("last.pt")
        print(f"ddmr train: stopped at optimiser step {run.counters['optimizer_steps']}; "
              f"{str(run.run_dir / 'last.pt')!r} is saved, continue with --resume", file=sys.stderr, flush=True)

    def _budget_spent(self) -> str | None:
        """``"max_steps"`` or ``"max_time"`` when that budget is used up, else None."""
        run = self.run
        if run.max_steps is not None and run.counters["global_step"] >= run.max_steps:
            return "max_steps"
        # every rank must stop at the same step
        if run.max_time is not None and _dist.any_rank(run.elapsed() >= run.max_time, run.world, run.device):
            return "max_time"
        return None

    def _steps_left(self) -> bool:
        return self._budget_spent() is None

    def _train_epoch(self) -> bool:
        """One epoch from the saved position; False when ``max_steps`` stopped it."""
        run = self.run
        c = run.counters
        if not self._steps_left():
            return False
        run.sampler.set_epoch(c["epoch"])
        order = list(iter(run.sampler))
        n_micro = math.ceil(len(order) / run.batch_size)
        start = c["batch_in_epoch"]
        loader = run.loader(run.train_set, order[start * run.batch_size:])
        bar = progress_bar(n_micro, start, c["epoch"] + 1) if run.progress and run.is_main else None
        run.model.train()
        group_losses, group_terms, nonfinite = [], defaultdict(list), torch.zeros((), device=run.device)
        try:
            for i, sample in enumerate(loader, start=start):
                group_start = (i // run.accumulate) * run.accumulate
                group_len = min(run.accumulate, n_micro - group_start)
                last = i == group_start + group_len - 1
                run.seen_indices.extend(int(v) for v in torch.as_tensor(sample["index"]).view(-1))
                batch = run.prepare(sample, train=True)
                sync = contextlib.nullcontext()
                if run.distributed and not last:
                    sync = run.loss_module.no_sync()
                with sync:
                    with run.autocast():
                        total, terms, _ = run.loss_module(batch)
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
                        bar.set_postfix(loss=f"{loss:.4g}", lr=f"{run.optimizer.param_groups[0]['lr']:.1e}")
                    group_losses, group_terms = [], defaultdict(list)
                    nonfinite = torch.zeros((), device=run.device)
                    if not self._steps_left() and c["batch_in_epoch"] < n_micro:
                        if self._weights_finite():  # a blown-up state never replaces last.pt
                            run.save("last.pt")  # mid-epoch position, resumable
                        return False
        finally:
            if bar is not None:
                bar.close()
        return True

    def _params(self):
        run = self.run
        return [p for p in run.model.parameters() if p.requires_grad and p.grad is not None]

    def _optimizer_step(self, losses, terms, nonfinite) -> float | None:
        """Step on the accumulated gradients unless the loss or gradient is non-finite."""
        run = self.run
        c = run.counters
        params = self._params()
        grads = [p.grad for p in params]
        if run.grad_clip is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, run.grad_clip)
        elif grads:
            grad_norm = torch.nn.utils.get_total_norm(grads)
        else:
            grad_norm = torch.zeros((), device=run.device)
        # every rank must take the same decision
        bad = _dist.any_rank(nonfinite + (~torch.isfinite(grad_norm)).float(), run.world, run.device)
        step = c["global_step"]
        c["global_step"] += 1
        if bad:
            run.optimizer.zero_grad(set_to_none=True)
            c["nonfinite_total"] += 1
            c["nonfinite_in_a_row"] += 1
            if run.log is not None:
                run.log.nonfinite(step, c["nonfinite_total"])
            if c["nonfinite_in_a_row"] >= run.max_nonfinite:
                best_pt = run.run_dir / "best.pt"
                kept = (f"the last good checkpoint {str(best_pt)!r} is left as it was"
                        if best_pt.exists() else "no good checkpoint had been written yet")
                raise TrainingError(
                    f"training stopped: the loss or its gradient was non-finite in "
                    f"{c['nonfinite_in_a_row']} optimiser steps in a row (epoch {c['epoch'] + 1}, "
                    f"step {step + 1}; {c['nonfinite_total']} skipped in all); {kept}. Try a lower "
                    "learning rate (ddmr.Trainer.lr) or ddmr.Trainer.grad_clip, or check the data")
            return None
        self._step_with_warmup()
        run.optimizer.zero_grad(set_to_none=True)
        c["nonfinite_in_a_row"] = 0
        c["optimizer_steps"] += 1
        run.schedule.advance()
        loss = torch.stack(losses).mean().item()
        if run.log is not None:
            run.log.step(step, loss, terms, run.model.current_weights(), run.optimizer.param_groups[0]["lr"],
                          grad_norm.item())
        return loss

    def _step_with_warmup(self) -> None:
        """``optimizer.step()`` with the rate times the schedule's factor (warm-up, cosine:
        :meth:`~ddmr_core.model.schedule.Schedule.lr_factor`). The scheduler's rate stays in
        the param groups; the factor applies to this step only."""
        run = self.run
        factor = run.schedule.lr_factor(run.counters["global_step"], run.elapsed())
        if factor == 1.0:
            run.optimizer.step()
            return
        rates = [g["lr"] for g in run.optimizer.param_groups]
        for g in run.optimizer.param_groups:
            g["lr"] = g["lr"] * factor
        try:
            run.optimizer.step()
        finally:
            for g, lr in zip(run.optimizer.param_groups, rates):
                g["lr"] = lr

    def _end_epoch(self, metrics: dict) -> bool:
        """Schedule, checkpoint, early stopping, two-step phases; True to stop."""
        run = self.run
        c = run.counters
        val = metrics["loss"]
        counting = c["optimizer_steps"] >= run.patience_after_steps  # the plateau's patience runs
        if counting:
            run.scheduler.step(val)
        c["epoch"] += 1
        c["batch_in_epoch"] = 0
        c["phase_epochs"] += 1
        # a checkpoint is "good" only with finite weights and a finite validation loss
        healthy = math.isfinite(val) and self._weights_finite()
        improved = healthy and val < c["best_val"] - run.min_delta
        if improved:
            c["best_val"], c["bad_epochs"] = val, 0
        elif counting:
            c["bad_epochs"] += 1
        patience_out = run.early_stopping_patience is not None and c["bad_epochs"] >= run.early_stopping_patience
        stop = patience_out
        if _transfer.next_phase(run.transfer, c, patience_out):
            # second step: the whole model, from the base rate, with fresh patience
            for g, lr in zip(run.optimizer.param_groups, run.base_rates()):
                g["lr"] = lr
            run.scheduler = run.new_scheduler()
            _transfer.set_phase(run.model, run.transfer, 1)
            run.wrap()
            stop = False
        entry = {"epoch": c["epoch"], "step": c["optimizer_steps"], "seconds": round(run.elapsed(), 3),
                 **{k: float(v) for k, v in metrics.items()}}
        run.history.append(entry)
        if run.on_validation is not None and run.is_main:
            run.on_validation(entry)
        if improved:
            run.save("best.pt")
        if healthy:  # a blown-up run keeps the last.pt from before the blow-up
            run.save("last.pt")
        if run.log is not None:
            run.log.epoch(c["epoch"], c["global_step"])
        if run.is_main and run.progress:
            print(epoch_line(c["epoch"], metrics, improved), flush=True)
        return stop
