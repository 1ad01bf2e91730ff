"""Registering users' images with a trained checkpoint (``ddmr register`` as a library).

::

    from ddmr_core.registration.register import Registrar
    reg = Registrar("model.pt", device="cpu")          # loads the model once
    res = reg.register("fixed.nii.gz", "moving.nii.gz", moving_seg="moving_seg.nii.gz")
    res.warped, res.disp, res.affine                    # numpy arrays
    res.images()["warped"]                              # nibabel images
    res.save("out/")                                    # NIfTI, ITK field, .npz, PNG, JSON

Geometry. The moving image is first brought to the fixed image's axis orientation
(:func:`~.inputs.reorient_like`, an exact permutation/flip). Each input (any orientation,
spacing, size) then goes through the checkpoint's
:class:`~ddmr_core.data.preprocess.Preprocess` on its own, up to but not including the
resize to the network grid (:mod:`.working_grid`): the crop (around the label maps when
both images have one and the recipe crops around labels, else around each image's
foreground, :func:`~.working_grid.crop_mode`), the resampling to the recipe's spacing, the
intensities. This gives the *working grids* with their exact voxel->RAS affines: ``F_w``
for the fixed image, and ``M_w`` for the moving one, resized to the fixed image's
working shape. :meth:`Registrar.predict` (``RegistrationModel.predict_on_grid``, also what
``ddmr evaluate`` runs) resizes both to the network grid, predicts, resizes the field back
and refines it on the working grid. Fixed voxel ``x`` corresponds to moving working voxel
``x + u(x)``, i.e. to the world point ``M_w (x + u(x))``. Every output is computed from
that physical correspondence and the *original* files, on the output grid ``T`` (the fixed
working grid, or with ``original_resolution`` the fixed image's original grid): the
exported field, the warped image and label maps (:mod:`.resample`), their similarity to the
fixed image before and after registration (:mod:`.metrics`) and the trust check
(:mod:`.trust`).
"""

from __future__ import annotations

import math
import time
import warnings
from contextlib import contextmanager

import numpy as np
import torch

from ..devices import resolve_device, synchronize
from ..errors import CheckpointError, DdmrError, RegistrationQualityWarning
from ..data.guards import check_spacing
from ..data.io import check_field, check_finite, check_not_constant, spacing_from_affine
from .inputs import PairSide, _describe, _read_pair_side, read_volume, reorient_like
from .metrics import dice_tre, image_ncc
from .resample import resample_outputs
from .result import RegistrationResult
from .trust import ALIGNED_NMI, MAX_FOLDING_PCT, assess, assess_outputs
from .working_grid import crop_mode, working_grids, working_spacing
from .refine_defaults import (AUTO_REFINE_ITERATIONS, AUTO_REFINE_NODE_MM, AUTO_REFINE_OPTIONS,
                              CROSS_CONTRAST_NODE_MM, CROSS_CONTRAST_REFINE_ITERATIONS,
                              CROSS_CONTRAST_REFINE_OPTIONS, CROSS_CONTRAST_SMOOTHNESS)

#: the registrar, and the public names of the modules register.py was split into (inputs,
#: metrics, result, trust, refine_defaults), which callers, docs and benchmarks import from here
__all__ = ["Registrar", "register", "RegistrationResult", "read_volume", "reorient_like", "image_ncc", "dice_tre",
           "assess", "MAX_FOLDING_PCT", "ALIGNED_NMI", "AUTO_REFINE_ITERATIONS", "AUTO_REFINE_OPTIONS",
           "AUTO_REFINE_NODE_MM", "CROSS_CONTRAST_REFINE_ITERATIONS", "CROSS_CONTRAST_NODE_MM",
           "CROSS_CONTRAST_SMOOTHNESS", "CROSS_CONTRAST_REFINE_OPTIONS"]


@contextmanager
def _timed(timings: dict, key: str):
    """``timings[key]``: the seconds (wall clock) the ``with`` block took; unset when it raises."""
    t = time.perf_counter()
    yield
    timings[key] = time.perf_counter() - t


