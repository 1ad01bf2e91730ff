"""``synth_contrast``: a new MR contrast for every image, so a network learns geometry, not
one contrast (beyond the paper, which registers T1 to T1).

SynthMorph (Hoffmann et al.) showed that a registration network trained on images whose
contrast is drawn at random for every sample registers pairs of any contrast. This step
draws, for the fixed image and the moving source independently (``target="both"``), a
contrast made of:

1. **a remap of the image's own intensities** by a random piecewise-linear curve through
   ``knots`` points of [0, 1] with values drawn uniformly in [0, 1]: the partial-volume
   texture of the scan is kept, and the curve can invert the image or be non-monotonic
   (grey matter darker than both white matter and CSF, say);
2. **a random intensity per tissue class** from the label maps when the state has them
   (every label and the background get a value drawn in [0, 1]), blurred by one voxel so
   that class boundaries are not steps; mixed with (1) by a weight ``U(0, 1)``;
3. **a background** that stays background: dark (``U(0, 0.1)``, as air in any MR scan) or,
   with probability ``bright_background``, bright (``U(0.9, 1)``, an inverted image),
   where the label maps say background (or, without them, where the source is within 2 %
   of its minimum); a background drawn like a tissue would hide the head's outline, which
   no real contrast does;
4. **a smooth multiplicative bias field** ``exp(b)`` over the head (not the background),
   ``b`` a ``4^3`` lattice of normal values (standard deviation ``U(0, max_bias)``)
   upsampled to the image;
5. **blur**, a Gaussian of standard deviation ``U(0, max_blur)`` voxels, and **noise**,
   Gaussian of standard deviation ``U(0, max_noise)``;
6. min-max scaling back to [0, 1] (what ``ddmr register``'s preprocessing does to a scan).

With probability ``1 - probability`` an image keeps its contrast, so same-contrast pairs
stay in the training mix. Intensities only: label maps, the ground-truth field and the
geometry are untouched. Place the step after ``normalize`` (it expects [0, 1]) and before
the geometric steps (it acts on the moving source, which they sample once at the end;
``ddmr_core.data.augment``).

Randomness: every number is drawn from generators of its own, seeded from the sample's
generator's seed (not its stream), so adding this step to a pipeline changes no other
step's draws: the same seed gives the same warps with and without it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import numpy as np

from ddmr_core.data.augment import check_non_negative, check_target
from ddmr_core.errors import ConfigError
from ddmr_core.spatial.filters import gaussian_blur

from .normalize import min_max

#: the bias field's lattice: smooth over the image (a few cycles at most)
BIAS_LATTICE = 4


def _own_generators(state, salt: int) -> list[torch.Generator]:
    """One CPU generator per sample, seeded from the sample generator's *seed* and
    ``salt`` (its stream is not advanced, see the module docstring)."""
    gens = []
    for g in state["generators"]:
        seq = np.random.SeedSequence([int(g.initial_seed()) & 0xFFFFFFFFFFFFFFFF, 0x5C0A7, int(salt)])
        gens.append(torch.Generator(device="cpu").manual_seed(int(seq.generate_state(1, np.uint64)[0]) >> 1))
    return gens


def _class_map(segs: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(B, 1, D, H, W)`` class index (0 background, ``1..L``) and ``L + 1`` classes, from
    one-hot float ``(B, L, ...)`` or an integer label map ``(B, 1, ...)`` (its values
    renumbered in order)."""
    if segs.is_floating_point():
        fg = segs.sum(1, keepdim=True)
        idx = segs.argmax(1, keepdim=True) + 1
        return torch.where(fg > 0.5, idx, torch.zeros_like(idx)), segs.shape[1] + 1
    values = torch.unique(segs)
    idx = torch.searchsorted(values, segs.contiguous())
    return idx, int(values.numel())


