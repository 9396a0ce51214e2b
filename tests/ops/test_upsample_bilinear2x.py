"""dip.ops.upsample_bilinear2x / its adjoint: torch's bilinear x2, native kernels, autograd."""
from __future__ import annotations

import pytest
import torch

import dip.ops as ops

TOL = {torch.float64: 1e-12, torch.float32: 1e-6}


def _layouts(x: torch.Tensor, device="cpu"):
    """(name, tensor) with x's values on ``device``: contiguous, channels_last, a channel slice
    of a channels_last tensor (as a concatenation's gradient is), a strided view."""
    x = x.to(device)
    yield "contiguous", x
    yield "channels_last", x.contiguous(memory_format=torch.channels_last)
    n, c, h, w = x.shape
    wide = torch.zeros(n, c + 3, h, w, dtype=x.dtype, device=x.device).contiguous(memory_format=torch.channels_last)
    wide[:, 3:] = x
    yield "channel slice", wide[:, 3:]
    cols = torch.zeros(n, c, h, 2 * w, dtype=x.dtype, device=x.device)
    cols[..., ::2] = x
    yield "strided", cols[..., ::2]


def sample_inputs(device, requires_grad: bool = False):
    """Small float64 images of dip::upsample_bilinear2x on ``device``: odd sizes, 1-pixel sides,
    each layout. The one list feeds the value, gradient and opcheck tests."""
    samples = []
    for i, shape in enumerate([(2, 3, 5, 4), (1, 4, 1, 6), (1, 2, 3, 1), (2, 5, 4, 7)]):
        g = torch.Generator().manual_seed(i)
        x = torch.randn(*shape, dtype=torch.float64, generator=g)
        x = list(_layouts(x, device))[i][1]
        samples.append(x.detach().requires_grad_(requires_grad))
    return samples


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(2, 3, 5, 4), (1, 130, 9, 11), (1, 1, 1, 1)])
def test_native_matches_reference(native, device, called_ops, close, dtype, shape):
    base = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    want = ops.upsample_bilinear2x_reference(base)
    g = torch.randn(want.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    want_adj = ops.upsample_bilinear2x_adjoint_reference(g)
    for name, x in _layouts(base.to(dtype), device):
        with called_ops() as seen:
            got = ops.upsample_bilinear2x(x)
            got_adj = ops.upsample_bilinear2x_adjoint(list(_layouts(g.to(dtype), device))[1][1])
        assert {"dip.upsample_bilinear2x.default", "dip.upsample_bilinear2x_adjoint.default"} <= seen
        close(got, want, TOL[dtype], f"{name}: up")
        close(got_adj, want_adj, 2 * TOL[dtype], f"{name}: adjoint")
        assert got.dtype == dtype and got.shape == want.shape
        if x.shape[1] > 1:  # channels_last in, channels_last out (a channel slice too); else NCHW
            cl = got.is_contiguous(memory_format=torch.channels_last)
            assert cl == (name in ("channels_last", "channel slice")), name


def test_native_matches_reference_bf16(native, device):
    """bfloat16, computed in float32: within one bfloat16 rounding of the output."""
    x = torch.randn(1, 33, 12, 10, generator=torch.Generator().manual_seed(0))
    xb = x.to(torch.bfloat16)
    want = ops.upsample_bilinear2x_reference(xb.float())
    g = torch.randn(want.shape, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    want_adj = ops.upsample_bilinear2x_adjoint_reference(g.float())
    for _, t in _layouts(xb, device):
        got = ops.upsample_bilinear2x(t)
        assert got.dtype == torch.bfloat16
        assert (got.float().cpu() - want).abs().max().item() <= 2 ** -8 * want.abs().max().item()
    got_adj = ops.upsample_bilinear2x_adjoint(g.to(device).contiguous(memory_format=torch.channels_last))
    assert (got_adj.float().cpu() - want_adj).abs().max().item() <= 2 ** -7 * want_adj.abs().max().item()


def test_adjoint_identity(native, device):
    """<up(u), v> = <u, up*(v)> for the native pair, in float64."""
    for u in sample_inputs(device):
        v = torch.randn(ops.upsample_bilinear2x(u).shape, dtype=torch.float64, device=device)
        lhs = (ops.upsample_bilinear2x(u) * v).sum()
        rhs = (u * ops.upsample_bilinear2x_adjoint(v)).sum()
        assert abs(lhs.item() - rhs.item()) <= 1e-12 * max(1.0, abs(lhs.item()))


def test_native_gradcheck_and_gradgradcheck(native, device):
    for x in sample_inputs(device, requires_grad=True):
        assert torch.autograd.gradcheck(ops.upsample_bilinear2x, (x,))
        assert torch.autograd.gradgradcheck(ops.upsample_bilinear2x, (x,))
        g = ops.upsample_bilinear2x(x).detach().requires_grad_(True)
        assert torch.autograd.gradcheck(ops.upsample_bilinear2x_adjoint, (g,))


def test_opcheck(native, device):
    for x in sample_inputs(device, requires_grad=True):
        torch.library.opcheck(native.upsample_bilinear2x, (x,))
        g = torch.randn(ops.upsample_bilinear2x(x).shape, dtype=x.dtype, device=device)
        torch.library.opcheck(native.upsample_bilinear2x_adjoint, (g.requires_grad_(True),))


def test_module_uses_the_kernel_and_exports_as_upsample(native, called_ops):
    from dip.models import to_standard
    from dip.models.common import Bilinear2x

    module = Bilinear2x()
    x = torch.randn(1, 4, 5, 6).contiguous(memory_format=torch.channels_last)
    with called_ops() as seen:
        y = module(x)
    assert "dip.upsample_bilinear2x.default" in seen
    standard = to_standard(torch.nn.Sequential(module))[0]
    assert type(standard) is torch.nn.Upsample
    torch.testing.assert_close(standard(x), y, rtol=0, atol=1e-6)
    module.native = False
    with called_ops() as seen:
        module(x)
    assert not any(name.startswith("dip.") for name in seen)


@pytest.mark.parametrize("fn, bad, match", [
    (ops.upsample_bilinear2x, torch.zeros(3, 4, 5), "4-D|shape"),
    (ops.upsample_bilinear2x, torch.zeros(1, 1, 2, 2, dtype=torch.int64), "floating"),
    (ops.upsample_bilinear2x_adjoint, torch.zeros(1, 1, 3, 4), "even"),
])
def test_python_errors(fn, bad, match):
    with pytest.raises((TypeError, ValueError), match=match):
        fn(bad)


def test_native_errors(native):
    with pytest.raises(RuntimeError, match="even"):
        native.upsample_bilinear2x_adjoint(torch.zeros(1, 1, 3, 4))
    with pytest.raises(RuntimeError, match="4-D"):
        native.upsample_bilinear2x(torch.zeros(3, 4))
