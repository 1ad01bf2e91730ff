"""Backbone plugins: the paper's architecture, options, parameter groups, bad input."""

import pytest
import torch
from torch import nn

from ddmr_core.errors import ConfigError, DataError
from ddmr_core.plugins.registry import Registry
from ddmr_core.spatial.fields import compose
from ddmr_plugins.backbones.integration import scaling_and_squaring
from ddmr_plugins.backbones.vxm_unet import VxmUNet

TINY = dict(widths=(4, 8, 8), head=(4, 4))


@pytest.fixture(scope="module")
def registry():
    return Registry()


def pair(shape=(16, 16, 16), b=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, *shape, generator=g), torch.rand(b, 1, *shape, generator=g)


def convs(module):
    return [m for m in module.modules() if isinstance(m, nn.Conv3d)]


def test_paper_architecture():
    net = VxmUNet()  # defaults are the paper's
    enc = convs(net.encoder)
    assert [c.out_channels for c in enc] == [32, 64, 128, 256, 512, 1024]
    assert all(c.kernel_size == (3, 3, 3) for c in convs(net))
    assert all(isinstance(b[1], nn.LeakyReLU) for b in net.encoder)
    assert net.pool.kernel_size == 2 and net.pool.stride == 2
    dec = convs(net.decoder)
    assert [c.out_channels for c in dec] == [1024, 512, 256, 128, 64, 32]  # symmetric
    # decoder input: previous decoder output concatenated with the upsampled skip
    assert [c.in_channels for c in dec] == [1024, 2048, 1024, 512, 256, 128]
    assert net.upsample.mode == "nearest" and net.upsample.scale_factor == 2
    head = convs(net.head)
    assert [c.out_channels for c in head] == [16, 16, 3]
    assert isinstance(net.head[1], nn.LeakyReLU) and isinstance(net.head[3], nn.LeakyReLU)
    assert head[-1].weight.abs().max() < 1e-3 and head[-1].bias.abs().max() == 0  # small init


@pytest.mark.parametrize("name,kw", [("vxm_unet", TINY), ("monai_localnet", dict(channels=4, levels=2))])
def test_backbones_predict_a_near_identity_field_of_the_input_grid(registry, name, kw):
    net = registry.create("backbones", name, size=(16, 16, 32), **kw)
    fixed, moving = pair((16, 16, 32), b=2)
    disp = net(fixed, moving)
    assert disp.shape == (2, 3, 16, 16, 32) and disp.dtype == torch.float32
    assert disp.abs().max() < 1e-2  # training starts near the identity
    disp.pow(2).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_widths_and_depth_are_configurable(registry):
    net = registry.create("backbones", "vxm_unet", widths=(3, 5), head=(7,))
    assert [c.out_channels for c in convs(net.encoder)] == [3, 5]
    assert [c.out_channels for c in convs(net.head)] == [7, 3]
    assert net.divisor == 4
    assert net(*pair((8, 12, 4))).shape == (1, 3, 8, 12, 4)


@pytest.mark.parametrize("name,kw", [("vxm_unet", TINY), ("monai_localnet", dict(channels=4, levels=2))])
def test_parameter_groups_partition_the_parameters(registry, name, kw):
    net = registry.create("backbones", name, **kw)
    groups = net.parameter_groups()
    assert set(groups) == {"encoder", "decoder"}
    ids = [id(p) for g in groups.values() for p in g]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in net.parameters()}
    if name == "vxm_unet":
        assert {id(p) for p in net.head.parameters()} <= {id(p) for p in groups["decoder"]}
        assert {id(p) for p in net.encoder.parameters()} == {id(p) for p in groups["encoder"]}


def _constant_output(net, value):
    """Make the output convolution predict ``value`` everywhere (zero weights, bias)."""
    out = convs(net.head)[-1]
    with torch.no_grad():
        out.weight.zero_()
        out.bias.copy_(torch.tensor(value))


