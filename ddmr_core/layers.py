"""Building blocks shared by backbones.

:class:`Conv3d` is ``torch.nn.Conv3d`` with one change, on the CPU only: it always runs
oneDNN's (MKLDNN's) convolution. PyTorch picks between oneDNN and its generic
``slow_conv3d`` by a size rule meant for 2-D images: with a batch of one it uses the slow
kernel whenever ``channels x depth x height < 20480``, which is most layers of a light
registration U-Net at 32^3-64^3 (batch 1 is how the paper trains and how every pair is
registered). There the slow kernel is 10-15x slower than oneDNN for the same result
(``(1, 16, 32^3) -> 16`` channels: 34 ms against 2.3 ms on a 2-core CPU). The
backward pass is PyTorch's own either way. Parameters and ``state_dict`` keys are those
of ``nn.Conv3d``, so checkpoints are interchangeable.
"""

from __future__ import annotations

import torch
from torch import nn


def _onednn_usable(x: torch.Tensor, conv: nn.Conv3d) -> bool:
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and conv.weight.dtype == torch.float32
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and not torch.is_autocast_enabled("cpu")  # autocast would not cast a direct call
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        and hasattr(torch, "mkldnn_convolution")
    )


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` that uses oneDNN on the CPU whatever the input size (see the module
    docstring); elsewhere (GPU, other dtypes, autocast, padding modes) it is ``nn.Conv3d``.

    ``(B, C_in, D, H, W)`` -> ``(B, C_out, D', H', W')`` as ``nn.Conv3d``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _onednn_usable(x, self):
            return super().forward(x)
        return torch.mkldnn_convolution(
            x.contiguous(), self.weight, self.bias, list(self.padding), list(self.stride),
            list(self.dilation), self.groups,
        )

