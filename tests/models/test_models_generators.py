"""unet, resnet, decoder; build / names / config round trip; to_standard."""
import itertools

import pytest
import torch
from torch import nn

from dip import models
from dip.models import BatchNormAct, BNAct, build, decoder, names, resnet, to_standard, unet
from dip.models.common import StandardDownsample
from dip.physics import Downsample


def n_params(net):
    return sum(p.numel() for p in net.parameters())


def run(net, size, cin):
    x = torch.rand(1, cin, size, size, requires_grad=True)
    y = net(x)
    y.mean().backward()
    assert torch.isfinite(x.grad).all()
    return y


# --------------------------------------------------------------------------- unet
def test_unet_parameter_count():
    # channels [16, 32, 64, 128, 256], transposed-conv upsampling, instance norm (no params)
    assert n_params(unet()) == 2_463_379


@pytest.mark.parametrize("mode, norm, pad, concat_x, more", [
    ("deconv", "instance", "zero", False, 0),
    ("nearest", "batch", "reflection", True, 1),
    ("bilinear", "none", "zero", True, 2),
    ("deconv", nn.BatchNorm2d, "reflection", False, 1),
])
def test_unet_options(mode, norm, pad, concat_x, more):
    net = unet(2, 3, feature_scale=16, more_layers=more, concat_x=concat_x,
               upsample_mode=mode, pad=pad, norm_layer=norm)
    assert net.size_multiple == 2 ** (4 + more)
    assert net.min_input_size == 2 * net.size_multiple
    y = run(net, net.min_input_size, 2)
    assert y.shape == (1, 3, net.min_input_size, net.min_input_size)
    assert 0 <= y.min() and y.max() <= 1
    assert (norm in ("batch", nn.BatchNorm2d)) == any(isinstance(m, BNAct)
                                                     for m in net.modules())


def test_unet_errors():
    with pytest.raises(ValueError, match="upsample_mode must be one of"):
        unet(upsample_mode="transpose")
    with pytest.raises(ValueError, match="norm_layer must be one of"):
        unet(norm_layer="group")
    with pytest.raises(ValueError, match="too few for concat_x"):
        unet(num_input_channels=8, feature_scale=8, concat_x=True)
    with pytest.raises(ValueError, match="not a multiple of size_multiple=16"):
        unet(feature_scale=16)(torch.rand(1, 3, 40, 40))


# --------------------------------------------------------------------------- resnet
def test_resnet_parameter_count():
    assert n_params(resnet(32, 3, num_blocks=10, num_channels=16)) == 54_131


@pytest.mark.parametrize("residual, act_fun, norm, pad, sigmoid", [
    (True, "LeakyReLU", "batch", "reflection", True),
    (False, "ELU", "instance", "zero", False),
    (True, "Swish", nn.BatchNorm2d, "zero", True),
])
def test_resnet_options(residual, act_fun, norm, pad, sigmoid):
    net = resnet(3, 2, num_blocks=2, num_channels=4, need_residual=residual, act_fun=act_fun,
                 norm_layer=norm, pad=pad, need_sigmoid=sigmoid)
    assert (net.size_multiple, net.min_input_size, net.input_scale) == (1, 2, 1)
    y = run(net, 5, 3)
    assert y.shape == (1, 2, 5, 5)
    assert isinstance(net.sigmoid, nn.Sigmoid) == sigmoid
    run(net, 2, 3)


def test_resnet_residual_connection():
    net = resnet(1, 1, num_blocks=1, num_channels=2)
    block = net.blocks[0]
    x = torch.rand(1, 2, 4, 4)
    torch.testing.assert_close(block(x), x + block.body(x))
    block.residual = False
    torch.testing.assert_close(block(x), block.body(x))


def test_resnet_errors():
    with pytest.raises(ValueError, match="norm_layer must be one of"):
        resnet(norm_layer="layer")
    with pytest.raises(ValueError, match="act_fun must be one of"):
        resnet(act_fun="gelu")
    with pytest.raises(ValueError, match="below min_input_size=2"):
        resnet(3, 3, 1, 4)(torch.rand(1, 3, 1, 4))


# --------------------------------------------------------------------------- decoder
@pytest.mark.parametrize("n, chans, mode, pad", [
    (3, 6, "bilinear", "reflection"), (2, [4, 5, 6], ["nearest", "bilinear"], "zero"),
    (0, 4, "nearest", "reflection"),
])
def test_decoder_shapes(n, chans, mode, pad):
    net = decoder(5, 3, num_channels=chans, n_upsamples=n, upsample_mode=mode, pad=pad)
    assert net.input_scale == 2 ** n and net.size_multiple == 1 and net.min_input_size == 2
    x = torch.rand(1, 5, 3, 2, requires_grad=True)
    y = net(x)
    assert y.shape == (1, 3, 3 * 2 ** n, 2 * 2 ** n)
    assert 0 <= y.min() and y.max() <= 1
    y.mean().backward()