def test_half_resolution_runs_the_head_at_half_size_and_doubles_vectors():
    net = VxmUNet(**TINY, half_res=True)
    seen = {}

    def record(module, inputs, output):
        seen["shape"] = tuple(output.shape)  # returns None: the output is left as is

    net.head.register_forward_hook(record)
    _constant_output(net, [0.5, -1.0, 0.25])
    disp = net(*pair((16, 16, 24)))
    assert seen["shape"] == (1, 3, 8, 8, 12)
    assert disp.shape == (1, 3, 16, 16, 24)
    # resizing a field x2 scales its vectors x2 (ARCHITECTURE: voxel units of the fixed grid)
    assert torch.allclose(disp, torch.tensor([1.0, -2.0, 0.5]).view(1, 3, 1, 1, 1).expand_as(disp), atol=1e-6)


def test_integration_of_a_constant_velocity_is_that_translation():
    net = VxmUNet(**TINY, integration_steps=7)
    _constant_output(net, [0.3, 0.0, -0.6])
    disp = net(*pair())
    assert torch.allclose(disp, torch.tensor([0.3, 0.0, -0.6]).view(1, 3, 1, 1, 1).expand_as(disp), atol=1e-5)


def test_scaling_and_squaring_gives_an_invertible_map():
    # exp(v) o exp(-v) = identity for a smooth stationary velocity field
    g = torch.stack(torch.meshgrid(*[torch.linspace(0, 1, 24)] * 3, indexing="ij"))[None]
    v = 2.0 * torch.sin(3.1416 * g.flip(1))
    fwd, inv = scaling_and_squaring(v, 7), scaling_and_squaring(-v, 7)
    inner = (slice(None), slice(None)) + (slice(4, -4),) * 3
    residual = compose(fwd, inv)[inner].abs().max()
    assert residual < 0.1 < fwd.abs().max()
    assert torch.equal(scaling_and_squaring(v, 0), v)


def test_backbone_swaps_through_gin(registry):
    import gin

    from ddmr_core.config.parsing import parse_config
    from ddmr_core.model.build import build_model
    from ddmr_plugins.backbones.monai_localnet import MonaiLocalNet

    parse_config(["designs/bl_n", "mixins/backbone/monai_localnet"],
                 bindings=["SIZE = (16, 16, 16)", "ddmr.backbones.monai_localnet.channels = 4"])
    model = build_model()
    assert isinstance(model.backbone, MonaiLocalNet)
    assert model(*pair())["disp"].shape == (1, 3, 16, 16, 16)
    gin.clear_config()


# -------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("name,kw,div", [("vxm_unet", {}, 64), ("monai_localnet", {"levels": 3}, 8)])
def test_size_not_divisible_by_2_to_the_levels_fails_at_build(registry, name, kw, div):
    with pytest.raises(ConfigError, match=rf"\(96, 96, 36\).*not divisible by {div} = 2\^levels"):
        registry.create("backbones", name, size=(96, 96, 36), **kw)


def test_bad_size_is_caught_when_a_config_builds_the_model():
    from ddmr_core.config.parsing import parse_config
    from ddmr_core.model.build import build_model

    parse_config(["designs/bl_n"], bindings=["SIZE = (24, 24, 24)"])  # default backbone: 4 levels
    with pytest.raises(ConfigError, match=r"\(24, 24, 24\).*2\^levels"):
        build_model()


def test_fixed_and_moving_of_different_shapes(registry):
    net = registry.create("backbones", "vxm_unet", **TINY)
    with pytest.raises(DataError, match="fixed and moving must have the same shape"):
        net(torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 8))
    with pytest.raises(DataError, match=r"\(16, 16, 12\) is not divisible by 8"):
        net(*pair((16, 16, 12)))


