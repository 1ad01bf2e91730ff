"""Training on several processes (``torchrun``): ranks, the process group, the
DistributedDataParallel wrapper and the few all-reduces the trainer needs.

With one process (``WORLD_SIZE`` unset or 1) nothing here talks to another process:
:func:`wrap` returns the plain loss module and the reductions return their input.
Rank 0 writes checkpoints and logs (:class:`~ddmr_core.training.trainer.Trainer`).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn


def ranks() -> tuple[int, int, int]:
    """``(world size, rank, local rank)`` as torchrun exports them (``1, 0, 0`` alone)."""
    return (int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0")),
            int(os.environ.get("LOCAL_RANK", "0")))


def start(device: torch.device) -> bool:
    """Join the process group (NCCL on CUDA, gloo on the CPU) unless already in one;
    True when this call created it (then :func:`finish` ends it)."""
    if dist.is_initialized():
        return False
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return True


def finish(owned: bool) -> None:
    """Leave the process group :func:`start` created."""
    if owned and dist.is_initialized():
        dist.destroy_process_group()


class LossForward(nn.Module):
    """``forward(batch) -> (total, terms, out)``: lets DDP see ``compute_loss`` as a forward."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch):
        return self.model.compute_loss(batch)


def wrap(model: nn.Module, world: int, device: torch.device, find_unused_parameters: bool = False) -> nn.Module:
    """The module a training step calls: :class:`LossForward` of ``model``, inside
    DistributedDataParallel when ``world > 1`` (gradients all-reduced on backward; use
    its ``no_sync()`` on the micro-batches before the last of a group)."""
    module = LossForward(model)
    if world <= 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=find_unused_parameters)


def any_rank(flag, world: int, device: torch.device) -> bool:
    """Whether ``flag`` (a bool or a tensor, > 0 meaning yes) holds on any rank, so that
    every rank takes the same decision (skip a step, stop)."""
    t = torch.as_tensor(flag, dtype=torch.float32, device=device).reshape(())
    if world > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def sum_over_ranks(sums: dict, counts: dict, world: int, device: torch.device) -> tuple[dict, dict]:
    """``(sums, counts)`` (``{key: float}``) summed over the ranks, over the union of their
    keys (a rank with no validation pair has fewer)."""
    keys = sorted(set(sums) | set(counts))
    if world <= 1:
        return ({k: sums.get(k, 0.0) for k in keys}, {k: counts.get(k, 0.0) for k in keys})
    gathered = [None] * world
    dist.all_gather_object(gathered, keys)
    keys = sorted(set().union(*gathered))
    t = torch.tensor([[sums.get(k, 0.0), counts.get(k, 0.0)] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: t[i, 0].item() for i, k in enumerate(keys)}, {k: t[i, 1].item() for i, k in enumerate(keys)}


def barrier(owned: bool) -> None:
    """Wait for every rank (in the process group :func:`start` created), e.g. until rank
    0's last checkpoint is written."""
    if owned and dist.is_initialized():
        dist.barrier()
