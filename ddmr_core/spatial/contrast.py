"""Bringing a pair of two contrasts into one, from the pair itself.

A network trained on one contrast (brain-mr: T1 against T1), and the refinement's NCC,
compare intensities. Given a T2, PD or FLAIR scan against a T1 template, each tissue keeps
its own intensity in each image, only the values differ: the intensity of one image is
(nearly) a function of the other's. Once the two images are roughly aligned, that function
is estimated as the conditional mean of the target intensities given the source ones over
the voxels the two images' foregrounds share, and the source image passed through it
looks like the target (the intensity correction of Guimond et al., "Three-dimensional
multimodal brain warping using the demons algorithm and adaptive intensity corrections",
IEEE TMI 2001). :func:`match_contrast` maps the moving image into the fixed one's
contrast; :func:`refine_across_contrasts` maps both ways and refines with the two pairs
pooled, since which way works depends on which image tells the tissues apart.

The background is kept apart: in an inverted T1 the white matter is as dark as the air
around the head, and one function of intensity cannot send both to their T1 values. The
background is the voxels of the background's level connected to the volume's border
(:func:`background_mask`), which no tissue inside the head is; it takes the fixed image's
background level, and the function is estimated and applied inside the head only. So is
the rim between them (:data:`RIM_VOXELS`): a voxel half bright CSF, half dark air in a T2
has the intensity of grey matter, and mapped with the interior's table it would become a
bright halo around a T1. The rim has a table of its own, estimated over the rim.

Tensors: images ``(B, 1, D, H, W)`` on one grid (any intensity range; the pair's own,
``[0, 1]`` in the models); look-up tables :class:`ContrastMap`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

from .fields import warp
from .filters import gaussian_blur
from .prealign import FOREGROUND_FRACTION, background_level, foreground_mask
from .refine import sub_lattice_stride

#: bins of the look-up table over the moving image's robust foreground range
BINS = 64
#: its range: these percentiles of the moving foreground's intensities (hot voxels clamp)
RANGE_PERCENTILES = (0.5, 99.5)
#: Gaussian smoothing of the binned sums, in bins: bins that hold a few voxels borrow
#: from their neighbours instead of jumping
SMOOTH_BINS = 1.0
#: a bin needs this many (smoothed) voxels to have a value of its own; emptier bins are
#: interpolated from their neighbours
MIN_COUNT = 5.0
#: images above this many voxels are subsampled (regular stride) to find the background
#: and to estimate the table: a 1 mm brain (9M voxels) needs a fraction for 64 bins
MAX_ESTIMATE_VOXELS = 2 ** 21
#: the rim: foreground voxels within this many voxels (chessboard distance) of the
#: background. Their intensity is a partial-volume mix of tissue and background, which a
#: map of intensity alone sends to the wrong tissue (see :meth:`ContrastMap.__call__`);
#: the table is estimated without them. Two voxels: one of partial volume, one more
#: for the interpolation of a resampled or warped image.
RIM_VOXELS = 2
#: :func:`map_both_ways` estimates the moving image's map from the two images smoothed
#: (``smooth``) only where the unsmoothed map explains at least this share of the fixed
#: image's variance (:attr:`ContrastMap.fit`): a map that is nearly a function, whose
#: scatter is the alignment's error (brain pairs at 2 mm, aligned by brain-mr-any: T1 0.91,
#: T2-like 0.83, inverted 0.83-0.90), not one whose source intensity leaves the target
#: ambiguous (PD-like 0.59, FLAIR-like 0.51), where the smoothed map was worse
SMOOTH_FIT = 0.7


def background_mask(image: torch.Tensor, fraction: float = FOREGROUND_FRACTION) -> torch.Tensor:
    """``(B, 1, D, H, W)`` bool: the voxels at the background's level
    (:func:`~ddmr_core.spatial.prealign.foreground_mask`'s complement) that connect to the
    volume's border through such voxels (6-connectivity). Dark tissue enclosed by the head
    (white matter in an inverted T1, CSF in a T1) is not background however dark it is."""
    from scipy import ndimage

    low = ~foreground_mask(image, fraction).bool().cpu().numpy()
    out = np.zeros_like(low)
    for b in range(low.shape[0]):
        labels, _ = ndimage.label(low[b, 0])
        border = np.concatenate([labels[i].ravel() for i in (0, -1)] + [labels[:, i].ravel() for i in (0, -1)]
                                + [labels[:, :, i].ravel() for i in (0, -1)])
        keep = np.unique(border[border > 0])
        out[b, 0] = np.isin(labels, keep)
    return torch.from_numpy(out).to(image.device)


@dataclass
class ContrastMap:
    """A per-sample intensity map of one image (called moving here) into another's (fixed).

    ``table`` ``(B, BINS)``: the fixed intensity for each bin centre of the moving range
    ``[lo, hi]`` (``(B,)`` each), for the moving image's interior; ``rim_table``
    ``(B, BINS)``: the same for its rim (:data:`RIM_VOXELS`); ``background`` ``(B,)``:
    the value the moving image's background (:func:`background_mask`) takes; ``fit``
    ``(B,)``: how much of the fixed intensities' variance over the interior the table
    explains (the correlation ratio, 0..1: 1 when the fixed intensity is a function of the
    moving one)."""

    table: torch.Tensor
    rim_table: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor
    background: torch.Tensor
    fit: torch.Tensor

    def __call__(self, moving: torch.Tensor, background: torch.Tensor | None = None) -> torch.Tensor:
        """``moving`` ``(B, 1, D, H, W)`` in the fixed image's contrast: each voxel through
        the table (linear between bin centres, clamped at the ends), the rim's voxels
        through the rim's table, the background (``background``: a precomputed
        :func:`background_mask` of ``moving``) set to the fixed background's level."""
        if background is None:
            background = background_mask(moving)
        b = self.table.shape[0]
        x = moving.float()
        out = _look_up(self.table, x, self.lo, self.hi)
        rim = _near_background(background, RIM_VOXELS) & ~background
        out = torch.where(rim, _look_up(self.rim_table, x, self.lo, self.hi), out)
        out = torch.where(background, self.background.view(b, 1, 1, 1, 1).to(out.dtype), out)
        return out.to(moving.dtype)


