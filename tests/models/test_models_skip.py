"""The skip generator: parameter counts, parity with the original's construction, options,
per-scale lists, sizes and argument errors."""
import itertools

import pytest
import torch
from torch import nn

from dip.models import load_original_state_dict, skip
from tests import oracle


def n_params(net):
    return sum(p.numel() for p in net.parameters())


# --------------------------------------------------------------------------- parameter counts
def test_parameter_count_standard():
    net = skip(32, 3, [128] * 5, [128] * 5, [4] * 5, upsample_mode="bilinear",
               pad="reflection")
    assert n_params(net) == 2_217_831


def test_parameter_count_text_inpainting():
    net = skip(32, 3, [128] * 5, [128] * 5, [128] * 5, upsample_mode="nearest",
               pad="reflection")
    assert n_params(net) == 3_002_627


# --------------------------------------------------------------------------- original parity
# The original code's construction (tests/oracle.py: nested Sequentials, a Concat that
# centre-crops, the Lanczos downsampler as a dense C x C convolution named "downsampler_"),
# used to check the parameter order, the state_dict mapping and the forward pass.
def _original_skip(cin, cout, down, up, sk, fd, fu, fs, pad, umode, dmode, need1x1):
    return oracle.skip(cin, cout, down, up, sk, filter_size_down=fd, filter_size_up=fu, filter_skip_size=fs,
                       pad=pad, upsample_mode=umode, downsample_mode=dmode, need1x1_up=need1x1)


def test_parameter_order_matches_original_standard():
    orig = _original_skip(32, 3, [128] * 5, [128] * 5, [4] * 5, 3, 3, 1, "reflection",
                          "bilinear", "stride", True)
    ours = skip(32, 3, [128] * 5, [128] * 5, [4] * 5, upsample_mode="bilinear",
                pad="reflection")
    assert [tuple(p.shape) for p in orig.parameters()] == [
        tuple(p.shape) for p in ours.parameters()]


@pytest.mark.parametrize("pad, umode, dmode, sk, need1x1", [
    ("reflection", "bilinear", "stride", [2, 3, 2], True),
    ("zero", "nearest", "avg", [0, 2, 0], False),
    ("reflection", "nearest", "max", [2, 0, 2], True),
    ("reflection", "bilinear", "lanczos2", [2, 2, 2], True),
])
def test_forward_matches_original_with_loaded_weights(pad, umode, dmode, sk, need1x1):
    down, up = [4, 6, 8], [5, 6, 7]
    torch.manual_seed(0)
    orig = _original_skip(3, 2, down, up, sk, 3, 5, 1, pad, umode, dmode, need1x1)
    with torch.no_grad():  # non-trivial BatchNorm state so that the mapping is checked
        for m in orig.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.1, 0.1)
    ours = skip(3, 2, down, up, sk, filter_size_up=5, pad=pad, upsample_mode=umode,
                downsample_mode=dmode, need1x1_up=need1x1)
    load_original_state_dict(ours, orig.state_dict())
    x = torch.rand(2, 3, 32, 24)
    torch.testing.assert_close(ours(x), orig(x), rtol=1e-5, atol=1e-6)
    ours.eval(), orig.eval()
    torch.testing.assert_close(ours(x), orig(x), rtol=1e-5, atol=1e-6)


def test_load_original_state_dict_without_num_batches_tracked():
    torch.manual_seed(0)
    orig = _original_skip(2, 3, [4, 4], [4, 4], [1, 1], 3, 3, 1, "zero", "nearest", "stride",
                          True)
    sd = {k: v for k, v in orig.state_dict().items() if "num_batches_tracked" not in k}
    ours = skip(2, 3, [4, 4], [4, 4], [1, 1])
    load_original_state_dict(ours, sd)
    x = torch.rand(1, 2, 8, 8)
    torch.testing.assert_close(ours(x), orig(x))


def test_load_original_state_dict_mismatch():
    orig = _original_skip(2, 3, [4, 4], [4, 4], [1, 1], 3, 3, 1, "zero", "nearest", "stride",
                          True)
    with pytest.raises(ValueError, match="same arguments as the original"):
        load_original_state_dict(skip(2, 3, [4, 4], [4, 4], [1, 0]), orig.state_dict())
    with pytest.raises(ValueError, match="does not match"):
        load_original_state_dict(skip(2, 3, [4, 4], [4, 5], [1, 1]), orig.state_dict())


# --------------------------------------------------------------------------- options
ACTS = ["LeakyReLU", "Swish", "ELU", "none", nn.Tanh]


@pytest.mark.parametrize("pad, upsample_mode", list(itertools.product(
    ["zero", "reflection"], ["nearest", "bilinear"])))
