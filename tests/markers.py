"""What the markers declared in pyproject.toml do (shared by tests/ and benchmarks/ conftests)."""
from __future__ import annotations

import pytest
import torch


def skip_cuda_without_device(items: list[pytest.Item]) -> None:
    """Skip every item marked ``cuda`` when ``torch.cuda.is_available()`` is False."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)
