"""Fixtures shared by the tests of dip.ops.

Op tests are parametrised by device through the ``device`` fixture: every test that takes it
runs on the CPU and on CUDA (marked ``cuda``; skipped without a GPU), against the reference
evaluated on the CPU in float64 where they compare values.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import dip.ops


def lanczos2_taps(factor: int) -> torch.Tensor:
    """The original's Lanczos-2, phase 1/2 1-D taps (sum 1), float64, length 4 * factor."""
    support, width = 2, 4 * factor + 1
    centre = (width + 1) / 2
    values = []
    for i in range(1, width):
        d = abs(i + 0.5 - centre) / factor
        if d == 0:
            values.append(1.0)
        else:
            values.append(support * math.sin(math.pi * d) * math.sin(math.pi * d / support)
                          / (math.pi ** 2 * d * d))
    taps = torch.tensor(values, dtype=torch.float64)
    return taps / taps.sum()


def dense_downsample(x: torch.Tensor, taps: torch.Tensor, factor: int) -> torch.Tensor:
    """The original's construction: replicate padding, then a dense C x C convolution whose
    weight is the 2-D kernel taps (x) taps on the channel diagonal and zero elsewhere."""
    c, k = x.shape[1], taps.shape[0]
    weight = x.new_zeros(c, c, k, k)
    for i in range(c):
        weight[i, i] = torch.outer(taps, taps)
    pad = (k - 1) // 2 if k % 2 else (k - factor) // 2
    return F.conv2d(F.pad(x, (pad,) * 4, mode="replicate"), weight, stride=factor)


@pytest.fixture
def native():
    """Skips a test that compares the native library when it is not built."""
    if not dip.ops.has_native():
        pytest.skip(f"native library unavailable: {dip.ops.native_status()}")
    return torch.ops.dip


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def device(request, native) -> torch.device:
    """Each device whose native kernels the op tests run: the CPU, and CUDA when a GPU is
    present (a library built without CUDA kernels fails there rather than skipping)."""
    if request.param == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA device")
        missing = [op for op in dip.ops._loader.registered_ops()
                   if not torch._C._dispatch_has_kernel_for_dispatch_key(f"dip::{op}", "CUDA")]
        if missing:
            pytest.fail(f"the native library was built without the CUDA kernels of {missing}")
    return torch.device(request.param)


def _close(got: torch.Tensor, want: torch.Tensor, tol: float, what: str = "") -> None:
    """``got`` (any device and dtype) equals ``want`` within ``tol`` times max(1, max|want|),
    compared on the CPU in float64."""
    scale = max(1.0, want.detach().abs().max().item()) if want.numel() else 1.0
    torch.testing.assert_close(got.detach().cpu().double(), want.detach().cpu().double(),
                               rtol=0, atol=tol * scale, msg=what or None)


@pytest.fixture
def close():
    """The value comparison of the op tests (see _close)."""
    return _close


@pytest.fixture
def taps_for():
    return lanczos2_taps


@pytest.fixture
def dense():
    return dense_downsample


class _RecordOps(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(str(func))
        return func(*args, **(kwargs or {}))


@pytest.fixture
def called_ops():
    """Context manager factory yielding the set of dispatcher op names called inside it."""
    import contextlib

    @contextlib.contextmanager
    def record():
        mode = _RecordOps()
        with mode:
            yield mode.names

    return record