@pytest.mark.parametrize("stride, grid", [(1, 32), (2, 16), (4, 8)])
def test_output_stride_predicts_on_a_coarser_grid_and_upsamples(stride, grid):
    net = VxmUNet(widths=(4, 8, 8), head=(4,), output_stride=stride)
    seen = {}
    net.head.register_forward_hook(lambda m, i, o: seen.update(grid=o.shape[2:]))  # returns None
    fixed, moving = pair((32, 32, 32))
    assert net(fixed, moving).shape == (1, 3, 32, 32, 32)
    assert tuple(seen["grid"]) == (grid,) * 3
    # every decoder block takes part (none is left without a gradient)
    net(fixed, moving).pow(2).sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_half_res_is_output_stride_two_with_the_same_weights():
    a, b = VxmUNet(widths=(4, 8), head=(4,), half_res=True), VxmUNet(widths=(4, 8), head=(4,), output_stride=2)
    assert a.state_dict().keys() == b.state_dict().keys() and a.output_stride == b.output_stride == 2


@pytest.mark.parametrize("stride", [3, 8])
def test_output_stride_must_be_a_power_of_two_within_the_depth(stride):
    with pytest.raises(ConfigError, match="output_stride"):
        VxmUNet(widths=(4, 8, 8), output_stride=stride)


def test_group_norm_follows_every_convolution_but_the_output():
    net = VxmUNet(widths=(4, 8, 16), head=(4,), norm="group")
    norms = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == len(convs(net)) - 1
    fixed, moving = pair((16, 16, 16))
    assert net(fixed, moving).abs().max() < 1e-2  # still a near-identity start
    with pytest.raises(ConfigError, match="norm"):
        VxmUNet(widths=(4,), norm="batch")


def test_group_norm_makes_the_field_blind_to_the_scale_of_hidden_weights():
    """The mechanism behind the paper network's divergence: an Adam step grows every
    layer's weights at once, and without normalisation the field grows with their
    product. With GroupNorm, scaling every hidden layer's weights leaves it unchanged."""
    torch.manual_seed(0)
    fixed, moving = pair((16, 16, 16))
    for norm, expect_same in ((None, False), ("group", True)):
        net = VxmUNet(widths=(4, 8, 8), head=(4,), norm=norm)
        nn.init.normal_(net.head[-1].weight, std=0.1)
        before = net(fixed, moving).detach()
        with torch.no_grad():
            for conv in convs(net)[:-1]:  # every hidden layer, not the output
                conv.weight.mul_(1.5)
                conv.bias.mul_(1.5)
        after = net(fixed, moving).detach()
        change = ((after - before).abs().max() / before.abs().max()).item()
        assert (change < 0.01) if expect_same else (change > 0.5), (norm, change)


def test_init_scale_starts_the_same_function_with_larger_hidden_weights():
    """``init_scale`` changes how far an Adam step turns the normalised layers, not the
    network the training starts from; ``flow_std`` is the output layer's initial spread."""
    fixed, moving = pair((16, 16, 16))
    torch.manual_seed(0)
    base = VxmUNet(widths=(4, 8, 8), head=(4,), norm="group", flow_std=0.1)
    torch.manual_seed(0)
    big = VxmUNet(widths=(4, 8, 8), head=(4,), norm="group", flow_std=0.1, init_scale=3.0)
    for a, b in zip(convs(base)[:-1], convs(big)[:-1]):
        torch.testing.assert_close(3.0 * a.weight, b.weight)
    torch.testing.assert_close(convs(base)[-1].weight, convs(big)[-1].weight)
    out = base(fixed, moving).detach()
    assert out.abs().max() > 1e-3
    torch.testing.assert_close(big(fixed, moving).detach(), out, rtol=1e-3, atol=1e-4 * out.abs().max().item())
    torch.manual_seed(0)
    head = convs(VxmUNet(widths=(4, 8, 8), head=(16,), norm="group", flow_std=0.02))[-1].weight
    assert 0.015 < head.std().item() < 0.025
    assert convs(VxmUNet(widths=(4, 8, 8), head=(4,), flow_std=0.0))[-1].weight.abs().max() == 0
    for bad in (dict(init_scale=0.0), dict(flow_std=-1.0)):
        with pytest.raises(ConfigError):
            VxmUNet(widths=(4,), norm="group", **bad)