def test_every_option_combination(pad, upsample_mode):
    combos = itertools.product(["stride", "avg", "max", "lanczos2", "lanczos3"], ACTS)
    for i, (downsample_mode, act_fun) in enumerate(combos):
        sigmoid = (i + (pad == "zero")) % 2 == 0  # both values for every combination overall
        torch.manual_seed(0)
        net = skip(2, 3, [4, 4], [4, 4], [2, 2], pad=pad, upsample_mode=upsample_mode,
                   downsample_mode=downsample_mode, act_fun=act_fun, need_sigmoid=sigmoid)
        x = torch.rand(1, 2, 8, 8, requires_grad=True)
        y = net(x)
        assert y.shape == (1, 3, 8, 8)
        if sigmoid:
            assert 0 <= y.min() and y.max() <= 1
        else:
            assert not isinstance(net.sigmoid, nn.Sigmoid)
        y.square().mean().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()
        assert all(p.grad is not None for p in net.parameters())


def test_per_scale_lists():
    net = skip(3, 1, [4, 6, 8], [5, 6, 7], [2, 0, 1], filter_size_down=[5, 3, 1],
               filter_size_up=[1, 3, 5], filter_skip_size=3,
               upsample_mode=["nearest", "bilinear", "nearest"],
               downsample_mode=["stride", "avg", "lanczos3"], need1x1_up=False)
    levels = [net.body, net.body.inner, net.body.inner.inner]
    assert [lv.down[0].conv.kernel_size[0] for lv in levels] == [5, 3, 1]
    assert [lv.up[0].conv.kernel_size[0] for lv in levels] == [1, 3, 5]
    assert [lv.upsample.mode for lv in levels] == ["nearest", "bilinear", "nearest"]
    assert [lv.down[0].conv.stride[0] for lv in levels] == [2, 1, 1]
    assert isinstance(levels[1].down[0].down, nn.AvgPool2d)
    assert levels[2].down[0].down.kernel == "lanczos3"
    assert levels[1].skip is None and levels[0].skip[0].conv.kernel_size[0] == 3
    assert [lv.bn.num_features for lv in levels] == [2 + 6, 0 + 7, 1 + 8]
    assert all(len(lv.up) == 2 for lv in levels)
    x = torch.rand(1, 3, 16, 24)
    assert net(x).shape == (1, 1, 16, 24)


def test_zero_skip_channels_drop_branch():
    with_skip = skip(2, 3, [4, 4], [4, 4], [3, 3])
    no_skip = skip(2, 3, [4, 4], [4, 4], [0, 0])
    assert with_skip.body.skip is not None and no_skip.body.skip is None
    assert no_skip.body.bn.num_features == 4
    assert no_skip(torch.rand(1, 2, 8, 8)).shape == (1, 3, 8, 8)
    assert n_params(with_skip) > n_params(no_skip)


def test_no_bias():
    net = skip(2, 3, [4, 4], [4, 4], [2, 2], need_bias=False)
    assert all(m.bias is None for m in net.modules() if isinstance(m, nn.Conv2d))


# --------------------------------------------------------------------------- sizes
def test_attributes_and_min_size():
    net = skip()
    assert net.size_multiple == 32 and net.input_scale == 1 and net.min_input_size == 64
    assert skip(num_channels_down=[4, 4], num_channels_up=[4, 4], num_channels_skip=[1, 1],
                pad="reflection").min_input_size == 8
    # 5x5 reflection filters: the deepest side must exceed the padding of 2
    net = skip(2, 3, [4, 4], [4, 4], [1, 1], filter_size_down=5, pad="reflection")
    assert net.min_input_size == 12
    assert net(torch.rand(1, 2, 12, 12)).shape == (1, 3, 12, 12)
    with pytest.raises(ValueError, match="below min_input_size=12"):
        net(torch.rand(1, 2, 8, 8))


def test_non_multiple_size_error():
    net = skip(2, 3, [4, 4, 4], [4, 4, 4], [1, 1, 1])
    with pytest.raises(ValueError, match=r"37x48 is not a multiple of size_multiple=8"):
        net(torch.rand(1, 2, 37, 48))
    with pytest.raises(ValueError, match="expects 2 input channels"):
        net(torch.rand(1, 3, 16, 16))


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_channels_up=[4, 4, 4]), "same length"),
    (dict(num_channels_skip=[4]), "same length"),
    (dict(num_channels_down=[]), "non-empty list"),
    (dict(num_channels_down=[4, 0]), r"num_channels_down\[1\] must be >= 1"),
    (dict(pad="reflect"), "pad must be one of"),
    (dict(upsample_mode="bicubic"), r"upsample_mode\[0\] must be one of"),
    (dict(upsample_mode=["nearest"]), "upsample_mode has 1 entries but the network has 2"),
    (dict(downsample_mode="lanczos4"), r"downsample_mode\[0\] must be one of"),
    (dict(downsample_mode=["avg", "max", "avg"]), "downsample_mode has 3 entries"),
    (dict(filter_size_down=[3, 3, 3]), "filter_size_down has 3 entries"),
    (dict(filter_size_up=4), r"filter_size_up\[0\] must be odd"),
    (dict(filter_skip_size=2), "filter_skip_size must be odd"),
    (dict(act_fun="leaky"), "act_fun must be one of"),
])
def test_bad_arguments(kwargs, message):
    base = dict(num_input_channels=2, num_output_channels=3, num_channels_down=[4, 4],
                num_channels_up=[4, 4], num_channels_skip=[1, 1])
    with pytest.raises(ValueError, match=message):
        skip(**{**base, **kwargs})
