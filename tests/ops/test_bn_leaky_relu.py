"""dip.ops.bn_leaky_relu: equality with nn.BatchNorm2d + nn.LeakyReLU, native kernels, errors."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import dip.ops as ops

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def _modules(c: int, dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    bn = torch.nn.BatchNorm2d(c).to(dtype)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(c, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(c, generator=g))
        bn.running_mean.copy_(torch.randn(c, generator=g))
        bn.running_var.copy_(torch.rand(c, generator=g) + 0.5)
    return bn, torch.nn.LeakyReLU(0.2)


def _run(fn, x, bn, **kw):
    """Output, running stats and gradients of x, weight, bias for a fixed upstream gradient."""
    w = bn.weight.detach().to(x.device).clone().requires_grad_(True)
    b = bn.bias.detach().to(x.device).clone().requires_grad_(True)
    rm, rv = bn.running_mean.to(x.device).clone(), bn.running_var.to(x.device).clone()
    xg = x.detach().clone(memory_format=torch.preserve_format).requires_grad_(True)
    y = fn(xg, w, b, rm, rv, **kw)
    g = torch.linspace(-1, 1, y.numel(), dtype=y.dtype, device=y.device).reshape(y.shape)
    y.backward(g)
    return y, rm, rv, xg.grad, w.grad, b.grad


def _off_kink(x: torch.Tensor, bn: torch.nn.BatchNorm2d, margin: float = 1e-3) -> torch.Tensor:
    """``x`` (N, C, H, W) with each value whose batch-normalised pre-activation (``bn``'s affine
    parameters, the batch's statistics, computed in float64) lies within ``margin`` of
    LeakyReLU's kink at 0 moved off it, in x's dtype and layout: by 0.01 plus four of the
    dtype's rounding steps at the value, so that the move survives bfloat16's rounding.

    At the kink the slope is negative_slope or 1 by a sign that rounding decides: a float32
    kernel and the float64 reference then legitimately disagree on that value's gradient by
    (1 - negative_slope) * dy, and on its channel's dw and db with it. Among the 156,510 values
    of the many-channels test one landed within float32 rounding of 0 in 1 of 300 seeded draws
    (seed 111: a pre-activation of 2.8e-9, dx off by 5.5e-3 in every layout); with four
    unseeded draws a CI run (the main run and three ISA copies), about one run in 75 failed."""
    z = torch.nn.functional.batch_norm(x.double(), None, None, bn.weight.double(),
                                       bn.bias.double(), training=True)
    shift = 0.01 + 4 * torch.finfo(x.dtype).eps * x.detach().abs().clamp_min(1)
    return x + (shift * (z.abs() < margin)).to(x.dtype)


def _layouts(x: torch.Tensor, device="cpu"):
    """(name, tensor) with x's values on ``device``: contiguous, channels_last, strided view."""
    x = x.to(device)
    yield "contiguous", x
    yield "channels_last", x.contiguous(memory_format=torch.channels_last)
    wide = torch.zeros(*x.shape[:3], 2 * x.shape[3], dtype=x.dtype, device=x.device)
    wide[..., ::2] = x
    yield "strided", wide[..., ::2]


def sample_inputs(device, requires_grad: bool = False):
    """Small float64 argument tuples (x, weight, bias, eps, negative_slope) of
    dip::bn_leaky_relu on ``device``: the three layouts, one and several images, a slope of 0.
    The one list feeds the value, gradient and opcheck tests."""
    samples = []
    for i, (shape, slope) in enumerate([((2, 3, 5, 4), 0.2), ((1, 4, 6, 5), 0.1),
                                        ((3, 2, 4, 3), 0.0)]):
        g = torch.Generator().manual_seed(i)
        x = torch.randn(*shape, dtype=torch.float64, generator=g) * 2 + 1
        w = torch.rand(shape[1], dtype=torch.float64, generator=g) + 0.5
        b = torch.randn(shape[1], dtype=torch.float64, generator=g)
        x = list(_layouts(x, device))[i][1]
        samples.append(tuple(t.to(device).requires_grad_(requires_grad) for t in (x, w, b))
                       + (1e-5, slope))
    return samples


def test_reference_equals_modules():
    bn, act = _modules(4, torch.float64)
    x = torch.randn(2, 4, 9, 7, dtype=torch.float64) * 3 + 1
    y, rm, rv, *_ = _run(ops.bn_leaky_relu_reference, x, bn)
    torch.testing.assert_close(y, act(bn.train()(x)))
    torch.testing.assert_close(rm, bn.running_mean)
    torch.testing.assert_close(rv, bn.running_var)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(3, 5, 13, 11), (2, 130, 7, 5), (1, 64, 96, 96)])
