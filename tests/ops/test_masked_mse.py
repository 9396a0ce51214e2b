"""dip.ops.masked_mse: reference spec, native fused kernels, autograd, errors."""
from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import dip.ops as ops

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
MASK_SHAPES = ["n1", "11", "nc", "1c"]


def _mask(kind: str, n: int, c: int, h: int, w: int, dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = {"n1": (n, 1, h, w), "11": (1, 1, h, w), "nc": (n, c, h, w), "1c": (1, c, h, w)}
    return (torch.rand(shape[kind], generator=g) > 0.4).to(dtype)


def test_reference_is_the_originals_loss():
    x, y = torch.rand(2, 3, 9, 7), torch.rand(2, 3, 9, 7)
    m = _mask("n1", 2, 3, 9, 7, torch.float32)
    torch.testing.assert_close(ops.masked_mse_reference(x, y, m), F.mse_loss(x * m, y * m))
    known = m.expand_as(x).sum()
    torch.testing.assert_close(ops.masked_mse_reference(x, y, m, "mask"),
                               ((x - y) * m).square().sum() / known)
    assert ops.masked_mse_reference(x, y, torch.zeros_like(m), "mask").item() == 0.0


def _layouts(t: torch.Tensor, device="cpu"):
    """(name, tensor) with t's values on ``device``: contiguous, channels_last, strided view."""
    t = t.to(device)
    yield "contiguous", t
    yield "channels_last", t.contiguous(memory_format=torch.channels_last)
    wide = torch.zeros(*t.shape[:3], 2 * t.shape[3], dtype=t.dtype, device=t.device)
    wide[..., 1::2] = t
    yield "strided", wide[..., 1::2]


def sample_inputs(device, requires_grad: bool = False):
    """Small float64 argument tuples (x, target, mask, normalize_by_mask, with_grad) of
    dip::masked_mse on ``device``: every mask broadcast, both normalisations, fused and unfused,
    the three layouts. The one list feeds the value, gradient and opcheck tests."""
    samples = []
    for i, kind in enumerate(MASK_SHAPES):
        g = torch.Generator().manual_seed(i)
        x = torch.randn(2, 3, 11, 7, dtype=torch.float64, generator=g)
        t = torch.randn(2, 3, 11, 7, dtype=torch.float64, generator=g)
        m = _mask(kind, 2, 3, 11, 7, torch.float64, seed=i) * 0.7
        x = list(_layouts(x, device))[i % 3][1].requires_grad_(requires_grad)
        samples.append((x, t.to(device).requires_grad_(requires_grad), m.to(device), i % 2 == 1,
                        i < 2))
    return samples


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", MASK_SHAPES)
@pytest.mark.parametrize("normalize", ["all", "mask"])
def test_native_matches_reference(native, device, close, dtype, kind, normalize):
    n, c, h, w = 2, 3, 37, 29
    x = torch.randn(n, c, h, w, dtype=torch.float64)
    t = torch.randn(n, c, h, w, dtype=torch.float64)
    m = _mask(kind, n, c, h, w, torch.float64)
    xr = x.clone().requires_grad_(True)
    tr = t.clone().requires_grad_(True)
    want = ops.masked_mse_reference(xr, tr, m, normalize)
    want.backward()
    td = t.to(device, dtype)
    for name, xx in _layouts(x.to(dtype), device):
        for mname, mm in _layouts(m.to(dtype), device):
            what = f"{name}/{mname}"
            for with_grad in (False, True):
                got, unit, s = native.masked_mse(xx, td, mm, normalize == "mask", with_grad)
                close(got, want, TOL[dtype], what)
                assert s.item() == 1.0, what  # the schema's meaning: u is the gradient itself
            close(unit, xr.grad, TOL[dtype], what)
            grad = native.masked_mse_backward(torch.ones((), dtype=dtype, device=device), xx, td,
                                              mm, normalize == "mask")
            close(grad, xr.grad, TOL[dtype], what)
        xg = xx.detach().clone().requires_grad_(True)
        tg = td.clone().requires_grad_(True)
        ops.masked_mse(xg, tg, m.to(device, dtype), normalize).backward()
        close(xg.grad, xr.grad, TOL[dtype], name)
        close(tg.grad, tr.grad, TOL[dtype], name)


def test_large_reduction(native, device):
    """A reduction over 3 x 1024² values (many CUDA blocks) equals the float64 reference."""
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(1, 3, 1024, 1024, dtype=torch.float64, generator=gen)
    t = torch.rand(1, 3, 1024, 1024, dtype=torch.float64, generator=gen)
    m = (torch.rand(1, 1, 1024, 1024, generator=gen) > 0.5).double()
    want = ops.masked_mse_reference(x, t, m)
    got32 = ops.masked_mse(*(v.to(device, torch.float32) for v in (x, t, m)))
    assert abs(got32.item() - want.item()) <= 1e-5 * want.item()
    got64 = ops.masked_mse(x.to(device), t.to(device), m.to(device), "mask")
    assert abs(got64.item() - ops.masked_mse_reference(x, t, m, "mask").item()) <= 1e-12


def test_zero_mask_normalized_by_mask_is_zero(native):
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    loss = ops.masked_mse(x, torch.zeros_like(x), torch.zeros(1, 1, 8, 8, dtype=torch.float64),
                          "mask")
    loss.backward()
    assert loss.item() == 0.0 and x.grad.abs().max().item() == 0.0


def test_bool_mask_and_dispatch(native, called_ops):
    x = torch.randn(2, 3, 9, 9, requires_grad=True)
    t = torch.randn(2, 3, 9, 9)
    m = torch.rand(2, 1, 9, 9) > 0.5
    with called_ops() as seen:
        loss = ops.masked_mse(x, t, m)
        loss.backward()
    # the forward pass wrote the gradient direction: backward is a scaling, no second kernel,
    # and no zero-filled gradients for the non-differentiable outputs
    assert "dip.masked_mse.default" in seen and "dip.masked_mse_backward.default" not in seen
    assert not [name for name in seen if "zero" in name or "fill" in name], seen
    torch.testing.assert_close(loss, F.mse_loss(x * m, t * m))


def test_native_gradcheck(native, device):
    for x, t, m, by_mask, with_grad in sample_inputs(device, requires_grad=True):
        normalize = "mask" if by_mask else "all"
        assert torch.autograd.gradcheck(functools.partial(ops.masked_mse, mask=m, normalize=normalize), (x, t))
        # the op itself, fused or not (unfused: the gradient from dip::masked_mse_backward)
        assert torch.autograd.gradcheck(
            lambda a, b, m=m, by_mask=by_mask, with_grad=with_grad: native.masked_mse(a, b, m, by_mask, with_grad)[0],
            (x, t))


def test_mask_requiring_grad_uses_reference(native):
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    m = torch.rand(1, 1, 6, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda mm: ops.masked_mse(x, torch.zeros_like(x), mm), (m,))


def test_opcheck(native, device):
    samples = sample_inputs(device, requires_grad=True)
    xc = torch.randn(1, 4, 6, 5, device=device).contiguous(memory_format=torch.channels_last)
    samples.append((xc, torch.randn(1, 4, 6, 5, device=device),
                    torch.ones(1, 1, 6, 5, device=device), False, True))
    for x, t, m, by_mask, with_grad in samples:
        torch.library.opcheck(native.masked_mse, (x, t, m, by_mask, with_grad))
        g = torch.tensor(0.5, dtype=x.dtype, device=device)
        torch.library.opcheck(native.masked_mse_backward,
                              (g, x.detach(), t.detach(), m, by_mask))


@settings(max_examples=8, deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 4), h=st.integers(1, 20), w=st.integers(1, 20),
       kind=st.sampled_from(MASK_SHAPES), channels_last=st.booleans(),
       normalize=st.sampled_from(["all", "mask"]))
