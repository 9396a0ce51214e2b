"""dip.ops.downsample / downsample_adjoint: reference spec, native kernels, autograd, errors."""
from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import dip.ops as ops
from dip.physics.kernels import downsampler_taps
from tests import oracle

MODES = ["replicate", "reflect", "zero", "none"]
GEOMETRIES = [(2, 8), (4, 16), (3, 7), (2, 5)]  # (factor, number of taps)
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def _taps(k: int, dtype=torch.float64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(k, generator=g, dtype=torch.float64) - 0.2
    return (t / t.sum()).to(dtype)


def _layouts(x: torch.Tensor, device="cpu"):
    """(name, tensor) with x's values on ``device``: contiguous, channels_last, strided view."""
    x = x.to(device)
    yield "contiguous", x
    yield "channels_last", x.contiguous(memory_format=torch.channels_last)
    # non-contiguous view: every other column of a wider tensor
    wide = torch.randn(*x.shape[:3], 2 * x.shape[3], dtype=x.dtype, device=x.device)
    wide[..., ::2] = x
    yield "strided", wide[..., ::2]


def sample_inputs(device, requires_grad: bool = False):
    """Small float64 argument tuples (x, taps, factor, padding) of dip::downsample on
    ``device``: every padding mode, odd and even tap counts, the three layouts, odd sizes. The
    one list feeds the value, gradient and opcheck tests."""
    cases = [((2, 8), "replicate", 0), ((3, 7), "reflect", 1), ((2, 5), "zero", 2),
             ((4, 16), "none", 0), ((1, 3), "replicate", 2), ((3, 6), "reflect", 0)]
    samples = []
    for i, ((factor, k), mode, layout) in enumerate(cases):
        base = torch.randn(1, 2, 19, 17, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(i))
        x = list(_layouts(base, device))[layout][1]
        samples.append((x.requires_grad_(requires_grad), _taps(k).to(device), factor, mode))
    return samples


def _adjoint_args(x, taps, factor, mode):
    """dip::downsample_adjoint's arguments for the image-space sample x."""
    with torch.no_grad():
        y = ops.downsample_reference(x.detach().cpu(), taps.cpu(), factor, mode)
    y = torch.randn_like(y).to(x.device).requires_grad_(x.requires_grad)
    return y, taps, factor, mode, list(x.shape[2:])


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_reference_equals_original_dense_construction(factor):
    taps = oracle.lanczos_taps(factor)
    x = torch.rand(2, 3, 8 * factor + 3, 8 * factor + 1, dtype=torch.float64)
    got = ops.downsample_reference(x, taps, factor, "replicate")
    want = oracle.dense_downsample(x, factor)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("factor,k", GEOMETRIES)
def test_reference_adjoint_identity(mode, factor, k):
    taps = _taps(k)
    u = torch.randn(2, 2, 23, 19, dtype=torch.float64)
    v = torch.randn_like(ops.downsample_reference(u, taps, factor, mode))
    lhs = (ops.downsample_reference(u, taps, factor, mode) * v).sum()
    rhs = (u * ops.downsample_adjoint_reference(v, taps, factor, mode, (23, 19))).sum()
    assert abs(lhs - rhs) <= 1e-12 * max(1.0, abs(lhs))


def _check_forward_and_adjoint(native, close, x, taps, factor, mode, device, dtype):
    """dip::downsample and dip::downsample_adjoint in ``dtype`` on ``device``, in every layout,
    against the float64 reference on the float64 sample ``x`` (N, C, H, W)."""
    hw = tuple(x.shape[-2:])
    want = ops.downsample_reference(x, taps, factor, mode)
    y = torch.randn_like(want)
    want_adj = ops.downsample_adjoint_reference(y, taps, factor, mode, hw)
    t = taps.to(device, dtype)
    for name, xx in _layouts(x.to(dtype), device):
        close(native.downsample(xx, t, factor, mode), want, TOL[dtype], name)
    for name, yy in _layouts(y.to(dtype), device):
        close(native.downsample_adjoint(yy, t, factor, mode, list(hw)), want_adj, TOL[dtype], name)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("factor,k", GEOMETRIES)
def test_native_matches_reference(native, device, close, dtype, mode, factor, k):
    _check_forward_and_adjoint(native, close, torch.randn(2, 3, 37, 29, dtype=torch.float64), _taps(k),
                               factor, mode, device, dtype)


def test_native_matches_reference_samples(native, device, close):
    """The public ops (forward and backward) on every sample against the reference."""
    for x, taps, factor, mode in sample_inputs(device, requires_grad=True):
        xr = x.detach().cpu().requires_grad_(True)
        want = ops.downsample_reference(xr, taps.cpu(), factor, mode)
        got = ops.downsample(x, taps, factor, mode)
        assert got.device == x.device
        close(got, want, 1e-10, f"{factor} {mode} forward")
        g = torch.randn_like(want)
        want.backward(g)
        got.backward(g.to(device))
        close(x.grad, xr.grad, 1e-10, f"{factor} {mode} backward")


def test_public_ops_dispatch_to_native(native, called_ops):
    x = torch.randn(1, 2, 16, 16, dtype=torch.float64, requires_grad=True)
    with called_ops() as seen:
        ops.downsample(x, _taps(8), 2).sum().backward()
    assert {"dip.downsample.default", "dip.downsample_adjoint.default"} <= seen
    with called_ops() as seen:
        ops.downsample_reference(x, _taps(8), 2)
    assert not any(name.startswith("dip.") for name in seen)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("factor,k", [(2, 5), (3, 6)])
def test_native_adjoint_identity(native, device, mode, factor, k):
    taps = _taps(k).to(device)
    u = torch.randn(1, 2, 17, 14, dtype=torch.float64, device=device)
    v = torch.randn_like(native.downsample(u, taps, factor, mode))
    lhs = (native.downsample(u, taps, factor, mode) * v).sum()
    rhs = (u * native.downsample_adjoint(v, taps, factor, mode, [17, 14])).sum()
    assert abs(lhs - rhs) <= 1e-12 * max(1.0, abs(lhs))


def test_native_gradcheck_and_gradgradcheck(native, device):
    for x, taps, factor, mode in sample_inputs(device, requires_grad=True)[:4]:
        y, *adj_rest = _adjoint_args(x, taps, factor, mode)
        size = adj_rest[-1]

        down = functools.partial(ops.downsample, taps=taps, factor=factor, padding=mode)
        adj = functools.partial(ops.downsample_adjoint, taps=taps, factor=factor, padding=mode,
                                input_size=size)

        assert torch.autograd.gradcheck(down, (x,))
        assert torch.autograd.gradgradcheck(down, (x,))
        assert torch.autograd.gradcheck(adj, (y,))
        assert torch.autograd.gradgradcheck(adj, (y,))


def test_reference_gradcheck_includes_taps():
    taps = _taps(6).requires_grad_(True)
    x = torch.randn(1, 1, 10, 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, t: ops.downsample(a, t, 2, "reflect"), (x, taps))


def test_opcheck(native, device):
    samples = sample_inputs(device, requires_grad=True)
    # and one float32 channels_last sample without gradients
    x = torch.randn(1, 2, 12, 16, device=device).contiguous(memory_format=torch.channels_last)
    samples.append((x, _taps(7, torch.float32).to(device), 3, "reflect"))
    for x, taps, factor, mode in samples:
        torch.library.opcheck(native.downsample, (x, taps, factor, mode))
        torch.library.opcheck(native.downsample_adjoint, _adjoint_args(x, taps, factor, mode))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("factor,k", [(1, 3), (2, 8), (3, 7), (4, 16)])
def test_native_matches_reference_wide_rows(native, device, close, dtype, mode, factor, k):
    """Rows wide enough for the kernels' 4-vector register blocks and their vector and scalar
    tails (95 columns: a block of 64 floats (AVX-512) or 2 of 32 + 3 or 1 vectors + a scalar
    tail; the output, 95 to 23 wide)."""
    _check_forward_and_adjoint(native, close, torch.randn(1, 2, 41, 95, dtype=torch.float64),
                               _taps(k, seed=factor), factor, mode, device, dtype)


def test_large_image_and_bf16(native, device, close):
    """Many planes' worth of work (3 x 512², many CUDA thread blocks) in float64, and bfloat16
    (the reference path) within bfloat16's precision of the float64 result."""
    taps = torch.from_numpy(downsampler_taps(4, "lanczos2", 0.5))
    x = torch.rand(1, 3, 512, 512, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    want = ops.downsample_reference(x, taps, 4)
    close(ops.downsample(x.to(device), taps.to(device), 4), want, 1e-10, "float64")
    got = ops.downsample(x.to(device, torch.bfloat16), taps.to(device, torch.bfloat16), 4)
    assert got.dtype == torch.bfloat16
    assert (got.double().cpu() - want).abs().max().item() < 2e-2


@settings(max_examples=8, deadline=None)
@given(n=st.integers(1, 2), c=st.integers(1, 3), h=st.integers(9, 30), w=st.integers(9, 30),
       factor=st.integers(1, 4), k=st.integers(1, 9), mode=st.sampled_from(MODES),
       transpose=st.booleans())
def test_native_matches_reference_random(n, c, h, w, factor, k, mode, transpose):
    if not ops.has_native():
        pytest.skip(ops.native_status())
    taps = _taps(k, seed=k)
    p = ops.pad_amount(k, factor, mode)
    if p < 0 or (mode == "reflect" and p >= min(h, w)) or min(h, w) + 2 * p < k:
        with pytest.raises(ValueError):
            ops.downsample(torch.zeros(n, c, h, w, dtype=torch.float64), taps, factor, mode)
        return
    x = torch.randn(n, c, w, h, dtype=torch.float64).transpose(2, 3) if transpose \
        else torch.randn(n, c, h, w, dtype=torch.float64)
    want = ops.downsample_reference(x, taps, factor, mode)
    torch.testing.assert_close(torch.ops.dip.downsample(x, taps, factor, mode), want,
                               rtol=0, atol=1e-10)
    y = torch.randn_like(want)
    torch.testing.assert_close(
        torch.ops.dip.downsample_adjoint(y, taps, factor, mode, [h, w]),
        ops.downsample_adjoint_reference(y, taps, factor, mode, (h, w)), rtol=0, atol=1e-10)


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("fn", [ops.downsample, ops.downsample_reference])
def test_python_errors(fn):
    x = torch.randn(1, 2, 16, 16)
    taps = _taps(8, torch.float32)
    with pytest.raises(TypeError, match="floating dtype"):
        fn(x.to(torch.int32), taps, 2)
    with pytest.raises(TypeError, match="taps must have the dtype"):
        fn(x, taps.double(), 2)
    with pytest.raises(ValueError, match="same device"):
        fn(x, taps.to("meta"), 2)
    with pytest.raises(ValueError, match="must be 4-D"):
        fn(x[0], taps, 2)
    with pytest.raises(ValueError, match="1-D"):
        fn(x, taps[None], 2)
    for bad in (2.5, "2", None, True):
        with pytest.raises(TypeError, match="factor must be an integer >= 1"):
            fn(x, taps, bad)
    with pytest.raises(ValueError, match="factor must be an integer >= 1, got 0"):
        fn(x, taps, 0)
    with pytest.raises(ValueError, match="must not be empty"):
        fn(x[:0], taps, 2)
    with pytest.raises(ValueError, match="padding must be one of"):
        fn(x, taps, 2, "circular")
    with pytest.raises(ValueError, match="taps longer than the image allows"):
        fn(torch.randn(1, 1, 40, 3), _taps(16, torch.float32), 4, "replicate")
    with pytest.raises(ValueError, match="reflect padding by 6 pixels"):
        fn(torch.randn(1, 1, 40, 5), _taps(16, torch.float32), 4, "reflect")
    with pytest.raises(ValueError, match="negative border"):
        fn(x, _taps(2, torch.float32), 4)


def test_device_mismatch_is_an_error(native, device):
    other = "meta" if device.type == "cpu" else "cpu"
    x = torch.randn(1, 3, 16, 16, device=device)
    with pytest.raises(ValueError, match="same device"):
        ops.downsample(x, _taps(8, torch.float32).to(other), 2)


def test_adjoint_python_errors():
    taps = _taps(8)
    y = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"y must have spatial size \(9, 8\)"):
        ops.downsample_adjoint(y, taps, 2, "replicate", (18, 16))
    with pytest.raises(TypeError, match="input_size must be a pair"):
        ops.downsample_adjoint(y, taps, 2, "replicate", 16)
    with pytest.raises(TypeError, match="input_size .* is required"):
        ops.downsample_adjoint(y, taps, 2, "replicate")


def test_native_errors(native):
    x = torch.randn(1, 2, 16, 16)
    taps = _taps(8, torch.float32)
    with pytest.raises(RuntimeError, match="x must be 4-D"):
        native.downsample(x[0], taps, 2, "replicate")
    with pytest.raises(RuntimeError, match="taps must have the dtype of x"):
        native.downsample(x, taps.double(), 2, "replicate")
    with pytest.raises(RuntimeError, match="factor must be an integer >= 1"):
        native.downsample(x, taps, 0, "replicate")
    with pytest.raises(RuntimeError, match="padding must be one of"):
        native.downsample(x, taps, 2, "wrap")
    with pytest.raises(RuntimeError, match="must not be empty"):
        native.downsample(x[:, :0], taps, 2, "replicate")
    with pytest.raises(RuntimeError, match="taps longer than the image allows"):
        native.downsample(torch.randn(1, 1, 3, 40), _taps(16, torch.float32), 4, "zero")
    with pytest.raises(RuntimeError, match="y must have spatial size 8x8"):
        native.downsample_adjoint(torch.randn(1, 2, 5, 8), taps, 2, "replicate", [16, 16])


# ----------------------------------------------------------------------------- integration
class _Down(torch.nn.Module):
    def __init__(self, taps: torch.Tensor):
        super().__init__()
        self.register_buffer("taps", taps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.dip.downsample(x, self.taps, 2, "replicate")
        return torch.ops.dip.downsample_adjoint(y, self.taps, 2, "replicate", [x.shape[2],
                                                                                x.shape[3]])


def test_torchscript(native):
    module = _Down(_taps(8))
    scripted = torch.jit.script(module)
    x = torch.randn(1, 2, 16, 12, dtype=torch.float64)
    torch.testing.assert_close(scripted(x), module(x))
    assert "dip::downsample" in str(scripted.graph)


def test_taps_requiring_grad_use_reference_path(native):
    taps = _taps(8).requires_grad_(True)
    x = torch.randn(1, 1, 16, 16, dtype=torch.float64)
    ops.downsample(x, taps, 2).square().sum().backward()
    assert taps.grad is not None and taps.grad.abs().sum() > 0


def test_onnx_export_uses_standard_ops(native, called_ops, monkeypatch):
    """While torch.onnx.export traces, the public op records standard ops only."""
    x = torch.randn(1, 2, 16, 16)
    taps = _taps(8, torch.float32)
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    with called_ops() as seen:
        y = ops.downsample(x, taps, 2)
    assert not any(name.startswith("dip.") for name in seen)
    assert any("convolution" in name for name in seen)
    torch.testing.assert_close(y, torch.ops.dip.downsample(x, taps, 2, "replicate"))
