"""Fixtures shared by the tests of dip.ops."""
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
