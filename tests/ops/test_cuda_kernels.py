"""CUDA kernels of dip.ops against the reference: values, autograd, opcheck, errors.

Skipped where CUDA is not available (the CPU-only CI). On a GPU machine:

    OMP_NUM_THREADS=1 python -m pytest tests/ops/test_cuda_kernels.py -q

The reference is evaluated on the CPU in float64, so a CUDA kernel is compared with an
independent computation, not with another CUDA path.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import dip
import dip.ops as ops
from dip.physics.kernels import downsampler_taps

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


@pytest.fixture
def native_cuda():
    if not ops.has_native():
        pytest.skip(f"native library unavailable: {ops.native_status()}")
    for op in ("downsample", "downsample_adjoint", "masked_mse", "bn_leaky_relu"):
        if not torch._C._dispatch_has_kernel_for_dispatch_key(f"dip::{op}", "CUDA"):
            pytest.fail(f"the native library was built without the CUDA kernel of dip::{op}")
    return torch.ops.dip


def _layouts(t: torch.Tensor):
    """The same values as contiguous, channels_last and a strided view, on the GPU."""
    t = t.to(CUDA)
    yield "contiguous", t
    yield "channels_last", t.contiguous(memory_format=torch.channels_last)
    wide = torch.zeros(*t.shape[:3], 2 * t.shape[3], dtype=t.dtype, device=CUDA)
    wide[..., 1::2] = t
    yield "strided", wide[..., 1::2]


def _close(got: torch.Tensor, want: torch.Tensor, dtype, what: str) -> None:
    scale = max(1.0, want.abs().max().item())
    torch.testing.assert_close(got.detach().cpu().double(), want.detach().cpu().double(), rtol=0,
                               atol=TOL[dtype] * scale, msg=what)


# ----------------------------------------------------------------------------- downsample
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("factor,shape", [(2, (2, 3, 37, 29)), (4, (1, 3, 67, 70)), (3, (1, 2, 40, 41))])
@pytest.mark.parametrize("padding", ["replicate", "reflect", "zero"])
def test_downsample_matches_cpu_reference(native_cuda, dtype, factor, shape, padding):
    taps64 = torch.from_numpy(downsampler_taps(factor, "lanczos2", 0.5))
    x64 = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(factor))
    want = ops.downsample_reference(x64, taps64, factor, padding)
    g = torch.randn(want.shape, dtype=torch.float64)
    xr = x64.clone().requires_grad_(True)
    ops.downsample_reference(xr, taps64, factor, padding).backward(g)
    adj_want = ops.downsample_adjoint_reference(g, taps64, factor, padding, shape[-2:])
    taps = taps64.to(CUDA, dtype)
    for name, x in _layouts(x64.to(dtype)):
        xg = x.detach().clone(memory_format=torch.preserve_format).requires_grad_(True)
        y = ops.downsample(xg, taps, factor, padding)
        assert y.device.type == CUDA.type
        _close(y, want, dtype, f"{name}: forward")
        y.backward(g.to(CUDA, dtype))
        _close(xg.grad, xr.grad, dtype, f"{name}: backward")
        adj = ops.downsample_adjoint(g.to(CUDA, dtype), taps, factor, padding, shape[-2:])
        _close(adj, adj_want, dtype, f"{name}: adjoint")


def test_downsample_large_image_and_bf16(native_cuda):
    """Many thread blocks (3 x 512²), and bf16 within bf16's precision of the fp64 result."""
    taps64 = torch.from_numpy(downsampler_taps(4, "lanczos2", 0.5))
    x64 = torch.rand(1, 3, 512, 512, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    want = ops.downsample_reference(x64, taps64, 4)
    _close(ops.downsample(x64.to(CUDA), taps64.to(CUDA), 4), want, torch.float64, "fp64 512²")
    got = ops.downsample(x64.to(CUDA, torch.bfloat16), taps64.to(CUDA, torch.bfloat16), 4)
    assert got.dtype == torch.bfloat16
    assert (got.double().cpu() - want).abs().max().item() < 2e-2


def test_downsample_gradcheck_and_gradgradcheck(native_cuda):
    taps = torch.from_numpy(downsampler_taps(2, "lanczos2", 0.5)).to(CUDA)
    x = torch.randn(1, 2, 11, 9, dtype=torch.float64, device=CUDA, requires_grad=True)
    fn = lambda t: ops.downsample(t, taps, 2, "reflect")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


def test_downsample_adjoint_identity_on_gpu(native_cuda):
    """<A x, y> = <x, A^T y> with the CUDA kernels in float64."""
    taps = torch.from_numpy(downsampler_taps(4, "lanczos2", 0.5)).to(CUDA)
    x = torch.randn(2, 3, 45, 38, dtype=torch.float64, device=CUDA)
    ax = ops.downsample(x, taps, 4, "replicate")
    y = torch.randn_like(ax)
    aty = ops.downsample_adjoint(y, taps, 4, "replicate", x.shape[-2:])
    assert math.isclose((ax * y).sum().item(), (x * aty).sum().item(), rel_tol=1e-12)


# ----------------------------------------------------------------------------- masked_mse
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mask_shape", [(2, 1), (1, 1), (2, 3), (1, 3)])
@pytest.mark.parametrize("normalize", ["all", "mask"])
def test_masked_mse_matches_cpu_reference(native_cuda, dtype, mask_shape, normalize):
    gen = torch.Generator().manual_seed(3)
    x64 = torch.randn(2, 3, 37, 29, dtype=torch.float64, generator=gen)
    t64 = torch.randn(2, 3, 37, 29, dtype=torch.float64, generator=gen)
    m64 = (torch.rand(*mask_shape, 37, 29, generator=gen) > 0.4).double()
    xr = x64.clone().requires_grad_(True)
    want = ops.masked_mse_reference(xr, t64, m64, normalize)
    want.backward()
    for name, x in _layouts(x64.to(dtype)):
        for mname, m in _layouts(m64.to(dtype)):
            xg = x.detach().clone(memory_format=torch.preserve_format).requires_grad_(True)
            loss = ops.masked_mse(xg, t64.to(CUDA, dtype), m, normalize)
            _close(loss, want, dtype, f"{name}/{mname}: loss")
            loss.backward()
            _close(xg.grad, xr.grad, dtype, f"{name}/{mname}: grad")


def test_masked_mse_large_reduction(native_cuda):
    """A reduction over 3 x 1024² values (many blocks) equals the fp64 reference."""
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(1, 3, 1024, 1024, dtype=torch.float64, generator=gen)
    t = torch.rand(1, 3, 1024, 1024, dtype=torch.float64, generator=gen)
    m = (torch.rand(1, 1, 1024, 1024, generator=gen) > 0.5).double()
    want = ops.masked_mse_reference(x, t, m)
    got32 = ops.masked_mse(x.to(CUDA, torch.float32), t.to(CUDA, torch.float32), m.to(CUDA, torch.float32))
    assert abs(got32.item() - want.item()) <= 1e-5 * want.item()
    got64 = ops.masked_mse(x.to(CUDA), t.to(CUDA), m.to(CUDA), "mask")
    assert abs(got64.item() - ops.masked_mse_reference(x, t, m, "mask").item()) <= 1e-12


def test_masked_mse_gradcheck(native_cuda):
    x = torch.randn(1, 2, 7, 6, dtype=torch.float64, device=CUDA, requires_grad=True)
    t = torch.randn(1, 2, 7, 6, dtype=torch.float64, device=CUDA, requires_grad=True)
    m = (torch.rand(1, 1, 7, 6, device=CUDA) > 0.3).double()
    assert torch.autograd.gradcheck(lambda a, b: ops.masked_mse(a, b, m, "mask"), (x, t))


# ----------------------------------------------------------------------------- bn_leaky_relu
def _bn_run(fn, x, w, b, rm, rv, g):
    w = w.detach().clone().requires_grad_(True)
    b = b.detach().clone().requires_grad_(True)
    rm, rv = rm.clone(), rv.clone()
    xg = x.detach().clone(memory_format=torch.preserve_format).requires_grad_(True)
    y = fn(xg, w, b, rm, rv, momentum=0.3, negative_slope=0.1)
    y.backward(g.to(y.device, y.dtype))
    return y, rm, rv, xg.grad, w.grad, b.grad


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(3, 5, 13, 11), (1, 64, 96, 96), (2, 130, 7, 5)])
def test_bn_leaky_relu_matches_cpu_reference(native_cuda, called_ops, dtype, shape):
    gen = torch.Generator().manual_seed(5)
    c = shape[1]
    x64 = torch.randn(*shape, dtype=torch.float64, generator=gen) * 2 + 3
    w64, b64 = torch.rand(c, dtype=torch.float64, generator=gen) + 0.5, torch.randn(c, dtype=torch.float64, generator=gen)
    rm64, rv64 = torch.randn(c, dtype=torch.float64, generator=gen), torch.rand(c, dtype=torch.float64, generator=gen) + 0.5
    g = torch.linspace(-1, 1, x64.numel(), dtype=torch.float64).reshape(shape)
    want = _bn_run(ops.bn_leaky_relu_reference, x64, w64, b64, rm64, rv64, g)
    params = [t.to(CUDA, dtype) for t in (w64, b64, rm64, rv64)]
    for name, x in _layouts(x64.to(dtype)):
        with called_ops() as seen:
            got = _bn_run(ops.bn_leaky_relu, x, *params, g)
        assert {"dip.bn_leaky_relu.default", "dip.bn_leaky_relu_backward.default"} <= seen, name
        for a, b, what in zip(got, want, ["y", "running_mean", "running_var", "dx", "dw", "db"]):
            _close(a, b, dtype, f"{name}: {what}")
        if name == "channels_last":
            assert got[0].is_contiguous(memory_format=torch.channels_last)


