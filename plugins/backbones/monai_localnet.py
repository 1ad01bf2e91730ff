"""``monai_localnet``: MONAI's LocalNet registration network as a ddmr backbone.

Shows that backbones are interchangeable from a config: swapping
``@ddmr.backbones.vxm_unet()`` for ``@ddmr.backbones.monai_localnet()`` is the only change.
LocalNet (Hu et al., the weakly-supervised registration the paper follows) predicts a
dense displacement from the concatenated pair; ``monai.networks.nets.LocalNet`` uses
the same voxel, pull, channel-per-axis convention as ddmr (MONAI ``Warp``).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ddmr_core.errors import ConfigError

from .integration import FieldOutput, check_pair, check_size


class MonaiLocalNet(nn.Module):
    """Args:
        channels: filters of the first level (doubled at each deeper level).
        levels: number of down-sampling levels (LocalNet ``extract_levels`` 0..levels).
        size: expected input grid ``(D, H, W)`` (the ``SIZE`` macro); checked at build.
        integration_steps: scaling-and-squaring steps (0: plain displacement).

    ``forward(fixed, moving)`` -> ``(B, 3, D, H, W)`` voxel pull field.
    """

    def __init__(
        self,
        channels: int = 16,
        levels: int = 3,
        size: Sequence[int] | None = None,
        integration_steps: int = 0,
    ):
        super().__init__()
        from monai.networks.nets import LocalNet

        if levels < 1 or channels < 1:
            raise ConfigError(f"monai_localnet: levels and channels must be >= 1, got {levels}, {channels}")
        self.levels = int(levels)
        self.divisor = 2 ** self.levels
        self.size = check_size(size, self.divisor, f"monai_localnet ({self.levels} levels)")
        # zeros for the output kernel: the identity transform at start, as vxm_unet's
        # small-initialised output layer.
        self.net = LocalNet(
            spatial_dims=3,
            in_channels=2,
            num_channel_initial=int(channels),
            extract_levels=tuple(range(self.levels + 1)),
            out_kernel_initializer="zeros",
            out_channels=3,
        )
        self.output = FieldOutput(integration_steps)

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        check_pair(fixed, moving, self.divisor, f"monai_localnet ({self.levels} levels)")
        field = self.net(torch.cat([fixed, moving], dim=1))
        return self.output(field, fixed.shape[2:])

    def parameter_groups(self) -> dict:
        """Encoder: LocalNet's down-sampling blocks and bottom block; decoder: the rest."""
        enc, dec = [], []
        for name, p in self.net.named_parameters():
            (enc if name.startswith(("encode_", "bottom_block")) else dec).append(p)
        return {"encoder": enc, "decoder": dec}


def monai_localnet(
    channels: int = 16,
    levels: int = 3,
    size: Sequence[int] | None = None,
    integration_steps: int = 0,
) -> MonaiLocalNet:
    """Factory registered as ``ddmr.backbones.monai_localnet`` (see :class:`MonaiLocalNet`)."""
    return MonaiLocalNet(channels, levels, size, integration_steps)
