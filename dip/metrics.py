"""Image quality metrics: PSNR and SSIM for images in [0, 1].

Images are tensors of shape (C, H, W) or (1, C, H, W) (or numpy arrays (H, W[, C])).
PSNR uses data range 1 and is in dB; SSIM is scikit-image's implementation with the
settings of Wang et al. (11-tap Gaussian window, sigma 1.5, population covariance); images
smaller than 11 px use the largest odd uniform window that fits.
"""
from __future__ import annotations

import math

import numpy as np
import torch


def _as_chw(img) -> torch.Tensor:
    if isinstance(img, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(img))
        t = t[None] if t.dim() == 2 else t.permute(2, 0, 1)
    elif isinstance(img, torch.Tensor):
        t = img.detach()
        if t.dim() == 4:
            if t.shape[0] != 1:
                raise ValueError(f"metrics take one image, got a batch of shape {tuple(t.shape)}")
            t = t[0]
        elif t.dim() == 2:
            t = t[None]
        elif t.dim() != 3:
            raise ValueError(f"image must have shape (C, H, W) or (1, C, H, W), got {tuple(t.shape)}")
    else:
        raise TypeError(f"image must be a tensor or numpy array, got {type(img).__name__}")
    return t.to(device="cpu", dtype=torch.float64)


def _pair(a, b):
    a, b = _as_chw(a), _as_chw(b)
    if a.shape != b.shape:
        raise ValueError(f"images must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return a, b


def rgb_to_y(img: torch.Tensor) -> torch.Tensor:
    """ITU-R BT.601 luma in [0, 1] (as MATLAB's rgb2ycbcr / the SR literature): (3,H,W) -> (1,H,W)."""
    r, g, b = img[0], img[1], img[2]
    return ((16.0 + 65.481 * r + 128.553 * g + 24.966 * b) / 255.0)[None]


def psnr(x, ref, *, border: int = 0, y_channel: bool = False) -> float:
    """Peak signal-to-noise ratio in dB, data range 1.

    Args:
        border: pixels ignored at every edge (4 for the paper's SR numbers).
        y_channel: compare luma only (colour images).
    """
    a, b = _pair(x, ref)
    if y_channel and a.shape[0] == 3:
        a, b = rgb_to_y(a), rgb_to_y(b)
    if border:
        a, b = a[:, border:-border, border:-border], b[:, border:-border, border:-border]
    mse = torch.mean((a - b) ** 2).item()
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


def ssim(x, ref, *, border: int = 0, y_channel: bool = False) -> float:
    """Structural similarity (scikit-image), data range 1, averaged over channels."""
    from skimage.metrics import structural_similarity

    a, b = _pair(x, ref)
    if y_channel and a.shape[0] == 3:
        a, b = rgb_to_y(a), rgb_to_y(b)
    if border:
        a, b = a[:, border:-border, border:-border], b[:, border:-border, border:-border]
    a_np, b_np = a.permute(1, 2, 0).numpy(), b.permute(1, 2, 0).numpy()
    min_side = min(a_np.shape[:2])
    if min_side >= 11:  # the 11-tap Gaussian window of Wang et al.
        options = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    elif min_side >= 3:  # small images: the largest odd uniform window that fits
        options = dict(win_size=min_side if min_side % 2 == 1 else min_side - 1, use_sample_covariance=False)
    else:
        raise ValueError(f"SSIM needs images of at least 3x3 pixels, got {a_np.shape[:2]}")
    return float(structural_similarity(a_np, b_np, data_range=1.0, channel_axis=2, **options))