class SynthContrast(nn.Module):
    """Args:
        probability: chance that an image gets a new contrast (else it is kept).
        knots: points of the random intensity curve (>= 2; 2 is a random linear map).
        max_bias: largest standard deviation of the log bias field (0.3: up to about
            +-35 % over the image).
        max_blur: largest Gaussian blur, voxels.
        max_noise: largest noise standard deviation, on the [0, 1] scale.
        bright_background: chance of a bright background (an inverted image).
        target: ``"both"`` (default; independent draws), ``"fixed"`` or ``"moving"``.
    """

    def __init__(self, probability: float = 0.8, knots: int = 6, max_bias: float = 0.3,
                 max_blur: float = 1.0, max_noise: float = 0.03, bright_background: float = 0.15,
                 target: str = "both"):
        super().__init__()
        if not 0.0 <= float(probability) <= 1.0:
            raise ConfigError(f"augmenter 'synth_contrast': probability must be in [0, 1], got {probability!r}")
        if not 0.0 <= float(bright_background) <= 1.0:
            raise ConfigError("augmenter 'synth_contrast': bright_background must be in [0, 1], "
                              f"got {bright_background!r}")
        if int(knots) != knots or knots < 2:
            raise ConfigError(f"augmenter 'synth_contrast': knots must be an integer >= 2, got {knots!r}")
        for name, value in (("max_bias", max_bias), ("max_blur", max_blur), ("max_noise", max_noise)):
            check_non_negative("synth_contrast", name, value)
        check_target("synth_contrast", target)
        self.probability, self.knots = float(probability), int(knots)
        self.max_bias, self.max_blur, self.max_noise = float(max_bias), float(max_blur), float(max_noise)
        self.bright_background = float(bright_background)
        self.target = target

    def extra_repr(self) -> str:
        return (f"p={self.probability}, knots={self.knots}, max_bias={self.max_bias}, "
                f"max_blur={self.max_blur}, max_noise={self.max_noise}, target={self.target}")

    def synthesise(self, state, img: torch.Tensor, segs: torch.Tensor | None, salt: int) -> torch.Tensor:
        """A new contrast for each sample of ``img`` ``(B, 1, D, H, W)`` in [0, 1]."""
        b, k = img.shape[0], self.knots
        gens = _own_generators(state, salt)

        def draw(fn, dtype=torch.float32):
            return torch.stack([fn(g) for g in gens]).to(device=img.device, dtype=dtype)

        # every number for this image is drawn here, in one fixed order, per sample
        params = draw(lambda g: torch.rand(k + 7 + 32, generator=g))
        apply, values = params[:, 0], params[:, 1:k + 1]
        mix, bias_sd, blur, noise_sd = params[:, k + 1], params[:, k + 2], params[:, k + 3], params[:, k + 4]
        bright, bg_level = params[:, k + 5] < self.bright_background, params[:, k + 6]
        class_values = params[:, k + 7:k + 39]
        bias = draw(lambda g: torch.randn(BIAS_LATTICE ** 3, generator=g))

        x = img.clamp(0, 1)
        # 1. the piecewise-linear curve through (i / (k-1), values[i])
        t = x * (k - 1)
        i0 = t.floor().clamp(max=k - 2)
        w = t - i0
        i0 = i0.long().flatten(1)
        lo = values.gather(1, i0).view_as(x)
        hi = values.gather(1, i0 + 1).view_as(x)
        out = lo + w * (hi - lo)
        # 2. a value per tissue class, blurred by a voxel, mixed in
        cls = None
        if segs is not None:
            cls, n = _class_map(segs)
            if n > class_values.shape[1]:
                raise ConfigError(f"augmenter 'synth_contrast': at most {class_values.shape[1] - 1} labels, got {n - 1}")
            tissue = class_values[:, :n].gather(1, cls.flatten(1)).view_as(x).to(x.dtype)
            tissue = gaussian_blur(tissue, torch.ones(b, device=x.device))
            m = mix.view(-1, 1, 1, 1, 1).to(x.dtype)
            out = m * out + (1 - m) * tissue
        # 3. the background: dark, or bright for an inverted image (a soft edge of a voxel)
        background = (cls == 0) if cls is not None else (x <= x.flatten(1).amin(1).view(-1, 1, 1, 1, 1) + 0.02)
        weight = gaussian_blur(background.to(x.dtype), torch.ones(b, device=x.device))
        level = torch.where(bright, 0.9 + 0.1 * bg_level, 0.1 * bg_level).view(-1, 1, 1, 1, 1).to(x.dtype)
        out = weight * level + (1 - weight) * out
        # 4. smooth multiplicative bias
        lattice = (bias * bias_sd[:, None] * self.max_bias).view(b, 1, *(BIAS_LATTICE,) * 3).to(x.dtype)
        field = F.interpolate(lattice, size=x.shape[2:], mode="trilinear", align_corners=True)
        out = out * torch.exp(field * (1 - weight))  # air has no signal for the coil to bias
        # 5. blur, then noise (noise after blur: scanners add it to the acquired image)
        out = gaussian_blur(out, blur * self.max_blur)
        eps = draw(lambda g: torch.randn(x.shape[1:], generator=g), dtype=x.dtype)
        out = out + eps * (noise_sd * self.max_noise).view(-1, 1, 1, 1, 1).to(x.dtype)
        # 6. back to [0, 1]; images that keep their contrast are left as they were
        out = min_max(out)
        keep = (apply >= self.probability).view(-1, 1, 1, 1, 1)
        return torch.where(keep, img, out.to(img.dtype))

    def forward(self, state):
        # fixed and moving draw from generators of their own (salts 0 and 1): independent
        for salt, (key, seg_key) in enumerate((("fixed", "fixed_segs"), ("moving", "moving_segs"))):
            if self.target in (key, "both"):
                state[key] = self.synthesise(state, state[key], state.get(seg_key), salt)
        return state
