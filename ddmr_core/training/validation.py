"""What the trainer measures on its validation pairs: the loss and its terms, Dice,
the field's error and folding, averaged over every pair of every rank.

The validation pairs are the same every epoch (their augmentation is seeded by the sample
index alone), so the values of two epochs compare; the loss drives the schedule, early
stopping and ``best.pt`` (:class:`~ddmr_core.training.trainer.Trainer`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Callable, Iterable

import torch

from .distributed import sum_over_ranks
from ..spatial.similarity import dice
from ..spatial.fields import jacobian_determinant, warp


def dice_score(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean Dice (:func:`ddmr_core.spatial.similarity.dice`) over samples and labels of
    thresholded one-hot maps ``(B, L, ...)``; labels absent from both are left out.
    Returns a scalar (NaN when no label is present)."""
    return torch.nanmean(dice(pred > 0.5, target > 0.5, dims=range(2, pred.dim())))


def validation_metrics(batch: dict, out: dict) -> dict:
    """What validation measures on a batch besides the loss: ``dice`` of the warped
    one-hot segmentations (when the pair has them), ``field_error`` (mean end-point error
    against ``disp_true``, voxels; when known) and ``negative_jacobian`` (fraction of
    folded voxels). Scalar tensors."""
    disp = out["disp"].float()
    vals = {}
    if batch.get("fixed_segs") is not None:
        warped_segs = out.get("warped_segs")
        if warped_segs is None:
            warped_segs = warp(batch["moving_segs"], disp, mode="linear", padding="zeros")
        vals["dice"] = dice_score(warped_segs, batch["fixed_segs"])
    if batch.get("disp_true") is not None:
        vals["field_error"] = (disp - batch["disp_true"]).norm(dim=1).mean()
    vals["negative_jacobian"] = (jacobian_determinant(disp) <= 0).float().mean()
    return vals


@torch.no_grad()
def validate(model, batches: Iterable[dict], autocast: Callable, world: int = 1, device=None) -> tuple[dict, tuple]:
    """Run ``model.compute_loss`` on ``batches`` (this rank's share, augmented pair dicts)
    and average, per pair, the loss (``"loss"``), its terms (``"terms/<name>"``) and
    :func:`validation_metrics`, over every rank (``world > 1``). A metric is averaged over
    the pairs where it is finite (NaN where none is); a loss that is not finite is
    ``inf``. ``autocast()``: the forward pass's context.

    Returns ``(metrics, (batch, out) of this rank's first pair or None)``."""
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, float] = defaultdict(float)
    first = None
    for batch in batches:
        with autocast():
            total, terms, out = model.compute_loss(batch)
        n = batch["fixed"].shape[0]
        vals = {"loss": total.float(), **{f"terms/{k}": v.float() for k, v in terms.items()},
                **validation_metrics(batch, out)}
        for k, v in vals.items():
            v = float(v)
            if math.isfinite(v) or k == "loss":
                sums[k] += v * n
                counts[k] += n
        if first is None:
            first = (batch, out)
    counts.setdefault("loss", 0.0)
    sums, counts = sum_over_ranks(sums, counts, world, device)
    metrics = {k: (sums[k] / counts[k] if counts[k] else math.nan) for k in sorted(counts)}
    if not math.isfinite(metrics["loss"]):
        metrics["loss"] = math.inf
    return metrics, first
