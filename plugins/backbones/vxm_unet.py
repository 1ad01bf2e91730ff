"""``vxm_unet``: the paper's modified VoxelMorph U-Net (section 2.3, Fig. 1).

Architecture (defaults are the paper's):

* input: fixed and moving concatenated, ``(B, 2, D, H, W)``;
* encoder: one block per level with ``widths[i]`` filters (32, 64, 128, 256, 512, 1024):
  3x3x3 convolution + LeakyReLU (kept as the skip connection), then max pooling stride 2;
* decoder, symmetric: per level from the deepest, 3x3x3 convolution + LeakyReLU with
  ``widths[i]`` filters, nearest-neighbour upsampling x2, concatenation with the skip;
* head: two 16-filter 3x3x3 convolutions with LeakyReLU and a 3-filter output
  convolution initialised small (near-identity start);
* options: ``half_res`` predicts the field at half resolution (the last upsampling and
  skip are dropped) and upsamples it (vectors x2); ``integration_steps > 0`` treats the
  output as a stationary velocity field integrated by scaling and squaring
  (diffeomorphic).

The input grid must be divisible by ``2 ** len(widths)`` along every axis.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ddmr_core.errors import ConfigError
from ddmr_core.layers import Conv3d

from .integration import FieldOutput, check_pair, check_size, flow_conv

PAPER_WIDTHS = (32, 64, 128, 256, 512, 1024)
PAPER_HEAD = (16, 16)


def _conv_act(cin: int, cout: int, slope: float) -> nn.Sequential:
    return nn.Sequential(Conv3d(cin, cout, kernel_size=3, padding=1), nn.LeakyReLU(slope))


class VxmUNet(nn.Module):
    """Args:
        widths: filters per level, shallowest first (its length is the depth).
        head: filters of the head convolutions before the 3-filter output.
        size: expected input grid ``(D, H, W)`` (the ``SIZE`` macro); checked at build.
        half_res: predict the field at half resolution and upsample it.
        integration_steps: scaling-and-squaring steps (0: plain displacement).
        slope: LeakyReLU negative slope (0.2 as voxelmorph).
        in_channels: channels of fixed + moving together (2 for one-channel images).

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
    ):
        super().__init__()
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
        self.half_res = bool(half_res)

        self.encoder = nn.ModuleList()
        cin = in_channels
        for w in widths:
            self.encoder.append(_conv_act(cin, w, slope))
            cin = w
        self.pool = nn.MaxPool3d(2)

        # Decoder level i (deepest first) sees the previous decoder output (or the
        # pooled bottleneck) and, after upsampling, is concatenated with skip i.
        # With half_res the shallowest level stops before its upsampling and skip.
        self.decoder = nn.ModuleList()
        for i in reversed(range(self.levels)):
            self.decoder.append(_conv_act(cin, widths[i], slope))
            cin = widths[i] if (self.half_res and i == 0) else 2 * widths[i]
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")

        layers = []
        for h in head:
            layers += [Conv3d(cin, h, kernel_size=3, padding=1), nn.LeakyReLU(slope)]
            cin = h
        layers.append(flow_conv(cin))
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
        for block, i in zip(self.decoder, reversed(range(self.levels))):
            x = block(x)
            if self.half_res and i == 0:
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


def vxm_unet(
    widths: Sequence[int] = PAPER_WIDTHS,
    head: Sequence[int] = PAPER_HEAD,
    size: Sequence[int] | None = None,
    half_res: bool = False,
    integration_steps: int = 0,
    slope: float = 0.2,
) -> VxmUNet:
    """Factory registered as ``ddmr.backbones.vxm_unet`` (see :class:`VxmUNet`)."""
    return VxmUNet(widths, head, size, half_res, integration_steps, slope)