def test_native_matches_reference(native, device, called_ops, close, dtype, shape):
    bn, _ = _modules(shape[1], dtype)
    bn64, _ = _modules(shape[1], torch.float64)
    base = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2 + 3
    base = _off_kink(base, bn64)
    want = _run(ops.bn_leaky_relu_reference, base, bn64, momentum=0.3, negative_slope=0.1)
    for name, x in _layouts(base.to(dtype), device):
        with called_ops() as seen:
            got = _run(ops.bn_leaky_relu, x, bn, momentum=0.3, negative_slope=0.1)
        assert {"dip.bn_leaky_relu.default", "dip.bn_leaky_relu_backward.default"} <= seen
        for a, b, what in zip(got, want, ["y", "running_mean", "running_var", "dx", "dw", "db"], strict=True):
            close(a, b, TOL[dtype], f"{name}: {what}")
        if name == "channels_last":
            assert got[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("params", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(3, 5, 13, 11), (1, 130, 16, 16)])
def test_native_matches_reference_bf16(native, device, called_ops, shape, params):
    """bfloat16 x with bfloat16 weight and bias, or (CPU) float32 ones (the bf16 step's): the
    native kernels against the reference computed in float32 from the same values, to
    bfloat16's rounding of the outputs; statistics in float32; the parameters' gradients in the
    parameters' dtype."""
    if params == torch.float32 and device.type != "cpu":
        pytest.skip("float32 parameters with a bfloat16 x take the CPU kernels only")
    bn, _ = _modules(shape[1], torch.float32)
    bn16 = _modules(shape[1], torch.float32)[0]
    base = (torch.randn(*shape, generator=torch.Generator().manual_seed(2)) * 2 + 3).bfloat16()
    base = _off_kink(base, bn16)
    with torch.no_grad():  # the reference sees the parameters the kernels see
        for p in (bn16.weight, bn16.bias):
            p.copy_(p.to(params).float())
    want = _run(ops.bn_leaky_relu_reference, base.float(), bn16)
    bn_b = _modules(shape[1], torch.float32)[0]
    bn_b.weight.data, bn_b.bias.data = bn_b.weight.data.to(params), bn_b.bias.data.to(params)
    for name, x in _layouts(base, device):
        with called_ops() as seen:
            got = _run(ops.bn_leaky_relu, x, bn_b)
        assert {"dip.bn_leaky_relu.default", "dip.bn_leaky_relu_backward.default"} <= seen
        assert got[0].dtype == torch.bfloat16 and got[1].dtype == torch.float32
        assert got[4].dtype == params and got[5].dtype == params
        for a, b, what in zip(got, want, ["y", "running_mean", "running_var", "dx", "dw", "db"], strict=True):
            scale = b.abs().max().item()
            err = (a.float() - b.to(a.device)).abs().max().item()
            # gradients: the upstream gradient itself is rounded to bf16 as well
            tol = 2 ** -7 if what in ("y", "running_mean", "running_var") else 2 ** -5
            assert err <= tol * scale + 1e-6, f"{name}: {what}: {err} (scale {scale})"


def test_module_runs_bf16_activations_with_fp32_parameters_natively(native, called_ops):
    """The bf16 step: a bfloat16 x with BNAct's float32 parameters takes the native kernels
    with the parameters as they are (no cast op), and their gradients come back in float32."""
    from dip.models.common import BNAct

    torch.manual_seed(0)
    module = BNAct(8, "LeakyReLU")
    x = (torch.randn(2, 8, 6, 6) * 2 + 1).to(torch.bfloat16).requires_grad_(True)
    with called_ops() as seen:
        y = module(x)
        y.float().square().sum().backward()
    assert {"dip.bn_leaky_relu.default", "dip.bn_leaky_relu_backward.default"} <= seen
    assert "aten._to_copy.default" in seen  # y.float()
    assert y.dtype == torch.bfloat16 and module.weight.grad.dtype == torch.float32
    ref = BNAct(8, "LeakyReLU", fused=False)
    ref.load_state_dict({k: v for k, v in module.state_dict().items()} | {
        "running_mean": torch.zeros(8), "running_var": torch.ones(8), "num_batches_tracked": torch.tensor(0)})
    want = ref(x.detach().float())
    assert (y.float() - want).abs().max().item() <= 2 ** -7 * want.abs().max().item()
    torch.testing.assert_close(module.running_mean, ref.running_mean, rtol=1e-2, atol=1e-2)
    with called_ops() as forward_ops:
        module(x)
    assert "aten._to_copy.default" not in forward_ops  # the parameters are not cast