def test_decoder_errors():
    with pytest.raises(ValueError, match="n_upsamples \\+ 1 = 3"):
        decoder(num_channels=[4, 4], n_upsamples=2)
    with pytest.raises(ValueError, match="upsample_mode has 1 entries"):
        decoder(n_upsamples=2, upsample_mode=["nearest"])
    with pytest.raises(ValueError, match="filter_size must be odd"):
        decoder(filter_size=2)
    net = decoder(3, 3, 4, 1, filter_size=5)
    assert net.min_input_size == 3
    with pytest.raises(ValueError, match="below min_input_size=3"):
        net(torch.rand(1, 3, 2, 2))


# --------------------------------------------------------------------------- build / config
SMALL = {
    "skip": dict(num_channels_down=[4, 4], num_channels_up=[4, 4], num_channels_skip=[2, 0],
                 downsample_mode=["lanczos2", "stride"], upsample_mode="bilinear",
                 pad="reflection"),
    "unet": dict(feature_scale=16, norm_layer="batch", upsample_mode="nearest"),
    "resnet": dict(num_blocks=2, num_channels=4),
    "decoder": dict(num_channels=4, n_upsamples=2),
}


def test_names():
    assert names() == ["skip", "unet", "resnet", "decoder"]
    assert all(callable(getattr(models, n)) for n in names())


@pytest.mark.parametrize("name", ["skip", "unet", "resnet", "decoder"])
def test_build_config_round_trip(name):
    net = build(name, 3, 2, **SMALL[name])
    cfg = net.config
    assert cfg["name"] == name and cfg["in_channels"] == 3 and cfg["out_channels"] == 2
    again = build(**cfg)
    assert type(again) is type(net) and again.config == cfg
    assert [(k, tuple(v.shape)) for k, v in again.state_dict().items()] == [
        (k, tuple(v.shape)) for k, v in net.state_dict().items()]
    again.load_state_dict(net.state_dict())
    x = torch.rand(1, 3, net.min_input_size, net.min_input_size)
    torch.testing.assert_close(again(x), net(x))
    for attr in ("size_multiple", "min_input_size", "input_scale"):
        assert isinstance(getattr(net, attr), int)
        assert getattr(again, attr) == getattr(net, attr)


def test_config_is_independent_of_defaults():
    net = models.skip()
    net.config["num_channels_down"].append(1)
    assert models.skip().config["num_channels_down"] == [16, 32, 64, 128, 128]


def test_build_errors():
    with pytest.raises(ValueError, match="unknown generator 'vgg'"):
        build("vgg", 3, 3)
    with pytest.raises(ValueError, match="pass num_input_channels as in_channels"):
        build("skip", 3, 3, num_input_channels=3)


# --------------------------------------------------------------------------- to_standard
@pytest.mark.parametrize("name", ["skip", "unet", "resnet", "decoder"])
def test_to_standard_equivalent(name):
    torch.manual_seed(0)
    net = build(name, 3, 2, **SMALL[name])
    std = to_standard(net)
    assert not any(isinstance(m, (BNAct, Downsample)) for m in std.modules())
    assert any(isinstance(m, BatchNormAct) for m in std.modules())
    if name == "skip":
        assert any(isinstance(m, StandardDownsample) for m in std.modules())
    assert any(isinstance(m, BNAct) for m in net.modules())  # the original is untouched
    assert list(std.state_dict()) == list(net.state_dict())
    assert std.config == net.config and std.size_multiple == net.size_multiple
    x = torch.rand(2, 3, net.min_input_size, net.min_input_size)
    for _ in range(2):  # training mode: batch statistics, running stats updated alike
        torch.testing.assert_close(std(x), net(x), rtol=1e-5, atol=1e-5)
    for k, v in net.state_dict().items():
        torch.testing.assert_close(std.state_dict()[k], v, rtol=1e-5, atol=1e-6)
    net.eval(), std.eval()
    torch.testing.assert_close(std(x), net(x), rtol=1e-5, atol=1e-5)


def test_to_standard_scripts():
    net = build("skip", 3, 2, **SMALL["skip"])
    scripted = torch.jit.script(to_standard(net))
    x = torch.rand(1, 3, 8, 8)
    torch.manual_seed(0)
    torch.testing.assert_close(scripted(x), to_standard(net)(x))


def test_all_option_grid_small_generators():
    for mode, pad in itertools.product(["nearest", "bilinear"], ["zero", "reflection"]):
        net = decoder(2, 1, 3, 1, upsample_mode=mode, pad=pad, act_fun="Swish")
        assert run(net, 2, 2).shape == (1, 1, 4, 4)
