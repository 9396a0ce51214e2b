"""Shared generator blocks: activations, Conv, BNAct (fused and standard), StandardDownsample,
input checks."""
import pytest
import torch
from torch import nn

import dip.ops
from dip.models import common
from dip.models.common import BatchNormAct, BNAct, Conv, StandardDownsample, act, check_input, downsampler, upsample

BN_KEYS = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]


# --------------------------------------------------------------------------- activations
@pytest.mark.parametrize("name, cls", [("LeakyReLU", nn.LeakyReLU), ("Swish", nn.SiLU),
                                       ("ELU", nn.ELU), ("ReLU", nn.ReLU),
                                       ("none", nn.Identity)])
def test_act_names(name, cls):
    m = act(name)
    assert type(m) is cls
    if name == "LeakyReLU":
        assert m.negative_slope == 0.2
    x = torch.linspace(-2, 2, 9)
    expected = {"LeakyReLU": torch.where(x > 0, x, 0.2 * x), "Swish": x * torch.sigmoid(x),
                "ELU": torch.where(x > 0, x, torch.expm1(x)), "ReLU": x.clamp(min=0),
                "none": x}[name]
    torch.testing.assert_close(m(x.clone()), expected)


def test_act_class_and_instance():
    assert type(act(nn.Tanh)) is nn.Tanh
    inst = nn.PReLU()
    made = act(inst)
    assert type(made) is nn.PReLU and made is not inst


def test_act_bad():
    with pytest.raises(ValueError, match="act_fun must be one of.*'Relu'"):
        act("Relu")
    with pytest.raises(TypeError, match="act_fun"):
        act(3)
    with pytest.raises(TypeError, match="must return an nn.Module"):
        act(lambda: 3)


# --------------------------------------------------------------------------- Conv / resampling
@pytest.mark.parametrize("pad", ["zero", "reflection"])
@pytest.mark.parametrize("mode", ["stride", "avg", "max", "lanczos2", "lanczos3"])
def test_conv_downsampling_shapes(pad, mode):
    c = Conv(3, 5, 3, stride=2, pad=pad, downsample_mode=mode)
    y = c(torch.rand(2, 3, 16, 12))
    assert y.shape == (2, 5, 8, 6)
    assert (c.pad is not None) == (pad == "reflection")
    assert c.conv.stride == ((2, 2) if mode == "stride" else (1, 1))
    assert c.conv.padding == ((0, 0) if pad == "reflection" else (1, 1))


def test_conv_reflection_equals_reflect_padding():
    torch.manual_seed(0)
    c = Conv(2, 3, 5, pad="reflection")
    x = torch.rand(1, 2, 9, 7)
    ref = nn.functional.conv2d(nn.functional.pad(x, (2, 2, 2, 2), mode="reflect"),
                               c.conv.weight, c.conv.bias)
    torch.testing.assert_close(c(x), ref)


def test_conv_bad_args():
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        Conv(1, 1, 4)
    with pytest.raises(ValueError, match="pad must be one of"):
        Conv(1, 1, 3, pad="replicate")
    with pytest.raises(ValueError, match="downsample_mode must be one of"):
        Conv(1, 1, 3, stride=2, downsample_mode="bicubic")


def test_upsample_modes():
    x = torch.arange(4.0).view(1, 1, 2, 2)
    torch.testing.assert_close(upsample("nearest")(x),
                               x.repeat_interleave(2, 2).repeat_interleave(2, 3))
    torch.testing.assert_close(
        upsample("bilinear")(x),
        nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
    with pytest.raises(ValueError, match="upsample_mode must be one of"):
        upsample("bicubic")


@pytest.mark.parametrize("kernel", ["lanczos2", "lanczos3"])
@pytest.mark.parametrize("factor", [2, 4])
def test_standard_downsample_equals_physics(kernel, factor):
    phys = downsampler(kernel, factor)
    std = StandardDownsample(phys.taps, phys.factor, phys.padding)
    x = torch.rand(1, 3, 16, 24, dtype=torch.float64)
    torch.testing.assert_close(std(x), phys(x))


# --------------------------------------------------------------------------- BNAct
def _pair(act_fun="LeakyReLU", fused=True, c=4):
    torch.manual_seed(1)
    m = BNAct(c, act_fun, fused=fused)
    with torch.no_grad():
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.5, 0.5)
    ref = nn.BatchNorm2d(c)
    ref.load_state_dict(m.state_dict())
    return m, ref


def test_bnact_state_dict_keys():
    for cls in (BNAct, BatchNormAct):
        for a in ("LeakyReLU", "none", "ELU"):
            assert list(cls(3, a).state_dict()) == BN_KEYS
    assert list(nn.BatchNorm2d(3).state_dict()) == BN_KEYS


