"""Building blocks shared by backbones.

:class:`Conv3d` is ``torch.nn.Conv3d`` with one change, on the CPU only. PyTorch picks
between oneDNN (MKLDNN) and its generic ``slow_conv3d`` by a size rule meant for 2-D
images: with a batch of one it takes the slow kernel whenever ``channels x depth x height
<= 20480``, which is most layers of a light registration U-Net at 32^3-64^3 (batch 1 is
how the paper trains and how every pair is registered), and its backward follows the same
rule. There the slow kernel is many times slower than oneDNN for the same result
(``benchmarks/cpu_kernels.py`` times both). For those calls
:class:`Conv3d` runs oneDNN forward and backward (:class:`_OneDNNConv3d`): the input
gradient is the convolution of the output gradient with the flipped, transposed kernel,
the weight gradient the convolution of the input with the output gradient, batch and
channels swapped. Parameters and ``state_dict`` keys are those of ``nn.Conv3d``, so
checkpoints are interchangeable.
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


_ONES = [1, 1, 1]


class _OneDNNConv3d(torch.autograd.Function):
    """Stride-1, undilated, single-group 3-D convolution with oneDNN forward and backward.

    With ``y = x * w`` (cross-correlation, zero padding ``p``, kernel ``k``):
    ``dL/dx = dL/dy * flip(w)^T`` with padding ``k - 1 - p`` and ``dL/dw[o, i] =
    x[:, i] * dL/dy[:, o]`` summed over the batch, i.e. a convolution of ``x`` with batch
    and channels swapped by ``dL/dy`` likewise swapped (padding ``p``)."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding):
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        ctx.has_bias = bias is not None
        return torch.mkldnn_convolution(x, weight, bias, padding, _ONES, _ONES, 1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            back = [k - 1 - p for k, p in zip(weight.shape[2:], ctx.padding)]
            flipped = weight.transpose(0, 1).flip(2, 3, 4).contiguous()
            gx = torch.mkldnn_convolution(grad, flipped, None, back, _ONES, _ONES, 1)
        if ctx.needs_input_grad[1]:
            gw = torch.mkldnn_convolution(
                x.transpose(0, 1).contiguous(), grad.transpose(0, 1).contiguous(), None, ctx.padding, _ONES, _ONES, 1
            ).transpose(0, 1)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = grad.sum((0, 2, 3, 4))
        return gx, gw, gb, None


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` that runs oneDNN, forward and backward, on the CPU where PyTorch would
    run its slow kernel for a light layer (see the module docstring and
    :meth:`replaces_slow_kernel`); everywhere else (GPU, other dtypes, autocast, padding
    modes, strides, wide layers) it is ``nn.Conv3d``.

    ``(B, C_in, D, H, W)`` -> ``(B, C_out, D', H', W')`` as ``nn.Conv3d``."""

    def replaces_slow_kernel(self, x: torch.Tensor) -> bool:
        """Whether this call takes :class:`_OneDNNConv3d`: PyTorch would pick
        ``slow_conv3d`` (its rule: batch 1 and ``C x D x H <= 20480``), the layer is light
        (``C_in x C_out <= 2^16``) and a plain stride-1 convolution: there oneDNN is the
        faster kernel, forward and backward. Wide ones are left to PyTorch: for the paper
        network's deep layers (up to 1024 channels at 2^3) oneDNN was the slower one
        (``benchmarks/cpu_kernels.py``)."""
        return (
            _onednn_usable(x, self)
            and x.shape[0] == 1
            and x.shape[1] * x.shape[2] * x.shape[3] <= 20480
            and self.in_channels * self.out_channels <= 2**16
            and tuple(self.stride) == (1, 1, 1)
            and tuple(self.dilation) == (1, 1, 1)
            and self.groups == 1
            and all(int(p) <= k - 1 for p, k in zip(self.padding, self.kernel_size))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.replaces_slow_kernel(x):
            return _OneDNNConv3d.apply(x.contiguous(), self.weight, self.bias, [int(p) for p in self.padding])
        return super().forward(x)
