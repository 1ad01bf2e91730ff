"""ddmr_core.spatial.layers: the oneDNN Conv3d must compute exactly what nn.Conv3d computes."""

import pytest
import torch
import torch.nn.functional as F

from ddmr_core.spatial.layers import Conv3d


@pytest.mark.parametrize("batch,cin,cout,size,kernel,padding", [
    (1, 2, 16, 16, 3, 1), (1, 16, 16, 8, 3, 1), (1, 16, 3, 8, 3, 1),  # PyTorch's slow_conv3d shapes
    (2, 4, 8, 8, 3, 1),  # the weight gradient sums over the batch
    (1, 4, 8, 9, 3, 0), (1, 4, 8, 7, 1, 0), (1, 3, 5, 8, (3, 1, 5), (1, 0, 2)),  # other paddings, kernels
])
def test_conv3d_matches_torch_forward_and_gradients(batch, cin, cout, size, kernel, padding):
    torch.manual_seed(0)
    conv = Conv3d(cin, cout, kernel_size=kernel, padding=padding)
    x = torch.randn(batch, cin, size, size + 1, size + 2, requires_grad=True)
    out = conv(x)
    ref = F.conv3d(x, conv.weight, conv.bias, padding=padding)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    g = torch.randn_like(ref)
    got = torch.autograd.grad(out, [x, conv.weight, conv.bias], g)
    want = torch.autograd.grad(ref, [x, conv.weight, conv.bias], g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-4)


def test_conv3d_is_a_drop_in_for_nn_conv3d_checkpoints():
    plain = torch.nn.Conv3d(4, 8, kernel_size=3, padding=1)
    mine = Conv3d(4, 8, kernel_size=3, padding=1)
    mine.load_state_dict(plain.state_dict())
    x = torch.randn(1, 4, 6, 6, 6)
    with torch.inference_mode():
        torch.testing.assert_close(mine(x), plain(x), atol=1e-5, rtol=1e-5)


def test_conv3d_falls_back_where_onednn_does_not_apply():
    # float64 and a non-zero padding mode take nn.Conv3d's own path
    conv = Conv3d(2, 3, kernel_size=3, padding=1, padding_mode="replicate").double()
    x = torch.randn(1, 2, 5, 5, 5, dtype=torch.float64)
    ref = F.conv3d(F.pad(x, (1,) * 6, mode="replicate"), conv.weight, conv.bias)
    torch.testing.assert_close(conv(x), ref)


def test_onednn_backward_sums_the_weight_gradient_over_the_batch():
    # Conv3d uses this path for batch 1 only; the autograd function itself is general
    from ddmr_core.spatial.layers import _OneDNNConv3d

    torch.manual_seed(1)
    x = torch.randn(3, 4, 6, 7, 8, requires_grad=True)
    w = torch.randn(5, 4, 3, 3, 3, requires_grad=True)
    b = torch.randn(5, requires_grad=True)
    out = _OneDNNConv3d.apply(x, w, b, [1, 1, 1])
    ref = F.conv3d(x, w, b, padding=1)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    g = torch.randn_like(ref)
    for a, c in zip(torch.autograd.grad(out, [x, w, b], g), torch.autograd.grad(ref, [x, w, b], g)):
        torch.testing.assert_close(a, c, atol=1e-3, rtol=1e-4)


def test_frozen_weights_get_no_gradient_and_inputs_still_do():
    # two-step finetuning freezes the encoder: its convolutions must pass gradients through
    conv = Conv3d(2, 4, kernel_size=3, padding=1)
    conv.requires_grad_(False)
    x = torch.randn(1, 2, 6, 6, 6, requires_grad=True)
    conv(x).sum().backward()
    assert conv.weight.grad is None and conv.bias.grad is None
    ref = torch.autograd.grad(F.conv3d(x, conv.weight, conv.bias, padding=1).sum(), x)[0]
    torch.testing.assert_close(x.grad, ref, atol=1e-4, rtol=1e-4)