@pytest.mark.parametrize("act_fun, ref_act", [("LeakyReLU", nn.LeakyReLU(0.2)),
                                              ("none", nn.Identity()), ("ELU", nn.ELU())])
def test_bnact_standard_path_equals_batchnorm(act_fun, ref_act):
    m, ref = _pair(act_fun, fused=False)
    x = torch.randn(2, 4, 5, 6) * 3 + 1
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    for _ in range(2):
        y1, y2 = m(x1), ref_act(ref(x2))
        torch.testing.assert_close(y1, y2)
    (y1 * torch.arange(y1.numel()).view_as(y1)).sum().backward()
    (y2 * torch.arange(y2.numel()).view_as(y2)).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)
    torch.testing.assert_close(m.weight.grad, ref.weight.grad)
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(m.state_dict()[k], v)
    m.eval(), ref.eval()
    torch.testing.assert_close(m(x), ref_act(ref(x)))


def test_bnact_dispatches_to_fused_op(monkeypatch):
    """The fused path: calls the op with the module's tensors (spy on the reference op)."""
    calls = []

    def spy(x, w, b, rm, rv, momentum, eps, negative_slope):
        calls.append((momentum, eps, negative_slope))
        return dip.ops.bn_leaky_relu_reference(x, w, b, rm, rv, momentum, eps, negative_slope)

    monkeypatch.setattr(common, "_native_op", lambda name, device: spy if name == "bn_leaky_relu" else None)
    m, ref = _pair("LeakyReLU")
    x = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(m(x), nn.functional.leaky_relu(ref(x), 0.2))
    assert calls == [(0.1, 1e-5, 0.2)]
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(m.state_dict()[k], v)
    m.eval()
    m(x)
    BNAct(4, "ELU")(x)
    BNAct(4, "LeakyReLU", fused=False)(x)
    assert len(calls) == 1
    # ReLU is LeakyReLU of slope 0 and no activation one of slope 1: fused as well
    for act_fun, slope, ref_act in (("ReLU", 0.0, nn.ReLU()), ("none", 1.0, nn.Identity())):
        m, ref = _pair(act_fun)
        torch.testing.assert_close(m(x), ref_act(ref(x)))
        assert calls[-1] == (0.1, 1e-5, slope)
    assert len(calls) == 3


@pytest.mark.skipif(not dip.ops.has_native(), reason="native dip library not built")
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("act_fun", ["LeakyReLU", "ReLU", "none"])
def test_bnact_native_equals_standard(channels_last, act_fun, called_ops):
    fused, _ = _pair(act_fun, fused=True, c=6)
    std = BNAct(6, act_fun, fused=False)
    std.load_state_dict(fused.state_dict())
    x = torch.randn(2, 6, 7, 5) * 2 + 0.5
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    g = torch.randn(2, 6, 7, 5)
    for _ in range(2):
        with called_ops() as seen:
            y1 = fused(x1)
        y2 = std(x2)
        assert "dip.bn_leaky_relu.default" in seen
        torch.testing.assert_close(y1, y2, rtol=1e-5, atol=1e-5)
    (y1 * g).sum().backward()
    (y2 * g).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fused.weight.grad, std.weight.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fused.bias.grad, std.bias.grad, rtol=1e-4, atol=1e-5)
    for k, v in std.state_dict().items():
        torch.testing.assert_close(fused.state_dict()[k], v, rtol=1e-5, atol=1e-6)


def test_bnact_standard_copy():
    m, _ = _pair("LeakyReLU")
    m(torch.randn(2, 4, 3, 3))
    m.weight.requires_grad_(False)
    m.eval()
    s = m.standard()
    assert type(s) is BatchNormAct and isinstance(s, nn.BatchNorm2d)
    assert not s.training and not s.weight.requires_grad
    for k, v in m.state_dict().items():
        assert torch.equal(s.state_dict()[k], v)
    assert s.state_dict()["running_mean"].data_ptr() != m.running_mean.data_ptr()


# --------------------------------------------------------------------------- input checks
def test_check_input_messages():
    x = torch.zeros(1, 3, 40, 64)
    check_input(x, 3, 8, 16, "net")
    with pytest.raises(ValueError, match="40x64 is not a multiple of size_multiple=16"):
        check_input(x, 3, 16, 16, "net")
    with pytest.raises(ValueError, match="below min_input_size=64"):
        check_input(x, 3, 8, 64, "net")
    with pytest.raises(ValueError, match="expects 2 input channels"):
        check_input(x, 2, 8, 8, "net")
    with pytest.raises(ValueError, match="4-D input"):
        check_input(x[0], 3, 8, 8, "net")
