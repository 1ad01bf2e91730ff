"""ddmr_core.layers: the oneDNN Conv3d must compute exactly what nn.Conv3d computes."""

import pytest
import torch
import torch.nn.functional as F

from ddmr_core.layers import Conv3d


@pytest.mark.parametrize("cin,cout,size", [(2, 16, 16), (16, 16, 8), (16, 3, 8)])
def test_conv3d_matches_torch_forward_and_gradients(cin, cout, size):
    # batch 1 and few channels: the shapes for which PyTorch itself picks slow_conv3d
    torch.manual_seed(0)
    conv = Conv3d(cin, cout, kernel_size=3, padding=1)
    x = torch.randn(1, cin, size, size, size, requires_grad=True)
    out = conv(x)
    ref = F.conv3d(x, conv.weight, conv.bias, padding=1)
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