def test_native_matches_reference_random(n, c, h, w, kind, channels_last, normalize):
    if not ops.has_native():
        pytest.skip(ops.native_status())
    x = torch.randn(n, c, h, w, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    t = torch.randn(n, c, h, w, dtype=torch.float64).transpose(2, 3).contiguous().transpose(2, 3)
    m = _mask(kind, n, c, h, w, torch.float64)
    torch.testing.assert_close(torch.ops.dip.masked_mse(x, t, m, normalize == "mask", True)[0],
                               ops.masked_mse_reference(x, t, m, normalize),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("fn", [ops.masked_mse, ops.masked_mse_reference])
def test_python_errors(fn):
    x = torch.randn(2, 3, 8, 8)
    m = torch.ones(2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"mask must have shape \(2 or 1, 3 or 1, 8, 8\)"):
        fn(x, x, torch.ones(2, 2, 8, 8))
    with pytest.raises(ValueError, match="mask must have shape"):
        fn(x, x, torch.ones(8, 8))
    with pytest.raises(ValueError, match=r"target must have the shape of x \(2, 3, 8, 8\)"):
        fn(x, x[:, :2], m)
    with pytest.raises(TypeError, match="target must have the dtype of x"):
        fn(x, x.double(), m)
    with pytest.raises(TypeError, match="floating dtype"):
        fn(x.long(), x.long(), m)
    with pytest.raises(TypeError, match="mask must be bool or have the dtype"):
        fn(x, x, m.double())
    with pytest.raises(ValueError, match="same device"):
        fn(x, x, m.to("meta"))
    with pytest.raises(ValueError, match="must be 4-D"):
        fn(x[0], x[0], m)
    with pytest.raises(ValueError, match="must not be empty"):
        fn(x[:0], x[:0], m[:0])
    with pytest.raises(ValueError, match="normalize must be"):
        fn(x, x, m, "sum")


def test_device_mismatch_is_an_error(native, device):
    other = "meta" if device.type == "cpu" else "cpu"
    x = torch.randn(1, 3, 16, 16, device=device)
    with pytest.raises(ValueError, match="same device"):
        ops.masked_mse(x, torch.randn(1, 3, 16, 16, device=other),
                       torch.ones(1, 1, 16, 16, device=device))
    with pytest.raises(ValueError, match="same device"):
        ops.masked_mse(x, x, torch.ones(1, 1, 16, 16, device=other))


def test_native_errors(native):
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(RuntimeError, match="mask must have shape"):
        native.masked_mse(x, x, torch.ones(2, 2, 8, 8), False, False)
    with pytest.raises(RuntimeError, match="target must have the dtype of x"):
        native.masked_mse(x, x.double(), torch.ones(2, 1, 8, 8), False, True)
    with pytest.raises(RuntimeError, match="x must be 4-D"):
        native.masked_mse(x[0], x[0], torch.ones(1, 8, 8), False, False)
    with pytest.raises(RuntimeError, match="mask must have the dtype of x"):
        native.masked_mse(x, x, torch.ones(2, 1, 8, 8, dtype=torch.float64), False, False)


class _Loss(torch.nn.Module):
    def forward(self, x: torch.Tensor, t: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return torch.ops.dip.masked_mse(x, t, m, False, False)[0]


def test_torchscript(native):
    scripted = torch.jit.script(_Loss())
    x, t = torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8)
    m = torch.ones(1, 1, 8, 8)
    torch.testing.assert_close(scripted(x, t, m), F.mse_loss(x, t))
    assert "dip::masked_mse" in str(scripted.graph)
