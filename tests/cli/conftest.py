"""Helpers for the command-line tests: a subprocess runner, a tiny input image and the 24 x 24
input of the deblurring tests (the image and mask makers are tests/conftest.py's; what the
deblurring tests share besides is tests/cli/deblur_helpers.py)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import dip
from tests import oracle

# the subprocess imports the same dip as this test process (source tree or installed package)
DIP_ROOT = Path(dip.__file__).resolve().parents[1]


def run_dip(*args, cwd=None, env=None, module="dip", timeout=240):
    """Run ``python -m dip ARGS`` in a subprocess with one thread; returns CompletedProcess."""
    full_env = dict(os.environ)
    full_env["OMP_NUM_THREADS"] = "1"
    full_env["PYTHONPATH"] = str(DIP_ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.pop("DIP_PROGRESS", None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def rgb_image(tmp_path):
    path = tmp_path / "in.png"
    oracle.write_image(path, 27, 33, "RGB")
    return path


@pytest.fixture
def blurred(tmp_path, image_maker):
    """A 24 x 24 RGB image, tmp_path/in.png: the input of ``dip deblur``'s tests."""
    path = tmp_path / "in.png"
    image_maker(path, 24, 24, "RGB")
    return path


@pytest.fixture
def dip_run():
    """The subprocess runner ``run_dip(*args, cwd=None, env=None, module="dip")``."""
    return run_dip