def test_bf16_close_to_fp32(native, device):
    """bfloat16 within bfloat16's precision of float32."""
    x = torch.randn(2, 32, 40, 40, device=device) * 2 + 1
    w, b = torch.rand(32, device=device) + 0.5, torch.randn(32, device=device)
    want = ops.bn_leaky_relu_reference(x, w, b)
    got = ops.bn_leaky_relu(x.bfloat16(), w.bfloat16(), b.bfloat16())
    assert got.dtype == torch.bfloat16
    assert (got.float() - want).abs().max().item() < 0.05 * want.abs().max().item()


def test_without_affine_and_running_stats(native):
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    want = torch.nn.functional.leaky_relu(
        torch.nn.functional.batch_norm(x, None, None, training=True), 0.2)
    torch.testing.assert_close(ops.bn_leaky_relu(x), want, rtol=0, atol=1e-10)


def test_mixed_precision_parameters(native, called_ops):
    """bfloat16 activations with float32 affine parameters take the CPU kernels as they are;
    float16 activations with float32 parameters (no kernel of that pair) the reference."""
    bn, act = _modules(3, torch.float32)
    x = torch.randn(2, 3, 6, 6).to(torch.bfloat16)
    with called_ops() as seen:
        y = ops.bn_leaky_relu(x, bn.weight, bn.bias)
    assert "dip.bn_leaky_relu.default" in seen
    want = act(torch.nn.functional.batch_norm(x.float(), None, None, bn.weight, bn.bias,
                                              training=True))
    assert y.dtype == torch.bfloat16
    assert (y.float() - want).abs().max().item() <= 2 ** -7 * want.abs().max().item()
    with called_ops() as seen:
        y = ops.bn_leaky_relu(x.half(), bn.weight, bn.bias)
    assert not any(name.startswith("dip.") for name in seen)
    torch.testing.assert_close(y, act(torch.nn.functional.batch_norm(
        x.half(), None, None, bn.weight, bn.bias, training=True)))


def test_opcheck_fp32_parameters_with_bf16(native):
    """The CPU kernels' mixed pair (bfloat16 x, float32 weight and bias) passes opcheck."""
    for x, w, b, eps, slope in sample_inputs("cpu"):
        x = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        w, b = w.float().requires_grad_(True), b.float().requires_grad_(True)
        torch.library.opcheck(native.bn_leaky_relu, (x.requires_grad_(True), w, b, eps, slope))
        y, mean, var = native.bn_leaky_relu(x.detach(), w.detach(), b.detach(), eps, slope)
        gx, gw, gb = native.bn_leaky_relu_backward(torch.randn_like(y), x.detach(), w.detach(),
                                                   b.detach(), mean, var, eps, slope)
        assert gx.dtype == torch.bfloat16 and gw.dtype == gb.dtype == torch.float32


def test_native_gradcheck(native, device):
    for x, w, b, eps, slope in sample_inputs(device, requires_grad=True):
        assert torch.autograd.gradcheck(
            lambda *a, eps=eps, slope=slope: ops.bn_leaky_relu(*a, eps=eps, negative_slope=slope),
            (x, w, b))


