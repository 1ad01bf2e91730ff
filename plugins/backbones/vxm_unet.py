"""``vxm_unet``: the paper's modified VoxelMorph U-Net (section 2.3, Fig. 1).

Architecture (defaults are the paper's):

* input: fixed and moving concatenated, ``(B, 2, D, H, W)``;
* encoder: one block per level with ``widths[i]`` filters (32, 64, 128, 256, 512, 1024):
  3x3x3 convolution + LeakyReLU (kept as the skip connection), then max pooling stride 2;
* decoder, symmetric: per level from the deepest, 3x3x3 convolution + LeakyReLU with
  ``widths[i]`` filters, nearest-neighbour upsampling x2, concatenation with the skip;
* head: two 16-filter 3x3x3 convolutions with LeakyReLU and a 3-filter output
  convolution initialised small (near-identity start);
* options: ``output_stride`` 2, 4, ... predicts the field on a grid that much coarser
  (the decoder stops that many levels early, before its last upsamplings and skips) and
  upsamples it, vectors scaled (``half_res`` is stride 2); ``integration_steps > 0``
  treats the output as a stationary velocity field integrated by scaling and squaring
  (diffeomorphic).

The input grid must be divisible by ``2 ** len(widths)`` along every axis.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ddmr_core.errors import ConfigError
from ddmr_core.spatial.layers import Conv3d

from .integration import FieldOutput, check_pair, check_size, flow_conv

PAPER_WIDTHS = (32, 64, 128, 256, 512, 1024)
PAPER_HEAD = (16, 16)


NORMS = (None, "group")


def _conv_act(cin: int, cout: int, slope: float, norm: str | None = None,
              init_scale: float = 1.0) -> nn.Sequential:
    """3x3x3 convolution (+ normalisation) + LeakyReLU. ``norm="group"``: GroupNorm with
    groups of (up to) 8 channels' worth, so it also works on a 1-voxel grid, where
    instance normalisation would zero every channel; the convolution's initial weights and
    bias are then multiplied by ``init_scale`` (the block's output does not change)."""
    conv = Conv3d(cin, cout, kernel_size=3, padding=1)
    layers = [conv]
    if norm == "group":
        if init_scale != 1.0:
            with torch.no_grad():
                conv.weight.mul_(float(init_scale))
                conv.bias.mul_(float(init_scale))
        layers.append(nn.GroupNorm(math.gcd(cout, 8), cout))
    return nn.Sequential(*layers, nn.LeakyReLU(slope))


class VxmUNet(nn.Module):
    """Args:
        widths: filters per level, shallowest first (its length is the depth).
        head: filters of the head convolutions before the 3-filter output.
        size: expected input grid ``(D, H, W)`` (the ``SIZE`` macro); checked at build.
        half_res: predict the field at half resolution and upsample it (``output_stride=2``).
        norm: ``None`` (the paper) or ``"group"``: GroupNorm after every convolution but
            the output layer. The scale of every layer's output then no longer depends on
            its weights' norm, so an Adam step, which moves every weight by about the
            learning rate, cannot multiply the field by growing all layers at once
            (``docs/research_notes.md``, "Training that learns").
        output_stride: predict the field on a grid ``output_stride`` times coarser per
            axis (a power of 2, at most ``2 ** (len(widths) - 1)``) and upsample it. Fewer
            outputs, each backed by more voxels: smooth fields are learnt in fewer steps
            and cost less (``docs/research_notes.md``, "Training that learns").
        integration_steps: scaling-and-squaring steps (0: plain displacement).
        slope: LeakyReLU negative slope (0.2 as voxelmorph).
        in_channels: channels of fixed + moving together (2 for one-channel images).
        flow_std: standard deviation of the output convolution's initial weights (zero
            bias); voxelmorph's 1e-5 starts from a near-identity transform.
        init_scale: with ``norm="group"``, the normalised convolutions' initial weights
            and biases are PyTorch's default times this (the same function). Their output does not depend on their
            scale, and an Adam step moves each weight by about the learning rate whatever
            its size, so a larger start turns them by a smaller angle per step
            (``docs/training_notes.md``).

    ``forward(fixed, moving)``: ``(B, C, D, H, W)`` each -> ``(B, 3, D, H, W)`` voxel pull field.
    """

    def __init__(
        self,
        widths: Sequence[int] = PAPER_WIDTHS,
        head: Sequence[int] = PAPER_HEAD,
        size: Sequence[int] | None = None,
        half_res: bool = False,
        integration_steps: int = 0,
        slope: float = 0.2,
        in_channels: int = 2,
        output_stride: int = 1,
        norm: str | None = None,
        flow_std: float = 1e-5,
        init_scale: float = 1.0,
    ):
        super().__init__()
        if not init_scale > 0:
            raise ConfigError(f"vxm_unet: init_scale must be > 0, got {init_scale!r}")
        if not flow_std >= 0:
            raise ConfigError(f"vxm_unet: flow_std must be >= 0, got {flow_std!r}")
        widths = [int(w) for w in widths]
        head = [int(h) for h in head]
        if not widths or min(widths) < 1:
            raise ConfigError(f"vxm_unet: widths must be a non-empty list of positive ints, got {widths}")
        if head and min(head) < 1:
            raise ConfigError(f"vxm_unet: head widths must be positive, got {head}")
        self.widths, self.head_widths = tuple(widths), tuple(head)
        self.levels = len(widths)
        self.divisor = 2 ** self.levels
        self.size = check_size(size, self.divisor, f"vxm_unet ({self.levels} levels)")
        if norm not in NORMS:
            raise ConfigError(f"vxm_unet: norm must be one of {NORMS}, got {norm!r}")
        self.norm = norm
        stride = 2 if half_res and int(output_stride) == 1 else int(output_stride)
        if stride < 1 or stride & (stride - 1) or stride > 2 ** (self.levels - 1):
            raise ConfigError(f"vxm_unet: output_stride must be a power of 2 up to {2 ** (self.levels - 1)} "
                              f"for {self.levels} levels, got {output_stride}")
        self.output_stride = stride
        self.half_res = stride == 2
        # the decoder's last level: 0 (full resolution), or the level whose block runs on
        # the output grid, after which it stops (no upsampling, no skip)
        self.last_level = max(stride.bit_length() - 2, 0)

        self.encoder = nn.ModuleList()
        cin = in_channels
        for w in widths:
            self.encoder.append(_conv_act(cin, w, slope, norm, init_scale))
            cin = w
        self.pool = nn.MaxPool3d(2)

        # Decoder level i (deepest first) sees the previous decoder output (or the
        # pooled bottleneck) and, after upsampling, is concatenated with skip i.
        # With output_stride > 1 it stops at last_level, before its upsampling and skip.
        self.decoder = nn.ModuleList()
        for i in reversed(range(self.last_level, self.levels)):
            self.decoder.append(_conv_act(cin, widths[i], slope, norm, init_scale))
            cin = widths[i] if (stride > 1 and i == self.last_level) else 2 * widths[i]
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")

        layers = []
        for h in head:
            layers += list(_conv_act(cin, h, slope, norm, init_scale))
            cin = h
        layers.append(flow_conv(cin, float(flow_std)))
        self.head = nn.Sequential(*layers)
        self.output = FieldOutput(integration_steps)

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        check_pair(fixed, moving, self.divisor, f"vxm_unet ({self.levels} levels)")
        x = torch.cat([fixed, moving], dim=1)
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        for block, i in zip(self.decoder, reversed(range(self.last_level, self.levels))):
            x = block(x)
            if self.output_stride > 1 and i == self.last_level:
                break
            x = torch.cat([self.upsample(x), skips[i]], dim=1)
        return self.output(self.head(x), fixed.shape[2:])

    def parameter_groups(self) -> dict:
        """``{"encoder": [...], "decoder": [...]}`` for freezing in transfer learning;
        the head counts as decoder."""
        return {
            "encoder": list(self.encoder.parameters()),
            "decoder": list(self.decoder.parameters()) + list(self.head.parameters()),
        }


#: the factory registered as ``ddmr.backbones.vxm_unet``: the class itself, so its parameters
#: are configured in one place (``ddmr.backbones.vxm_unet.widths = ...``)
vxm_unet = VxmUNet