def _look_up(table: torch.Tensor, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """``x`` ``(B, 1, D, H, W)`` through ``table`` ``(B, BINS)`` over ``[lo, hi]`` (``(B,)``):
    linear between bin centres, clamped at the ends."""
    b, bins = table.shape
    lo, hi = lo.view(b, 1, 1, 1, 1), hi.view(b, 1, 1, 1, 1)
    pos = _bin_position(x, lo, hi, bins)
    i0 = pos.floor().long().clamp(max=bins - 2)
    frac = pos - i0
    flat = i0.flatten(1)
    t0 = torch.gather(table, 1, flat).view_as(pos)
    t1 = torch.gather(table, 1, flat + 1).view_as(pos)
    return t0 + frac * (t1 - t0)


def _bin_position(x: torch.Tensor, lo, hi, bins: int = BINS) -> torch.Tensor:
    """``x``'s position among ``bins`` bin centres spread over ``[lo, hi]`` (0 .. bins - 1,
    clamped at the ends): where the tables look it up and where their estimates count it."""
    return ((x - lo) / (hi - lo) * (bins - 1)).clamp(0, bins - 1)


def _near_background(background: torch.Tensor, voxels: int) -> torch.Tensor:
    """``(B, 1, D, H, W)`` bool: the background dilated by ``voxels`` (a cube), one axis at
    a time (a cube's maximum is the maximum along each axis in turn: 3k comparisons a voxel
    instead of k^3)."""
    k = 2 * voxels + 1
    x = background.float()
    for kernel in ((k, 1, 1), (1, k, 1), (1, 1, k)):
        x = F.max_pool3d(x, kernel, stride=1, padding=tuple(n // 2 for n in kernel))
    return x > 0


def estimate_contrast_map(fixed: torch.Tensor, moving: torch.Tensor, moving_background: torch.Tensor | None = None,
                          fixed_background: torch.Tensor | None = None) -> ContrastMap:
    """The conditional mean of ``fixed`` given ``moving`` over the voxels where neither is
    background, for ``(B, 1, D, H, W)`` images on one grid that are already roughly aligned
    (the better the alignment, the sharper the map). Per sample: the moving foreground's
    robust range cut into :data:`BINS` bins, each voxel counted in its two nearest bins
    (linear weights), the sums smoothed over :data:`SMOOTH_BINS` bins, bins with fewer
    than :data:`MIN_COUNT` voxels interpolated from their neighbours.

    Two tables: the interior's, over the voxels inside both foregrounds and off both rims,
    and the moving rim's, over its rim voxels whatever the fixed image holds there
    (background included: a rim voxel is part background). A rim too thin to fill the
    bins takes the interior's table."""
    s = sub_lattice_stride(fixed.shape[2:], MAX_ESTIMATE_VOXELS)
    sub = (slice(None), slice(None)) + (slice(None, None, s),) * 3
    f, m = fixed[sub].float(), moving[sub].float()
    fb = background_mask(f) if fixed_background is None else fixed_background[sub]
    mb = background_mask(m) if moving_background is None else moving_background[sub]
    rim_voxels = max(1, round(RIM_VOXELS / s))  # the rim's width on the subsampled grid
    near_f, near_m = _near_background(fb, rim_voxels), _near_background(mb, rim_voxels)
    b = f.shape[0]
    tables, rim_tables, los, his, bgs, fits = [], [], [], [], [], []
    for i in range(b):
        fg_f, fg_m = ~fb[i, 0], ~mb[i, 0]
        both = fg_f & fg_m & ~near_f[i, 0] & ~near_m[i, 0]  # the interiors
        if int(both.sum()) < BINS:  # objects too thin for an interior: the rims too
            both = fg_f & fg_m
        if int(both.sum()) < BINS:  # no overlap: fall back on the foregrounds' own voxels
            both = fg_m
        mv, fv = m[i, 0][both], f[i, 0][both]
        if mv.numel() == 0:  # a moving image that is all background: leave it as it is
            mv, fv = m[i, 0].flatten(), m[i, 0].flatten()
        sample = mv if mv.numel() <= 2 ** 20 else mv[:: -(-mv.numel() // 2 ** 20)]
        q = torch.quantile(sample, torch.tensor([p / 100.0 for p in RANGE_PERCENTILES], device=mv.device))
        lo, hi = float(q[0]), float(q[1])
        if not hi > lo:
            lo, hi = float(mv.min()), float(mv.max()) + 1e-6
        table = _conditional_mean(mv, fv, lo, hi)
        fits.append(_correlation_ratio(mv, fv, lo, hi))
        rim = fg_m & near_m[i, 0]
        rim_table = _conditional_mean(m[i, 0][rim], f[i, 0][rim], lo, hi) if int(rim.sum()) >= BINS else None
        tables.append(torch.as_tensor(table, dtype=torch.float32))
        rim_tables.append(torch.as_tensor(table if rim_table is None else rim_table, dtype=torch.float32))
        los.append(lo)
        his.append(hi)
        bg_f = f[i, 0][fb[i, 0]]
        bgs.append(float(bg_f.median()) if bg_f.numel() else float(background_level(f[i:i + 1])[0]))
    dev = fixed.device
    return ContrastMap(torch.stack(tables).to(dev), torch.stack(rim_tables).to(dev), torch.tensor(los, device=dev),
                       torch.tensor(his, device=dev), torch.tensor(bgs, device=dev), torch.tensor(fits, device=dev))


def _conditional_mean(mv: torch.Tensor, fv: torch.Tensor, lo: float, hi: float) -> np.ndarray:
    """``(BINS,)``: the mean of ``fv`` per bin of ``mv`` over ``[lo, hi]`` (1-D tensors,
    one value per voxel), as :func:`estimate_contrast_map` says."""
    pos = _bin_position(mv, lo, hi)
    i0 = pos.floor().long().clamp(max=BINS - 2)
    frac = pos - i0
    count = torch.zeros(BINS, dtype=torch.float64, device=mv.device)
    total = torch.zeros(BINS, dtype=torch.float64, device=mv.device)
    for idx, w in ((i0, 1 - frac), (i0 + 1, frac)):
        count.index_add_(0, idx, w.double())
        total.index_add_(0, idx, (w * fv).double())
    count, total = _smooth(count), _smooth(total)
    ok = (count >= MIN_COUNT).cpu().numpy()
    means = (total / count.clamp_min(1e-12)).cpu().numpy()
    centres = np.linspace(0.0, 1.0, BINS)
    if not ok.any():
        return np.full(BINS, float(fv.mean()))
    return np.interp(centres, centres[ok], means[ok])


def _correlation_ratio(mv: torch.Tensor, fv: torch.Tensor, lo: float, hi: float) -> float:
    """The share of ``fv``'s variance explained by its mean per bin of ``mv`` (:data:`BINS`
    bins over ``[lo, hi]``, nearest bin): 1 - within-bin / total sum of squares."""
    if fv.numel() < 2:
        return 0.0
    idx = _bin_position(mv, lo, hi).round().long()
    f = fv.double()
    count = torch.zeros(BINS, dtype=torch.float64, device=f.device).index_add_(0, idx, torch.ones_like(f))
    total = torch.zeros(BINS, dtype=torch.float64, device=f.device).index_add_(0, idx, f)
    within = float(((f - (total / count.clamp_min(1))[idx]) ** 2).sum())
    spread = float(((f - f.mean()) ** 2).sum())
    return 1.0 - within / spread if spread > 0 else 1.0


def _choose(use_b: torch.Tensor, a: ContrastMap, b: ContrastMap) -> ContrastMap:
    """Per sample, ``b``'s map where ``use_b`` ``(B,)`` holds, else ``a``'s."""
    def pick(x, y):
        return torch.where(use_b.view(-1, *([1] * (x.dim() - 1))), y, x)

    return ContrastMap(*(pick(getattr(a, f.name), getattr(b, f.name)) for f in fields(ContrastMap)))


def _smooth(x: torch.Tensor) -> torch.Tensor:
    if SMOOTH_BINS <= 0:
        return x
    r = int(np.ceil(3 * SMOOTH_BINS))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=x.dtype, device=x.device) / SMOOTH_BINS) ** 2)
    return F.conv1d(x.view(1, 1, -1), (k / k.sum()).view(1, 1, -1), padding=r).view(-1)


def match_contrast(fixed: torch.Tensor, moving: torch.Tensor, disp: torch.Tensor | None = None) -> torch.Tensor:
    """``moving`` ``(B, 1, D, H, W)`` in the contrast of ``fixed`` (same grid): the
    :class:`ContrastMap` estimated from ``fixed`` and ``moving`` pulled through ``disp``
    (``(B, 3, D, H, W)`` voxels, the alignment found so far; ``None``: as they lie),
    applied to ``moving`` itself."""
    with torch.no_grad():
        aligned = moving if disp is None else warp(moving, disp, mode="linear", padding="border")
        return estimate_contrast_map(fixed, aligned)(moving)


def map_both_ways(fixed: torch.Tensor, moving: torch.Tensor, disp: torch.Tensor, smooth: float = 0.0,
                  backgrounds: tuple[torch.Tensor, torch.Tensor] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pair put into one contrast both ways through maps estimated from the alignment
    ``disp`` gives: ``(fixed_mapped, moving_mapped, fixed_background)``, the fixed image in
    the moving one's contrast, the moving image in the fixed one's (each on its own grid,
    as :func:`match_contrast` maps one way) and the fixed image's :func:`background_mask`.
    Each image's background is found once for both maps; ``backgrounds``: the fixed and the
    moving image's :func:`background_mask`, when already at hand (a caller mapping the same
    pair again from a better alignment).

    ``smooth`` (voxels, 0: off): the moving image's map is estimated from the fixed image
    and the aligned moving one both smoothed by a Gaussian of this width, where its
    unsmoothed map is nearly a function (:data:`SMOOTH_FIT`). Smoothed, an alignment error
    of a voxel or two moves each voxel's pair of intensities less far from the map, and the
    conditional mean is less pulled towards the mean; where the map is ambiguous, smoothing
    mixes tissues that the map cannot tell apart. Measured, not derived, and for the moving
    image's map only (docs/models.md): the same for the fixed image's map lowered Dice.

    Tensors: ``(B, 1, D, H, W)`` images on one grid; ``disp`` ``(B, 3, D, H, W)`` pull field,
    voxels."""
    with torch.no_grad():
        aligned = warp(moving, disp, mode="linear", padding="border")
        bf, bm = backgrounds if backgrounds is not None else (background_mask(fixed), background_mask(moving))
        ba = background_mask(aligned)
        fixed_mapped = estimate_contrast_map(aligned, fixed, moving_background=bf, fixed_background=ba)(fixed, bf)
        moving_map = estimate_contrast_map(fixed, aligned, moving_background=ba, fixed_background=bf)
        nearly_function = moving_map.fit >= SMOOTH_FIT
        if smooth > 0 and bool(nearly_function.any()):
            smoothed = estimate_contrast_map(gaussian_blur(fixed, smooth), gaussian_blur(aligned, smooth),
                                             moving_background=ba, fixed_background=bf)
            moving_map = _choose(nearly_function, moving_map, smoothed)
        moving_mapped = moving_map(moving, bm)
    return fixed_mapped, moving_mapped, bf


def refine_across_contrasts(fixed: torch.Tensor, moving: torch.Tensor, disp: torch.Tensor,
                            **options) -> torch.Tensor:
    """:func:`~ddmr_core.spatial.refine.refine_field` for a pair of two contrasts. Its NCC
    needs one, so the pair is put into one both ways, through maps estimated from the
    alignment ``disp`` gives: the fixed image into the moving one's contrast and the moving
    image into the fixed one's (:func:`map_both_ways`). The refinement then warps two
    channels, the moving image and the moving image mapped, against the fixed image mapped
    and the fixed image, under one NCC (both channels pooled).

    Why both ways: a map goes well from the image whose intensity tells the tissues apart
    to the other. A T1 orders CSF, grey and white matter, so a PD or FLAIR intensity is
    nearly a function of the T1's, while the converse is not (in a PD scan CSF and a
    grey/white-matter mixture share a value, and the conditional mean of the T1 there is
    a blend that is neither). Which image that is depends on the pair (the fixed image
    may be the T1 or the PD), and neither the maps' own fit (their correlation ratios) nor
    the mutual information of the two results told it reliably (docs/models.md); pooled,
    no way has to be chosen.

    Tensors: ``(B, 1, D, H, W)`` images on one grid; ``disp`` ``(B, 3, D, H, W)`` pull field,
    voxels; ``options``: :func:`~ddmr_core.spatial.refine.refine_field`'s. Returns the
    refined field, ``(B, 3, D, H, W)``."""
    from .refine import refine_field

    fixed_mapped, moving_mapped, _ = map_both_ways(fixed, moving, disp)
    return refine_field(torch.cat([fixed_mapped, fixed], 1), torch.cat([moving, moving_mapped], 1), disp,
                        **options)
