"""Fixtures shared by the tests of dip.ops.

Op tests are parametrised by device through the ``device`` fixture: every test that takes it
runs on the CPU and on CUDA (marked ``cuda``; skipped without a GPU), against the reference
evaluated on the CPU in float64 where they compare values.
"""
from __future__ import annotations

import pytest
import torch

import dip.ops


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
