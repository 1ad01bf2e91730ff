"""RegistrationModel: backbone + spatial transformer + loss terms + loss weighting.

This is the paper's Fig. 1 as one module: the backbone predicts a pull field from
``(fixed, moving)``, the spatial transformer warps the moving image (linear) and its
one-hot segmentations (linear, so gradients flow), and each loss term is computed on
the inputs it declares (one of :data:`~ddmr_core.plugins.hookspecs.LOSS_INPUTS`) before the weighting
strategy combines them into one scalar.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import nn

from ..errors import ConfigError, DataError
from ..plugins.hookspecs import LOSS_INPUTS
from .schedule import Schedule
from ..spatial.prealign import METHODS as PREALIGN
from ..spatial.prealign import prealign_field
from ..spatial.refine import refine_field
from ..spatial.contrast import refine_across_contrasts
from ..spatial.fields import compose_affine, resize_field, resize_image, warp

def _float(value):
    """Floating tensors as float32; anything else as it is."""
    return value.float() if torch.is_tensor(value) and value.is_floating_point() else value




class RegistrationModel(nn.Module):
    """Args:
        backbone: ``nn.Module`` with ``forward(fixed, moving) -> disp (B, 3, D, H, W)``.
        losses: ``{name: loss module}``; each module has ``inputs`` in :data:`LOSS_INPUTS`.
        weighting: a loss-weighting factory ``(loss_names, regulariser_names) -> module``
            or an already built module; ``None`` sums the terms with weight 1.
        prealign: ``None`` (the paper), ``"centroid"``, ``"affine"`` or ``"affine_mi"`` (for
            pairs of different contrasts): a global alignment
            (:mod:`ddmr_core.spatial.prealign`) applied to the moving image before the backbone
            runs, so that the backbone predicts the residual. The returned field is the
            total one, used like any other. It is the initialisation ANTs and ITK start
            from: it takes the bulk motion off the network, which is what a small network
            trained briefly learns last.
        refine_iterations: at inference only (``model.eval()``), polish the predicted
            field for the pair at hand with this many steps of instance optimisation
            (:func:`~ddmr_core.spatial.refine.refine_field`); 0 (the paper) for none.
        supervision: a loss with ``inputs = "displacement"`` (e.g. ``epe``) comparing the
            predicted field with the pair's ground truth ``disp_true``, added to the
            weighted total with ``supervision_weight``, outside the weighting strategy,
            so any design can take it (not in the paper, which is weakly supervised). Its
            value is reported as the term ``"supervision"``.
        supervision_weight: its weight (>= 0).
        supervision_ramp_steps: in training, the supervision's weight is 0 until optimiser
            step ``start``, then rises linearly to ``supervision_weight`` at step ``end``:
            ``(start, end)``, or ``end`` alone for ``(0, end)`` (0: full weight from the
            start). The design's losses alone move a network off its zero output within a few
            hundred steps; with the supervision from the start it stays there for thousands
            (``docs/research_notes.md``, "Why the recipe's networks wait"). Validation always
            uses the full weight, so its losses compare across the run.
        prealign_iterations: ``prealign="affine"``: Levenberg-Marquardt iterations of the
            fit at 1/4 and 1/2 resolution (:func:`~ddmr_core.spatial.prealign.fit_affine`);
            ``"affine_mi"``: its mutual-information steps there
            (:func:`~ddmr_core.spatial.prealign.fit_affine_mi`); ``None``: their defaults.
    """

    def __init__(
        self,
        backbone: nn.Module,
        losses: Mapping[str, nn.Module] | None = None,
        weighting: Callable | nn.Module | None = None,
        prealign: str | None = None,
        refine_iterations: int = 0,
        supervision: nn.Module | None = None,
        supervision_weight: float = 1.0,
        prealign_iterations=None,
        supervision_ramp_steps: int | tuple[int, int] = 0,
    ):
        super().__init__()
        if int(refine_iterations) != refine_iterations or refine_iterations < 0:
            raise ConfigError(f"refine_iterations must be a non-negative integer, got {refine_iterations!r}")
        self.refine_iterations = int(refine_iterations)
        #: further keyword arguments of :func:`~ddmr_core.spatial.refine.refine_field` (not
        #: configured: set at inference, e.g. by :class:`ddmr_core.registration.register.Registrar`)
        self.refine_options: dict = {}
        #: refine with the pair put into one contrast (both ways, pooled:
        #: :func:`~ddmr_core.spatial.contrast.refine_across_contrasts`): the refinement's
        #: NCC assumes one contrast, so a model for pairs of two refines only this way
        #: (set at inference, like refine_options)
        self.refine_match_contrast = False
        if prealign not in PREALIGN:
            raise ConfigError(f"prealign must be one of {PREALIGN}, got {prealign!r}")
        self.prealign = prealign
        if prealign_iterations is not None:
            prealign_iterations = tuple(int(n) for n in prealign_iterations)
            if len(prealign_iterations) != 2 or min(prealign_iterations) < 0:
                raise ConfigError(f"prealign_iterations must be two non-negative integers (1/4 and 1/2 "
                                  f"resolution), got {prealign_iterations!r}")
        self.prealign_iterations = prealign_iterations
        self.backbone = backbone
        losses = dict(losses or {})
        for name, loss in losses.items():
            inputs = getattr(loss, "inputs", None)
            if inputs not in LOSS_INPUTS:
                raise ConfigError(
                    f"loss {name!r} must declare inputs in {LOSS_INPUTS}, got {inputs!r}"
                )
        if supervision is not None and getattr(supervision, "inputs", None) != "displacement":
            raise ConfigError("supervision must be a loss comparing fields with the ground truth "
                              f"(inputs = 'displacement', e.g. @ddmr.losses.epe()), got {supervision!r}")
        if not supervision_weight >= 0:
            raise ConfigError(f"supervision_weight must be >= 0, got {supervision_weight!r}")
        ramp = (0, supervision_ramp_steps) if isinstance(supervision_ramp_steps, (int, float)) \
            else tuple(supervision_ramp_steps)
        if len(ramp) != 2 or any(int(v) != v for v in ramp) or not 0 <= ramp[0] <= ramp[1]:
            raise ConfigError("supervision_ramp_steps must be an integer >= 0 or (start, end) with "
                              f"0 <= start <= end, got {supervision_ramp_steps!r}")
        self.supervision = supervision
        self.supervision_weight = float(supervision_weight)
        self.supervision_ramp = (int(ramp[0]), int(ramp[1]))
        #: the step-dependent factors of training (the supervision's ramp; the trainer
        #: configures the rate's and advances it)
        self.schedule = Schedule(supervision_ramp=self.supervision_ramp)
        self.losses = nn.ModuleDict(losses)
        self.loss_names = [n for n, l in losses.items() if l.inputs != "field"]
        self.regulariser_names = [n for n, l in losses.items() if l.inputs == "field"]
        if weighting is None or isinstance(weighting, nn.Module):
            self.weighting = weighting
        else:
            self.weighting = weighting(self.loss_names, self.regulariser_names)

    @property
    def needs_segmentations(self) -> bool:
        """True when a loss term compares segmentations (segmentation-guided designs)."""
        return any(l.inputs == "segmentation" for l in self.losses.values())

    @property
    def segmentation_losses(self) -> list:
        """Names of the loss terms that compare segmentations."""
        return [n for n, l in self.losses.items() if l.inputs == "segmentation"]

    def check_segmentations(self, labels) -> None:
        """Build-time check that the data can feed the segmentation losses.

        Args:
            labels: the dataset's foreground labels (``dataset.labels``); empty or None
                when the data has no label maps.

        Raises:
            ConfigError: a segmentation loss is configured but the data has no labels.
        """
        seg = self.segmentation_losses
        if seg and not labels:
            raise ConfigError(
                f"loss term(s) {seg} compare segmentations, but the dataset has no label maps: "
                "use a dataset with segmentations or a design without segmentation losses (e.g. bl_n)"
            )

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor, moving_segs: torch.Tensor | None = None,
                refine: bool | None = None):
        """Predict and apply the field.

        Args:
            fixed, moving: ``(B, 1, D, H, W)`` images in [0, 1] on the same grid.
            moving_segs: optional one-hot ``(B, L, D, H, W)``, warped linearly.
            refine: apply :attr:`refine_iterations`; ``None``: in evaluation mode only.

        Returns:
            ``{"disp": (B, 3, D, H, W), "warped": (B, 1, ...), "warped_segs": (B, L, ...) or None}``
        """
        if fixed.shape != moving.shape:
            raise DataError(
                f"fixed and moving must have the same shape, got {tuple(fixed.shape)} and {tuple(moving.shape)}"
            )
        disp = self.predict_field(fixed, moving, refine=refine)
        warped = warp(moving, disp, mode="linear", padding="border")
        warped_segs = None
        if moving_segs is not None:
            warped_segs = warp(moving_segs, disp, mode="linear", padding="zeros")
        return {"disp": disp, "warped": warped, "warped_segs": warped_segs}

    def predict_field(self, fixed: torch.Tensor, moving: torch.Tensor, refine: bool | None = None) -> torch.Tensor:
        """The pull field ``(B, 3, D, H, W)`` (voxels of the fixed grid) for ``(B, 1, D, H, W)``
        fixed and moving images: the backbone's prediction, after :attr:`prealign`, and
        refined when :attr:`refine_iterations` > 0 and ``refine`` (``None``: the model is in
        evaluation mode)."""
        pre = prealign_field(self.prealign, fixed, moving, self.prealign_iterations)
        if pre is None:
            disp = self.backbone(fixed, moving)
        else:
            field, matrix = pre
            residual = self.backbone(fixed, warp(moving, field, mode="linear", padding="border"))
            disp = compose_affine(field, matrix, residual)
        return self.refine_on_grid(fixed, moving, disp, refine)

    def predict_on_grid(self, fixed: torch.Tensor, moving: torch.Tensor, size=None,
                        refine: bool | None = None) -> torch.Tensor:
        """The pull field on the images' own grid, for a model that works on ``size``.

        The images (``(B, 1, D, H, W)``, any grid) are resized to ``size`` (the grid the
        model was trained on; ``None``: theirs), the field is predicted there by
        :meth:`predict_field` (prealignment, backbone, refinement) and resized back.
        Returns ``(B, 3, D, H, W)`` voxels of the images' grid.

        The refinement (:attr:`refine_iterations`) runs on the images' own grid, after the
        field is resized back: the network sees the model grid, the similarity the
        full-resolution images (sub-lattice steps keep its cost per step fixed, see
        :func:`~ddmr_core.spatial.refine.refine_field`), which registers better than refining on
        the model grid.
        """
        grid = tuple(fixed.shape[2:])
        if size is None or tuple(size) == grid:
            return self.predict_field(fixed, moving, refine=refine)
        size = tuple(int(n) for n in size)
        disp = self.predict_field(resize_image(fixed, size), resize_image(moving, size), refine=False)
        return self.refine_on_grid(fixed, moving, resize_field(disp, grid), refine)

    def refine_on_grid(self, fixed, moving, disp, refine: bool | None = None) -> torch.Tensor:
        """``disp`` ``(B, 3, D, H, W)`` (voxels of the images' grid) after the model's
        refinement, if it has one and ``refine`` (``None``: when not training) allows;
        images ``(B, 1, D, H, W)`` on that grid."""
        if refine is None:
            refine = not self.training
        if self.refine_iterations and refine:
            # a pair of two contrasts is put into one, both ways (the maps estimated once,
            # from the network's alignment: re-estimating them every 10-20 steps of the
            # refinement changed the brain benchmark's Dice by < 0.003)
            refine_with = refine_across_contrasts if self.refine_match_contrast else refine_field
            disp = refine_with(fixed, moving, disp, iterations=self.refine_iterations, **self.refine_options)
        return disp

    def loss_terms(self, batch: Mapping[str, torch.Tensor], out: Mapping[str, torch.Tensor]) -> dict:
        """Every loss term, ``{name: scalar}``, from a batch and the model's output.

        Terms are computed in float32 with autocast off, whatever the forward pass ran in:
        losses are reductions that need the precision, and under bf16 autocast cuDNN
        picks a slow grouped-convolution kernel for SSIM's separable blur
        (``benchmarks/gpu_check.py`` profiles a step)."""
        with torch.autocast(out["disp"].device.type, enabled=False):
            return self._loss_terms({k: _float(v) for k, v in batch.items()},
                                    {k: _float(v) for k, v in out.items()})

    def _loss_terms(self, batch, out) -> dict:
        terms = {}
        for name, loss in self.losses.items():
            if loss.inputs == "image":
                terms[name] = loss(out["warped"], batch["fixed"])
            elif loss.inputs == "segmentation":
                if out.get("warped_segs") is None or batch.get("fixed_segs") is None:
                    raise ConfigError(
                        f"loss {name!r} compares segmentations, but the batch has none: "
                        "use a dataset with label maps or drop the segmentation loss"
                    )
                terms[name] = loss(out["warped_segs"], batch["fixed_segs"])
            elif loss.inputs == "displacement":
                terms[name] = loss(out["disp"], self._disp_true(batch, name))
            else:
                terms[name] = loss(out["disp"])
        return terms

    @staticmethod
    def _disp_true(batch, name: str) -> torch.Tensor:
        if batch.get("disp_true") is None:
            raise ConfigError(
                f"loss {name!r} compares the field with the ground truth, but the batch has no "
                "disp_true: pairs need a geometric augmentation step (tps, rigid)")
        return batch["disp_true"]

    def combine(self, terms: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if self.weighting is None:
            return torch.stack(list(terms.values())).sum()
        return self.weighting(terms)

    def current_weights(self) -> dict:
        if self.weighting is None:
            return {n: 1.0 for n in self.losses}
        return dict(self.weighting.weights())

    def supervision_scale(self) -> float:
        """The factor on ``supervision_weight`` now: the schedule's ramp in training, 1 otherwise."""
        return self.schedule.supervision_factor() if self.training else 1.0

    def compute_loss(self, batch: Mapping[str, torch.Tensor]):
        """Forward pass plus loss: returns ``(total, terms, out)``."""
        segs = batch.get("moving_segs") if self.needs_segmentations else None
        # losses judge the network itself: validation (eval mode) does not refine
        out = self(batch["fixed"], batch["moving"], segs, refine=False)
        terms = self.loss_terms(batch, out)
        total = self.combine(terms)
        if self.supervision is not None:
            with torch.autocast(out["disp"].device.type, enabled=False):
                terms["supervision"] = self.supervision(out["disp"].float(),
                                                        _float(self._disp_true(batch, "supervision")))
            total = total + self.supervision_scale() * self.supervision_weight * terms["supervision"]
        return total, terms, out
