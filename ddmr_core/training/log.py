"""What a training run reports, on rank 0: TensorBoard events, the progress bar and one
line per epoch (:class:`~ddmr_core.training.trainer.Trainer` calls these; nothing here changes
the run).

TensorBoard tags (``RUN_DIR/logs``): ``train/loss``, ``train/terms/<term>``,
``weights/<term>``, ``train/lr``, ``train/grad_norm``, ``train/nonfinite_steps``,
``train/epoch`` per optimiser step; ``validation/<metric>`` and the middle slices
``validation/{fixed, moving, warped, field_magnitude}`` per validation. The epoch line
``epoch N: validation loss L[ (best)][, metric value]...`` is parsed by scripts (keep its
form).
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import torch


class TrainingLog:
    """The TensorBoard writer of a run (events under ``run_dir/logs``)."""

    def __init__(self, run_dir: str | Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "logs"))

    def nonfinite(self, step: int, total: int) -> None:
        """An optimiser step skipped for a non-finite loss or gradient (``total`` so far)."""
        self.writer.add_scalar("train/nonfinite_steps", total, step)

    def step(self, step: int, loss: float, terms: dict, weights: dict, lr: float, grad_norm: float) -> None:
        """One optimiser step: mean loss, mean loss terms (lists of scalars), weights."""
        w = self.writer
        w.add_scalar("train/loss", loss, step)
        for k, v in terms.items():
            w.add_scalar(f"train/terms/{k}", torch.stack(v).mean().item(), step)
        for k, v in weights.items():
            w.add_scalar(f"weights/{k}", float(v), step)
        w.add_scalar("train/lr", lr, step)
        w.add_scalar("train/grad_norm", grad_norm, step)

    def validation(self, step: int, metrics: dict, images=None) -> None:
        """The finite validation metrics; ``images``: ``(batch, out)`` of the first pair."""
        for k, v in metrics.items():
            if math.isfinite(v):
                self.writer.add_scalar(f"validation/{k}", v, step)
        if images is not None:
            self._images(*images, step)

    def _images(self, batch, out, step: int) -> None:
        """Middle slice (array axis 0) of fixed, moving, warped and field magnitude."""
        def mid(vol):  # (B, C, D, H, W) -> (1, H, W) in [0, 1]
            return vol[0, :1, vol.shape[2] // 2].float().cpu().clamp(0, 1)

        mag = out["disp"][:1].float().norm(dim=1, keepdim=True)
        peak = float(mag.max())
        for name, vol in (("fixed", batch["fixed"]), ("moving", batch["moving"]), ("warped", out["warped"]),
                          ("field_magnitude", mag / peak if peak > 0 else mag)):
            self.writer.add_image(f"validation/{name}", mid(vol), step)
        self.writer.add_scalar("validation/field_magnitude_max_voxels", peak, step)

    def epoch(self, epoch: int, step: int) -> None:
        self.writer.add_scalar("train/epoch", epoch, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


def progress_bar(total: int, initial: int, epoch: int):
    """A tqdm bar over an epoch's micro-batches; in a log file (no terminal) every redraw
    is a new chunk of text, so it redraws rarely there."""
    from tqdm.auto import tqdm

    from ..progress import ENV, enabled

    interactive = sys.stderr.isatty()
    off = os.environ.get(ENV) is not None and not enabled()  # --no-progress / DDMR_PROGRESS=0
    return tqdm(total=total, initial=initial, desc=f"epoch {epoch}", unit="batch", dynamic_ncols=True,
                leave=False, mininterval=0.1 if interactive else 30.0, disable=off)


def epoch_line(epoch: int, metrics: dict, improved: bool) -> str:
    """``epoch N: validation loss L[ (best)][, metric value]...`` (loss terms left out)."""
    extra = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k != "loss" and not k.startswith("terms/"))
    return (f"epoch {epoch}: validation loss {metrics['loss']:.4g}{' (best)' if improved else ''}"
            f"{', ' + extra if extra else ''}")
