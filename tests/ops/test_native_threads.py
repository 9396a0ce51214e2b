"""The native CPU kernels on torch's intra-op threads: built with OpenMP (ATen's parallel_for is
a header template that runs serially in a library built without it), and the same values with
two threads as with one and as the reference.

The rest of the suite runs on one thread (tests/conftest.py), so these are the tests in which
the kernels' parallel loops split their work: each size below is a few times the kernels'
grain (bn_leaky_relu: 32768 values a task; upsample: 16384 output values a task).
"""
from __future__ import annotations

import sys

import pytest
import torch

import dip.ops as ops


@pytest.fixture
def two_threads(native):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="OpenMP is linked on Linux")
def test_kernels_built_with_openmp(native):
    assert ops.build_info()["cpu_threads"] == "openmp", (
        "the native library was built without OpenMP: its CPU kernels run on one thread; "
        "see setup.py (_openmp)")


def _bn_grads(x, w, b, g, fn):
    xg, wg, bg = (t.detach().clone(memory_format=torch.preserve_format).requires_grad_(True)
                  for t in (x, w, b))
    y = fn(xg, wg, bg, torch.zeros(x.shape[1], dtype=w.dtype),
           torch.ones(x.shape[1], dtype=w.dtype), negative_slope=0.1)
    y.backward(g)
    return y, xg.grad, wg.grad, bg.grad


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("channels", [4, 132])
def test_bn_leaky_relu_two_threads(two_threads, close, layout, channels):
    gen = torch.Generator().manual_seed(3)
    shape = (2, channels, 96, 96) if channels == 4 else (2, channels, 24, 20)
    x = torch.randn(*shape, dtype=torch.float64, generator=gen) * 2 + 1
    g = torch.randn(*shape, dtype=torch.float64, generator=gen)
    w = torch.rand(channels, dtype=torch.float64, generator=gen) + 0.5
    b = torch.randn(channels, dtype=torch.float64, generator=gen)
    if layout == "channels_last":
        x, g = (t.contiguous(memory_format=torch.channels_last) for t in (x, g))
    want = _bn_grads(x, w, b, g, ops.bn_leaky_relu_reference)
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        args = [t.to(dtype) for t in (x, w, b, g)]
        got2 = _bn_grads(*args, ops.bn_leaky_relu)
        torch.set_num_threads(1)
        got1 = _bn_grads(*args, ops.bn_leaky_relu)
        torch.set_num_threads(2)
        for a, one, ref, what in zip(got2, got1, want, ["y", "dx", "dw", "db"], strict=True):
            close(a, ref, tol, f"{layout} {dtype} 2 threads: {what}")
            close(a, one, tol, f"{layout} {dtype} 2 threads against 1: {what}")


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_upsample_two_threads(two_threads, close, layout):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 8, 40, 36, dtype=torch.float64, generator=gen)
    g = torch.randn(2, 8, 80, 72, dtype=torch.float64, generator=gen)
    if layout == "channels_last":
        x, g = (t.contiguous(memory_format=torch.channels_last) for t in (x, g))
    close(ops.upsample_bilinear2x(x), ops.upsample_bilinear2x_reference(x), 1e-12, "up")
    close(ops.upsample_bilinear2x_adjoint(g), ops.upsample_bilinear2x_adjoint_reference(g),
          1e-12, "adjoint")


def test_downsample_and_masked_mse_two_threads(two_threads, close):
    gen = torch.Generator().manual_seed(5)
    taps = torch.tensor([0.1, 0.2, 0.4, 0.2, 0.1], dtype=torch.float64)
    x = torch.randn(2, 3, 64, 60, dtype=torch.float64, generator=gen)
    close(ops.downsample(x, taps, 2), ops.downsample_reference(x, taps, 2), 1e-12, "down")
    g = torch.randn(2, 3, 32, 30, dtype=torch.float64, generator=gen)
    close(ops.downsample_adjoint(g, taps, 2, input_size=(64, 60)),
          ops.downsample_adjoint_reference(g, taps, 2, input_size=(64, 60)), 1e-12, "adjoint")
    y = torch.randn_like(x)
    m = (torch.rand(x.shape, generator=gen) > 0.5).double()
    close(ops.masked_mse(x, y, m), ops.masked_mse_reference(x, y, m), 1e-12, "masked mse")