def test_bn_leaky_relu_bf16_close_to_fp32(native_cuda):
    x = torch.randn(2, 32, 40, 40, device=CUDA) * 2 + 1
    w, b = torch.rand(32, device=CUDA) + 0.5, torch.randn(32, device=CUDA)
    want = ops.bn_leaky_relu_reference(x, w, b)
    got = ops.bn_leaky_relu(x.bfloat16(), w.bfloat16(), b.bfloat16())
    assert got.dtype == torch.bfloat16
    assert (got.float() - want).abs().max().item() < 0.05 * want.abs().max().item()


def test_bn_leaky_relu_gradcheck(native_cuda):
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64, device=CUDA, requires_grad=True)
    w = (torch.rand(3, dtype=torch.float64, device=CUDA) + 0.5).requires_grad_(True)
    b = torch.randn(3, dtype=torch.float64, device=CUDA, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, c, d: ops.bn_leaky_relu(a, c, d), (x, w, b))


# ----------------------------------------------------------------------------- opcheck, errors
def test_opcheck_on_cuda(native_cuda):
    taps = torch.from_numpy(downsampler_taps(2, "lanczos2", 0.5)).float().to(CUDA)
    x = torch.randn(1, 3, 20, 18, device=CUDA, requires_grad=True)
    torch.library.opcheck(native_cuda.downsample, (x, taps, 2, "replicate"))
    y = torch.randn(1, 3, 10, 9, device=CUDA, requires_grad=True)
    torch.library.opcheck(native_cuda.downsample_adjoint, (y, taps, 2, "replicate", [20, 18]))
    t = torch.randn(1, 3, 20, 18, device=CUDA)
    m = (torch.rand(1, 1, 20, 18, device=CUDA) > 0.5).float()
    torch.library.opcheck(native_cuda.masked_mse, (x, t, m, False, True))
    w, b = torch.rand(3, device=CUDA, requires_grad=True), torch.randn(3, device=CUDA, requires_grad=True)
    torch.library.opcheck(native_cuda.bn_leaky_relu, (x, w, b, 1e-5, 0.2))


def test_device_mismatch_is_an_error_not_a_crash(native_cuda):
    taps = torch.from_numpy(downsampler_taps(2, "lanczos2", 0.5)).float()
    x = torch.randn(1, 3, 16, 16, device=CUDA)
    with pytest.raises((ValueError, RuntimeError), match="device|cuda|cpu"):
        ops.downsample(x, taps, 2)
    with pytest.raises((ValueError, RuntimeError), match="device|cuda|cpu"):
        ops.masked_mse(x, torch.randn(1, 3, 16, 16), torch.ones(1, 1, 16, 16, device=CUDA))