def test_opcheck(native, device):
    for x, w, b, eps, slope in sample_inputs(device, requires_grad=True):
        torch.library.opcheck(native.bn_leaky_relu, (x, w, b, eps, slope))
        y, mean, var = native.bn_leaky_relu(x.detach(), w.detach(), b.detach(), eps, slope)
        torch.library.opcheck(native.bn_leaky_relu_backward,
                              (torch.randn_like(y), x.detach(), w.detach(), b.detach(), mean, var,
                               eps, slope))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_native_matches_reference_many_channels(native, device, close, dtype):
    """37 channels: the channels_last loops run over channels (vector blocks and a tail); the
    NCHW planes (47 x 45) cross the vector loops' tails too."""
    bn, _ = _modules(37, dtype, seed=3)
    bn64, _ = _modules(37, torch.float64, seed=3)
    base = torch.randn(2, 37, 47, 45, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(4)) * 3 + 1
    base = _off_kink(base, bn64)
    want = _run(ops.bn_leaky_relu_reference, base, bn64, negative_slope=0.15)
    for name, x in _layouts(base.to(dtype), device):
        got = _run(ops.bn_leaky_relu, x, bn, negative_slope=0.15)
        for a, b, what in zip(got, want, ["y", "running_mean", "running_var", "dx", "dw", "db"], strict=True):
            close(a, b, TOL[dtype], f"{name}: {what}")


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_native_matches_reference_large(native, device, close, layout):
    """Tensors of >= 16 MiB. NCHW: the kernels write them with non-temporal stores, starting
    each odd-sized, so unaligned, plane with scalar stores up to a 16-byte boundary;
    channels_last: long per-channel sums (in working precision per block of rows)."""
    c, h, w = (17, 509, 487) if layout == "nchw" else (20, 460, 457)
    bn, _ = _modules(c, torch.float32, seed=5)
    bn64, _ = _modules(c, torch.float64, seed=5)
    x = torch.randn(1, c, h, w, generator=torch.Generator().manual_seed(1)) * 2 + 0.5
    x = _off_kink(x, bn64)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    assert x.numel() * x.element_size() >= 16 << 20
    # the reference in float64: torch's float32 channels_last batch norm is itself off by
    # ~2e-4 at this size
    want = _run(ops.bn_leaky_relu_reference, x.double(), bn64)
    got = _run(ops.bn_leaky_relu, x.to(device), bn)
    for a, b, what in zip(got, want, ["y", "running_mean", "running_var", "dx", "dw", "db"], strict=True):
        close(a, b.float(), 1e-5, what)


@settings(max_examples=8, deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 20), h=st.integers(1, 9), w=st.integers(2, 9),
       channels_last=st.booleans(), slope=st.floats(0.0, 0.5))
def test_native_matches_reference_random(n, c, h, w, channels_last, slope):
    if not ops.has_native():
        pytest.skip(ops.native_status())
    bn, _ = _modules(c, torch.float64, seed=c)
    x = torch.randn(n, c, h, w, dtype=torch.float64) * 5 - 2
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    want = _run(ops.bn_leaky_relu_reference, x, bn, negative_slope=slope)
    got = _run(ops.bn_leaky_relu, x, bn, negative_slope=slope)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10 * max(1.0, b.abs().max().item()))


@pytest.mark.parametrize("fn", [ops.bn_leaky_relu, ops.bn_leaky_relu_reference])
def test_python_errors(fn):
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"weight must have shape \(3,\)"):
        fn(x, torch.ones(4))
    with pytest.raises(TypeError, match="bias must have a floating dtype"):
        fn(x, torch.ones(3), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="same device"):
        fn(x, torch.ones(3, device="meta"))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        fn(torch.randn(1, 3, 1, 1))
    with pytest.raises(ValueError, match="both be given"):
        fn(x, running_mean=torch.zeros(3))
    with pytest.raises(ValueError, match="must be 4-D"):
        fn(x[0])
    with pytest.raises(TypeError, match="floating dtype"):
        fn(x.int())
    with pytest.raises(ValueError, match="must not be empty"):
        fn(x[:0])
    with pytest.raises(ValueError, match="eps must be positive"):
        fn(x, eps=0.0)


def test_native_errors(native):
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(RuntimeError, match=r"weight must have shape \(3,\)"):
        native.bn_leaky_relu(x, torch.ones(4), torch.zeros(3), 1e-5, 0.2)
    with pytest.raises(RuntimeError, match="bias must have the dtype of x"):
        native.bn_leaky_relu(x, torch.ones(3), torch.zeros(3, dtype=torch.float64), 1e-5, 0.2)
    with pytest.raises(RuntimeError, match="more than 1 value per channel"):
        native.bn_leaky_relu(torch.randn(1, 3, 1, 1), torch.ones(3), torch.zeros(3), 1e-5, 0.2)
    with pytest.raises(RuntimeError, match="x must be 4-D"):
        native.bn_leaky_relu(x[0], torch.ones(3), torch.zeros(3), 1e-5, 0.2)


class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(3))
        self.bias = torch.nn.Parameter(torch.zeros(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.dip.bn_leaky_relu(x, self.weight, self.bias, 1e-5, 0.2)[0]


def test_torchscript(native):
    block = _Block()
    scripted = torch.jit.script(block)
    x = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(scripted(x), block(x))
    assert "dip::bn_leaky_relu" in str(scripted.graph)
