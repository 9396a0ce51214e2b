"""Fits on a CUDA device: they run, improve the image, and agree with the CPU on the first step.

Marked ``cuda``: skipped where CUDA is not available (the CPU-only CI).
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import dip
from tests import oracle

pytestmark = pytest.mark.cuda


def _noisy(size: int = 48):
    return oracle.noisy_smooth_image(size)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_denoise_fit_on_cuda_improves_the_image(precision):
    clean, noisy = _noisy()
    result = dip.denoise(noisy, steps=300, device="cuda", precision=precision, gt=clean, stop="steps")
    assert result.image.device.type == "cpu" and torch.isfinite(result.image).all()
    assert result.history["loss"][-1] < result.history["loss"][0]
    assert result.psnr > dip.metrics.psnr(noisy, clean)


def test_first_cuda_step_matches_cpu_step():
    """One step from the same weights and code (no reg noise: the devices' generators differ;
    TF32 off: cuDNN would otherwise round fp32 convolutions to TF32):
    the GPU computes the CPU's loss (fp32)."""
    clean, noisy = _noisy(32)
    losses = {}
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        for device in ("cpu", "cuda"):
            result = dip.denoise(noisy, steps=1, device=device, seed=0, stop="steps", reg_noise_std=0.0)
            losses[device] = result.history["loss"][0]
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    assert math.isclose(losses["cpu"], losses["cuda"], rel_tol=1e-4)


def test_inpaint_and_sr_fits_on_cuda():
    clean, _ = _noisy(64)
    mask = (torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    result = dip.inpaint(clean * mask[0], mask[0], steps=30, device="cuda")
    assert torch.isfinite(result.image).all()
    low = F.interpolate(clean[None], scale_factor=0.25, mode="area")[0]
    result = dip.super_resolve(low, 4, steps=30, device="cuda")
    assert tuple(result.image.shape[-2:]) == (64, 64) and torch.isfinite(result.image).all()
