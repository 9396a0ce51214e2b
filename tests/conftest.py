"""Test-wide settings and fixtures.

* One thread (two OpenMP threads on two busy cores can run 100x slower).
* ``DIP_BF16_NATIVE=0`` unless set: every fit of ``--precision auto`` (the recipes' default)
  runs fp32 on every CPU, so the suite computes the same on an AMX machine as on an AVX2 one;
  the tests of auto's choice force the switch both ways.
* Markers (declared in pyproject.toml): ``cuda`` tests are skipped where no CUDA device is
  available; ``slow`` tests (more than a few seconds each) run by default and in CI, and
  ``-m "not slow"`` leaves them out.
* Test data: ``image_maker`` and ``mask_maker`` write images and masks (tests/oracle.py);
  ``child_env`` is the environment for a ``python -m dip`` child process.
* ``called_ops``: the dispatcher ops a block of code calls (to assert that a native op ran).
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("DIP_BF16_NATIVE", "0")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import dip  # noqa: E402
from tests import markers, oracle  # noqa: E402

torch.set_num_threads(1)

#: the folder that holds the dip package under test (source tree or site-packages)
DIP_ROOT = Path(dip.__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    markers.skip_cuda_without_device(items)


@pytest.fixture
def image_maker():
    """``make(path, h, w, layout="RGB", bits=8, seed=0)`` writes a smooth test image and
    returns its pixels (C, H, W) float32 (:func:`tests.oracle.write_image`)."""
    return oracle.write_image


@pytest.fixture
def mask_maker():
    """``make(path, h, w)`` writes a mask with a missing block (0) in ones (known) and returns
    it (1, H, W) (:func:`tests.oracle.write_mask`)."""
    return oracle.write_mask


@pytest.fixture
def child_env() -> dict:
    """Environment for a ``python -m dip`` child: one thread, the dip under test first on
    PYTHONPATH, no progress bars."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(DIP_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("DIP_PROGRESS", None)
    return env


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
