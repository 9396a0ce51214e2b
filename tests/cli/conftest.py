"""Helpers for the command-line tests: tiny images on disk and a subprocess runner."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dip
from dip import images

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


def make_image(path, h, w, layout="RGB", bits=8, seed=0):
    """Write a smooth random test image and return its pixels as a (C, H, W) tensor."""
    g = torch.Generator().manual_seed(seed)
    channels = 1 if layout in ("L", "LA") else 3
    base = torch.rand(channels, max(h // 4, 2), max(w // 4, 2), generator=g)
    image = torch.nn.functional.interpolate(base[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    alpha = torch.rand(1, h, w, generator=g) if "A" in layout else None
    images.write_image(path, image, images.ImageInfo(layout, bits, alpha=alpha))
    return image


def make_mask(path, h, w):
    mask = torch.ones(1, h, w)
    mask[:, h // 4: h // 2, w // 4: 3 * w // 4] = 0
    images.write_image(path, mask)
    return mask


@pytest.fixture
def rgb_image(tmp_path):
    path = tmp_path / "in.png"
    make_image(path, 27, 33, "RGB")
    return path


@pytest.fixture
def dip_run():
    """The subprocess runner ``run_dip(*args, cwd=None, env=None, module="dip")``."""
    return run_dip


@pytest.fixture
def image_maker():
    """``make(path, h, w, layout="RGB", bits=8, seed=0)`` writes a test image."""
    return make_image


@pytest.fixture
def mask_maker():
    """``make(path, h, w)`` writes a mask with a missing block (0) in ones (known)."""
    return make_mask
