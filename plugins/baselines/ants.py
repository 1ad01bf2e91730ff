"""``ants_syn`` and ``ants_syncc``: ANTs symmetric normalisation (SyN) through antspyx.

The paper's classical baselines (Section 2.5 (iii)): SyN with mutual information
(``ants_syn``) and SyN with cross-correlation (``ants_syncc``), each preceded by ANTs'
usual affine stage.

Field conversion (the part that is easy to get wrong)
-----------------------------------------------------
ANTs' *forward* transforms map points of the fixed image's physical space into the
moving image's physical space, ``T(p) = p + d(p)``; ``apply_transforms`` samples
``moving(T(p))``. That is a pull mapping already, in millimetres of ITK's physical
(LPS) frame. We build both ANTs images straight from the NumPy arrays with origin 0,
identity direction and the given spacing, so ITK's physical point of voxel index
``(i, j, k)`` is ``(s0 * i, s1 * j, s2 * k)`` with index ``i`` along NumPy axis 0 (antspyx
keeps the array's axis order). No orientation flip enters: the LPS frame is simply the
one these images define. ANTs composes its affine and warp into one displacement field
on the fixed grid (``apply_transforms(..., compose=...)``), and dividing its components
by the spacing gives the toolkit's voxel pull field ``u`` with
``warped(x) = moving(x + u(x))`` -- checked by ``tests/plugins/test_baselines.py``
against ``ants.apply_transforms`` and on a known translation.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Sequence

import numpy as np

from ddmr_core.errors import DdmrError

INSTALL_HINT = "pip install antspyx"


def ants_available() -> bool:
    """True when antspyx imports."""
    try:
        import ants  # noqa: F401
    except Exception:  # ImportError or a broken binary wheel
        return False
    return True


def _import_ants():
    try:
        import ants
    except Exception as exc:
        raise DdmrError(
            f"the ANTs baselines need antspyx, which cannot be imported ({type(exc).__name__}: {exc}); "
            f"install it with `{INSTALL_HINT}`"
        ) from exc
    return ants


def to_ants(array: np.ndarray, spacing: Sequence[float]):
    """NumPy ``(D, H, W)`` -> ANTsImage with origin 0, identity direction, ``spacing`` mm."""
    ants = _import_ants()
    img = ants.from_numpy(
        np.ascontiguousarray(array, dtype=np.float32),
        origin=(0.0, 0.0, 0.0),
        spacing=tuple(float(s) for s in spacing),
        direction=np.eye(3),
    )
    return img


def ants_field_to_voxels(field: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """ANTs displacement ``(D, H, W, 3)`` in mm (images built by :func:`to_ants`) ->
    voxel pull field ``(3, D, H, W)`` float32."""
    spacing = np.asarray(spacing, dtype=np.float64)
    disp = np.moveaxis(np.asarray(field, dtype=np.float64), -1, 0) / spacing.reshape(3, 1, 1, 1)
    return disp.astype(np.float32)


def compose_to_field(fixed_img, moving_img, transforms: Sequence[str], workdir: str) -> np.ndarray:
    """Compose ANTs ``transforms`` (fixed -> moving) into one ``(D, H, W, 3)`` mm field."""
    ants = _import_ants()
    prefix = os.path.join(workdir, "composed_")
    path = ants.apply_transforms(
        fixed=fixed_img, moving=moving_img, transformlist=list(transforms), compose=prefix
    )
    field = ants.image_read(path)
    arr = field.numpy()
    if arr.shape[-1] != 3:  # defensive: antspyx returns components last
        raise RuntimeError(f"unexpected composed ANTs field of shape {arr.shape}")
    return arr


@contextlib.contextmanager
def _ants_seed(seed):
    # antspyx reads its seed from a module-level setting; set it for this call only.
    import ants

    old = ants.config._random_seed
    ants.config._random_seed = seed
    try:
        yield
    finally:
        ants.config._random_seed = old


class AntsSyN:
    """SyN registration with antspyx, returning the toolkit's voxel pull field.

    Args:
        metric: SyN similarity metric: ``"mattes"`` (mutual information) or ``"CC"``
            (neighbourhood cross-correlation).
        type_of_transform: the antspyx preset (``"SyN"``: affine then SyN;
            ``"SyNOnly"``: no affine stage; ``"SyNCC"``: antspyx's fixed, slow CC preset).
        reg_iterations: SyN iterations per resolution level, coarse to fine (antspyx's
            default ``(40, 20, 0)``).
        syn_sampling: metric parameter (MI bins for ``mattes``, radius for ``CC``).
        grad_step, flow_sigma, total_sigma: SyN step and regularisation (antspyx defaults).
        seed: ANTs' random seed (affine-stage point sampling), for reproducibility.
        threads: ITK threads (``None``: ITK's default).
    """

    def __init__(
        self,
        metric: str = "mattes",
        type_of_transform: str = "SyN",
        reg_iterations: Sequence[int] = (40, 20, 0),
        syn_sampling: int | None = None,
        grad_step: float = 0.2,
        flow_sigma: float = 3.0,
        total_sigma: float = 0.0,
        seed: int | None = 0,
        threads: int | None = None,
    ):
        if metric not in ("mattes", "CC", "meansquares", "demons"):
            raise ValueError(f"metric must be 'mattes', 'CC', 'meansquares' or 'demons', got {metric!r}")
        self.metric = metric
        self.type_of_transform = type_of_transform
        self.reg_iterations = tuple(int(i) for i in reg_iterations)
        # 32 histogram bins for MI, radius 4 for CC: the values of ANTs' own presets
        self.syn_sampling = syn_sampling if syn_sampling is not None else (4 if metric == "CC" else 32)
        self.grad_step = grad_step
        self.flow_sigma = flow_sigma
        self.total_sigma = total_sigma
        self.seed = seed
        self.threads = threads

    @staticmethod
    def available() -> bool:
        return ants_available()

    def run(self, fixed_img, moving_img, workdir: str) -> list:
        """Run ``ants.registration`` on two ANTsImages, writing into ``workdir``.

        Returns ANTs' forward transforms (files in ``workdir``, fixed -> moving points)."""
        ants = _import_ants()
        old_threads = os.environ.get("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")
        try:
            if self.threads is not None:
                os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(int(self.threads))
            with _ants_seed(self.seed):
                out = ants.registration(
                    fixed_img,
                    moving_img,
                    type_of_transform=self.type_of_transform,
                    outprefix=os.path.join(workdir, "reg_"),
                    syn_metric=self.metric,
                    syn_sampling=self.syn_sampling,
                    reg_iterations=self.reg_iterations,
                    grad_step=self.grad_step,
                    flow_sigma=self.flow_sigma,
                    total_sigma=self.total_sigma,
                )
        finally:
            if self.threads is not None:
                if old_threads is None:
                    os.environ.pop("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", None)
                else:
                    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = old_threads
        transforms = list(out["fwdtransforms"])
        if not transforms:
            raise RuntimeError("ANTs registration returned no transform")
        return transforms

    def register(self, fixed: np.ndarray, moving: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
        """Register ``moving`` to ``fixed`` (``(D, H, W)`` arrays, ``spacing`` mm).

        Returns the ``(3, D, H, W)`` float32 voxel pull field."""
        fixed = np.asarray(fixed)
        moving = np.asarray(moving)
        if fixed.ndim != 3 or fixed.shape != moving.shape:
            raise ValueError(
                f"fixed and moving must be 3-D arrays of one shape, got {fixed.shape} and {moving.shape}"
            )
        f_img, m_img = to_ants(fixed, spacing), to_ants(moving, spacing)
        workdir = tempfile.mkdtemp(prefix="ddmr_ants_")
        try:
            transforms = self.run(f_img, m_img, workdir)
            field = compose_to_field(f_img, m_img, transforms, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return ants_field_to_voxels(field, spacing)


def ants_syn(
    reg_iterations: Sequence[int] = (40, 20, 0),
    type_of_transform: str = "SyN",
    syn_sampling: int = 32,
    grad_step: float = 0.2,
    flow_sigma: float = 3.0,
    total_sigma: float = 0.0,
    seed: int | None = 0,
    threads: int | None = None,
) -> AntsSyN:
    """SyN with mutual information (ANTs' ``mattes`` metric, 32 bins), after an affine stage."""
    return AntsSyN("mattes", type_of_transform, reg_iterations, syn_sampling, grad_step,
                   flow_sigma, total_sigma, seed, threads)


def ants_syncc(
    reg_iterations: Sequence[int] = (40, 20, 0),
    type_of_transform: str = "SyN",
    syn_sampling: int = 4,
    grad_step: float = 0.2,
    flow_sigma: float = 3.0,
    total_sigma: float = 0.0,
    seed: int | None = 0,
    threads: int | None = None,
) -> AntsSyN:
    """SyN with neighbourhood cross-correlation (radius ``syn_sampling`` = 4), after an
    affine stage.

    The paper ran antspyx's ``"SyNCC"`` preset, whose fixed 2100x1200x1200x20 SyN
    iterations (ignoring ``reg_iterations``) make it very slow; pass
    ``type_of_transform="SyNCC"`` to reproduce it exactly."""
    return AntsSyN("CC", type_of_transform, reg_iterations, syn_sampling, grad_step,
                   flow_sigma, total_sigma, seed, threads)