class Registrar:
    """A trained model loaded once, registering any number of pairs.

    Args:
        model: a ddmr checkpoint (path), or the name of a registered model (``brain-mr``,
            see ``ddmr plugins --kind models``); a path to an existing file wins
            (:func:`ddmr_core.model.checkpoint.resolve_model`).
        device: torch device for the network (``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``;
            None: CUDA when available), :func:`ddmr_core.devices.resolve_device`.
        registry: a :class:`ddmr_core.plugins.registry.Registry` (default: the installed plugins).
        strict: refuse (:class:`DataError`) images that do not look like what the model's
            card says it expects, instead of warning (:meth:`check_inputs`).
        refine: instance optimisation on the working grid after the network
            (:func:`ddmr_core.spatial.refine.refine_field`): ``None`` the model's own
            (``refine_iterations`` of its config, what ``ddmr evaluate`` measures), an
            integer that many steps (0: none), ``"auto"`` (``ddmr register``'s default,
            :meth:`auto_refinement`).
        second_pass: a second network on the pair put into one contrast (:mod:`.second_pass`),
            whose field replaces this model's before the refinement: ``"auto"`` the card's
            ``second_pass`` (if any), ``None`` none, or a model name or checkpoint.

    Raises:
        CheckpointError: missing/unreadable file, not a ddmr checkpoint, a checkpoint
            whose config or weights do not build a model, or a shipped weight file that
            does not match its recorded sha256 (:class:`ddmr_core.model.zoo.IntegrityError`).
        UnknownNameError: ``model`` is neither a file nor a registered model name (or
            names a version that is not shipped).
    """

    def __init__(self, model, device="cpu", registry=None, strict: bool = False, refine=None,
                 second_pass="auto"):
        from ..model import zoo
        from ..model.checkpoint import describe, load_model, resolve_model
        from ..data.preprocess import Preprocess

        self.device = resolve_device(device)
        self.spec = model if hasattr(model, "read") else str(model)
        self.strict = bool(strict)
        release = zoo.lookup(model, registry)  # None: a checkpoint file, not a model name
        self.path = zoo.verify(release).source if release is not None else resolve_model(model, registry)
        self.name = describe(self.path)
        #: which model this is, as results record it: name, version, sha256 (:func:`ddmr_core.model.zoo.identify`)
        self.model_info = zoo.identify(model, self.path, release)
        t0 = time.perf_counter()
        self.model, ckpt = load_model(self.path, device=self.device, registry=registry)
        self.load_time = time.perf_counter() - t0
        # the card says what inputs the model expects (the input check of :meth:`register`);
        # a checkpoint without a card file may carry one from ``ddmr export --card``
        self.card = release.card if release is not None and release.card is not None else ckpt.get("card")
        if not isinstance(self.card, dict):
            self.card = None
        self.labels = tuple(int(v) for v in (ckpt.get("labels") or ()))
        size = ckpt.get("input_size")
        try:
            # checkpoints without a recipe get the default intensity scaling on their own
            # grid (no resampling to a spacing); the network grid is input_size
            pre = ckpt.get("preprocess") or {"spacing": None, "size": size}
            self.preprocess = Preprocess.from_dict(pre)
        except DdmrError as exc:
            raise CheckpointError(f"checkpoint {self.name!r}: bad 'preprocess': {exc}") from exc
        if size is None:  # a run that took its grid from the data: the recipe's size
            size = self.preprocess.size
        if size is None or len(size) != 3:
            raise CheckpointError(
                f"checkpoint {self.name!r} records no network grid ('input_size' or a "
                "preprocessing size), so inputs cannot be brought to the model's grid"
            )
        self.input_size = tuple(int(s) for s in size)
        #: check the estimated memory of each registration first (``--no-memory-check``)
        self.memory_check = True
        #: the model's own refinement steps (its config's ``refine_iterations``), which
        #: :meth:`set_refinement` overrides
        self.model_refinement = int(self.model.refine_iterations)
        self.register_refinement = False
        self.set_refinement(refine)
        if second_pass == "auto":
            second_pass = ((self.card or {}).get("second_pass") or {}).get("model")
        #: the second network (a :class:`Registrar` without refinement), or None
        self.second = None
        if second_pass:
            try:
                self.second = Registrar(second_pass, device=self.device, registry=registry, second_pass=None)
            except DdmrError as exc:
                raise type(exc)(f"{self.model_info.get('ref') or self.name!r}'s second network {second_pass!r}: {exc}") from exc
            self.model_info["second_pass"] = dict(self.second.model_info)
        #: what the last :meth:`predict` measured of the second pass (:func:`.second_pass.second_pass`)
        self.second_pass_info = None

    def auto_refinement(self) -> int:
        """``ddmr register``'s default number of refinement steps: the model's own when its
        config refines, else :data:`AUTO_REFINE_ITERATIONS` steps of global NCC on the
        working grid (for a model whose card lists several contrasts,
        :data:`CROSS_CONTRAST_REFINE_ITERATIONS` steps with the pair put into one contrast,
        :attr:`match_contrast`)."""
        if self.model_refinement:
            return self.model_refinement
        return CROSS_CONTRAST_REFINE_ITERATIONS if self.match_contrast else AUTO_REFINE_ITERATIONS

    @property
    def match_contrast(self) -> bool:
        """Whether the refinement puts the pair into one contrast first
        (:func:`ddmr_core.spatial.contrast.refine_across_contrasts`): for a model whose card
        lists several contrasts, the pair may have two, and NCC assumes one."""
        return len((self.card or {}).get("contrasts") or []) > 1

    def set_refinement(self, refine) -> None:
        """Set the refinement of :meth:`predict` (see the ``refine`` argument)."""
        if refine is None:
            return
        if refine == "auto":
            refine = self.auto_refinement()
        if isinstance(refine, bool) or int(refine) != refine or refine < 0:
            raise DdmrError(f"refinement steps must be a non-negative integer or 'auto', got {refine!r}")
        #: the refinement's options are ddmr register's (:data:`AUTO_REFINE_OPTIONS`), not
        #: the model's own: the raw images' global NCC (on working grids of 1-2 mm a local
        #: normalisation over 5 voxels made the brain benchmark's Dice worse), nodes in mm
        self.register_refinement = not self.model_refinement
        if self.register_refinement:
            self.model.refine_options = dict(CROSS_CONTRAST_REFINE_OPTIONS if self.match_contrast
                                             else AUTO_REFINE_OPTIONS)
        self.model.refine_iterations = int(refine)
        self.model.refine_match_contrast = self.match_contrast

    def check_memory(self, shape, affine, original_resolution: bool) -> None:
        """Refuse a registration whose estimated memory (:func:`ddmr_core.data.guards.
        registration_bytes`: the fixed image uncropped at its :func:`~.working_grid.working_spacing`,
        and the network grid) exceeds what is available, before anything is resampled."""
        from ..data.guards import check_memory, registration_bytes

        spacing = working_spacing(self.preprocess, affine)
        work = tuple(shape) if spacing is None else tuple(
            max(1, math.ceil(n * s / t)) for n, s, t in zip(shape, spacing_from_affine(affine), spacing))
        need = registration_bytes(work, tuple(shape) if original_resolution else work, self.input_size)
        check_memory(need, f"registering on a working grid of {work} voxels", skip=not self.memory_check)

    def check_inputs(self, *images) -> list[str]:
        """Compare ``(array, affine, what)`` images with what the model's card says it expects
        (:func:`ddmr_core.model.card.input_mismatch`: CT in HU given to an MR model, MR to a CT
        model, a slab or a far wider field of view than it was trained on). Each mismatch is one
        line, a :class:`~ddmr_core.errors.ModelInputWarning`, returned; with ``strict`` a
        :class:`~ddmr_core.errors.DataError` instead."""
        from ..errors import DataError, ModelInputWarning
        from ..model.card import input_mismatch

        notes = []
        for image, affine, what in images:
            note = input_mismatch(self.card, image, what, self.model_info.get("ref") or self.name, affine)
            if note is None:
                continue
            if self.strict:
                raise DataError(note + " (refused: strict input checking)")
            # stacklevel: the caller of register (past torch.no_grad's wrapper)
            warnings.warn(ModelInputWarning(note + " (registering anyway; --strict refuses)"), stacklevel=4)
            notes.append(note)
        return notes

    @torch.inference_mode()
    def predict(self, fixed: torch.Tensor, moving: torch.Tensor, left_right: int | None = None) -> torch.Tensor:
        """The pull field ``(1, 3, D, H, W)`` for fixed and moving images ``(1, 1, D, H, W)``
        in [0, 1] on one grid, in voxels of that grid: the network on its own grid
        (``input_size``), the instance optimisation, if the model has one, on the images'
        grid (:meth:`ddmr_core.model.registration_model.RegistrationModel.predict_on_grid`).

        The one inference path: ``ddmr register`` and ``ddmr evaluate`` both predict here,
        so a pair gives the same field in both.

        With a second network (:attr:`second`), its field on the pair put into one contrast
        (:func:`.second_pass.second_pass`, from this model's unrefined field) is the one refined,
        mirrored across voxel axis ``left_right`` when the card asks (None: not mirrored)."""
        fixed, moving = fixed.to(self.device), moving.to(self.device)
        if self.second is None:
            return self.model.predict_on_grid(fixed, moving, self.input_size)
        from .second_pass import second_pass

        first = self.model.predict_on_grid(fixed, moving, self.input_size, refine=False)
        net, mirror = self.second, left_right if (self.card or {}).get("second_pass", {}).get("mirror") else None
        disp, self.second_pass_info = second_pass(
            lambda f, m: net.model.predict_on_grid(f, m, net.input_size, refine=False), fixed, moving, first, mirror,
            first_grid=self.input_size, second_grid=net.input_size)
        return self.model.refine_on_grid(fixed, moving, disp)

    @torch.no_grad()
    def register(
        self,
        fixed,
        moving,
        fixed_seg=None,
        moving_seg=None,
        *,
        fixed_affine=None,
        moving_affine=None,
        original_resolution: bool = False,
    ) -> RegistrationResult:
        """Register ``moving`` to ``fixed``.

        Args:
            fixed, moving: NIfTI paths, nibabel images, or ``(D, H, W)`` arrays/tensors.
            fixed_seg, moving_seg: optional label maps (same kinds), on their image's grid.
                They give Dice and TRE; with both, a recipe that crops around labels crops
                around them (as in training), otherwise around each image's foreground
                (:func:`~.working_grid.crop_mode`).
            fixed_affine, moving_affine: voxel->RAS affines for array inputs (default:
                identity for the fixed image, the fixed affine for the moving one).
            original_resolution: output on the fixed image's original grid instead of
                the working grid (the fixed image after the recipe's crop and resampling).

        Raises:
            DataError: unreadable/missing file, non-3-D volume, a constant (e.g. all-zero)
                image, a voxel spacing outside 0.05..20 mm (a unit mistake), more memory
                needed than available (:meth:`check_memory`), a segmentation whose grid
                differs from its image's, inputs the
                preprocessing cannot handle, or a model whose field or warped image is not
                finite (NaN or infinite values are never returned as a result).
        """
        timings = {}
        with _timed(timings, "read"):
            fix, mov = self._read(fixed, moving, fixed_seg, moving_seg, fixed_affine, moving_affine,
                                  original_resolution)
            notes = self.check_inputs((fix.image, fix.affine, fix.named), (mov.image, mov.affine, mov.named))
        with _timed(timings, "preprocess"):
            crop = crop_mode(self.preprocess, fix.seg, mov.seg)
            (f_w, Fw), (m_w, Mw) = working_grids(self.preprocess, fix, mov, crop)

        if self.register_refinement:
            step = float(np.min(spacing_from_affine(Fw)))
            node_mm = CROSS_CONTRAST_NODE_MM if self.match_contrast else AUTO_REFINE_NODE_MM
            self.model.refine_options["nodes"] = max(1, round(node_mm / step))
        what = f"checkpoint {self.name!r} on {fix.name!r} and {mov.name!r}"
        with _timed(timings, "predict"):
            disp = self._predict_field(f_w, m_w, what, Fw)  # (3, D, H, W) voxels of the fixed working grid

        T = fix.affine if original_resolution else Fw
        shape = tuple(fix.image.shape) if original_resolution else tuple(f_w.shape)
        with _timed(timings, "apply"):
            outs = resample_outputs(disp, Fw, Mw, T, shape, fix.image, fix.seg, fix.affine, mov.image, mov.seg,
                                    mov.affine, interpolate_field=original_resolution)
            synchronize(self.device)
        check_finite(what, warped=outs["warped"], exported_field=outs["disp"])

        metrics = self._metrics(outs, disp, T, fix, mov)
        notes += self._untrusted(metrics["trust"]["flags"], fix, mov)
        return RegistrationResult(
            fixed=outs["fixed"],
            moving=outs["before"],
            warped=outs["warped"],
            disp=outs["disp"],
            affine=np.asarray(T, dtype=np.float64),
            model_disp=disp.cpu().numpy(),
            model_affine=np.asarray(Fw, dtype=np.float64),
            fixed_seg=outs["fixed_seg"],
            moving_seg=outs["before_seg"],
            warped_seg=outs["warped_seg"],
            metrics=metrics,
            timings=timings,
            inputs=self._inputs(fixed, moving, fixed_seg, moving_seg, crop, original_resolution),
            model=dict(self.model_info),
            warnings=notes,
        )

    # ------------------------------------------------------ register's steps
    def _read(self, fixed, moving, fixed_seg, moving_seg, fixed_affine, moving_affine,
              original_resolution: bool) -> tuple[PairSide, PairSide]:
        """Both sides of the pair read (:func:`~.inputs.read_volume`) and checked: not
        constant, a plausible spacing, enough memory (:meth:`check_memory`); the moving one
        brought to the fixed one's orientation (:func:`~.inputs.reorient_like`)."""
        if moving_affine is None and fixed_affine is not None:
            moving_affine = fixed_affine
        fix = _read_pair_side(fixed, fixed_seg, fixed_affine, "fixed image")
        mov = _read_pair_side(moving, moving_seg, moving_affine, "moving image")
        check_not_constant(fix.image, fix.named)
        check_not_constant(mov.image, mov.named)
        check_spacing(fix.affine, fix.named)  # a unit mistake in the header
        check_spacing(mov.affine, mov.named)
        self.check_memory(fix.image.shape, fix.affine, original_resolution)
        image, seg, affine = reorient_like(mov.image, mov.seg, mov.affine, fix.affine)
        return fix, mov._replace(image=image, seg=seg, affine=affine)

    def _predict_field(self, f_w: np.ndarray, m_w: np.ndarray, what: str, affine: np.ndarray) -> torch.Tensor:
        """The model's field ``(3, D, H, W)`` float32, in voxels of the fixed working grid,
        for the working images ``(D, H, W)`` (:meth:`predict`); a field that is not finite,
        or absurdly large (:func:`~ddmr_core.data.io.check_field`), is a
        :class:`~ddmr_core.errors.DataError` naming ``what``."""
        fx = torch.from_numpy(np.ascontiguousarray(f_w, dtype=np.float32))[None, None]
        mv = torch.from_numpy(np.ascontiguousarray(m_w, dtype=np.float32))[None, None]
        left_right = int(np.argmax(np.abs(np.asarray(affine)[0, :3])))  # the axis nearest world x (RAS: L-R)
        disp = self.predict(fx, mv, left_right)[0].float()
        check_field(what, disp)
        synchronize(self.device)  # so that the "predict" timing holds the device's work
        return disp

    def _metrics(self, outs: dict, disp: torch.Tensor, T: np.ndarray, fix: PairSide, mov: PairSide) -> dict:
        """``results.json``'s ``metrics`` of the outputs ``outs``
        (:func:`~.resample.resample_outputs`) on the output grid ``T``: NCC before and after
        registration, with both label maps Dice and TRE per label (the model's labels, else
        those found in the input label maps ``fix.seg``, ``mov.seg``), and the trust check of the
        outputs, the inputs and the model's field ``disp`` ``(3, d, h, w)`` (:func:`~.trust.assess_outputs`)."""
        # "before": the unregistered images as they lie in the world, on the output grid
        metrics = {"before": {"ncc": image_ncc(outs["fixed"], outs["before"])},
                   "after": {"ncc": image_ncc(outs["fixed"], outs["warped"])}}
        fixed_seg_out, before_seg, warped_seg = outs["fixed_seg"], outs["before_seg"], outs["warped_seg"]
        if fixed_seg_out is not None and warped_seg is not None:
            labels = self.labels or tuple(int(v) for v in np.union1d(np.unique(fix.seg), np.unique(mov.seg)) if v != 0)
            metrics["before"].update(dice_tre(fixed_seg_out, before_seg, T, labels))
            metrics["after"].update(dice_tre(fixed_seg_out, warped_seg, T, labels))
        metrics["trust"] = assess_outputs(outs["fixed"], outs["before"], outs["warped"], disp,
                                          {"fixed image": fix.image, "moving image": mov.image})
        if self.second is not None and self.second_pass_info is not None:
            metrics["second_pass"] = dict(self.second_pass_info)
        return metrics

    @staticmethod
    def _untrusted(flags: list, fix: PairSide, mov: PairSide) -> list[str]:
        """One line per flag of the trust check, each issued as a
        :class:`~ddmr_core.errors.RegistrationQualityWarning`."""
        notes = []
        for flag in flags:
            note = f"untrustworthy result for {fix.name!r} and {mov.name!r}: {flag}"
            # stacklevel: the caller of register (past register and torch.no_grad's wrapper)
            warnings.warn(RegistrationQualityWarning(note), stacklevel=4)
            notes.append(note)
        return notes

    def _inputs(self, fixed, moving, fixed_seg, moving_seg, crop: str, original_resolution: bool) -> dict:
        """``results.json``'s ``inputs``: the files registered (or ``"array"``), the model,
        the crop, the output grid, the refinement, the device and the model's load time (s)."""
        return {
            "fixed": _describe(fixed, "array"),
            "moving": _describe(moving, "array"),
            "fixed_seg": None if fixed_seg is None else _describe(fixed_seg, "array"),
            "moving_seg": None if moving_seg is None else _describe(moving_seg, "array"),
            "model": self.spec if isinstance(self.spec, str) else self.name,
            "checkpoint": self.name,
            "crop": crop,
            "original_resolution": bool(original_resolution),
            "refine_iterations": int(self.model.refine_iterations),
            "device": str(self.device),
            "model_load_s": self.load_time,
        }

def register(fixed, moving, model, fixed_seg=None, moving_seg=None, *, device="cpu",
             original_resolution: bool = False, out_dir=None, **kwargs) -> RegistrationResult:
    """One-shot convenience: load ``model`` (a checkpoint path, a registered model name or
    a :class:`Registrar`),
    register one pair and, if ``out_dir`` is given, write the outputs there."""
    reg = model if isinstance(model, Registrar) else Registrar(model, device=device)
    res = reg.register(fixed, moving, fixed_seg, moving_seg, original_resolution=original_resolution, **kwargs)
    if out_dir is not None:
        res.save(out_dir)
    return res
