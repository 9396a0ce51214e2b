"""Deblurring cases of ``dip.evaluate``: the blurred observation and the classical baselines.

Observation: the crop (C, S, S) is the scene; it is blurred with a "valid" convolution
(``dip.physics.Blur``), so every observed pixel is made of real scene pixels, and white noise
of standard deviation ``noise`` is added (not clipped, as a sensor's noise is not).  The ground
truth is the scene at the observation's pixels: the centred (S - K + 1)² window.

Baselines, with the true kernel, on the observation padded by reflection (K pixels a side;
without padding both fall below the blurred input), cropped back: scikit-image's Wiener
(``skimage.restoration.wiener``, its ``balance`` chosen on a log grid) and Richardson–Lucy
(``richardson_lucy``, its iteration count chosen on a grid), each parameter chosen per image on
the ground truth: the best a classical user could get.  ``baseline`` returns the better one.

Blind cases add ``blind_columns``: the estimated kernel's L1 distance to the true one
(``kernel_l1``, 0 to 2) and, where the case names a ``guess`` (a kernel spec), Richardson–Lucy
with that guess instead of the true kernel, its iteration count tuned the same way
(``rl_guess_psnr``, ``rl_guess_iterations``): what a user who guessed the blur would get.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from dip import metrics

#: Wiener balances and Richardson–Lucy iteration counts tried per image
WIENER_BALANCES = tuple(float(b) for b in np.logspace(-4, 1, 21))
RL_ITERATIONS = (1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 75, 100, 150, 200)


def degrade(gt: torch.Tensor, spec: str, noise: float, rng: np.random.Generator):
    """(ground truth (C, h, w), observation (C, h, w), kernel (K, K) float64) for a crop ``gt``
    (C, S, S), h = S - K + 1."""
    from dip.physics import Blur, parse_kernel

    kernel = parse_kernel(spec)
    kh, kw = kernel.shape
    if gt.shape[1] < 2 * kh or gt.shape[2] < 2 * kw:
        raise ValueError(f"image of {tuple(gt.shape[1:])} is too small for the kernel {spec!r} "
                         f"({kh}x{kw}); use a larger size")
    op = Blur(torch.from_numpy(kernel), "valid")
    with torch.no_grad():
        y = op(gt[None].double())[0].float()
    top, left, h, w = op.crop_box(tuple(y.shape[-2:]))
    truth = gt[:, top:top + h, left:left + w].contiguous()
    y = y + torch.from_numpy(rng.normal(0.0, noise, size=tuple(y.shape)).astype(np.float32))
    return truth, y, kernel


def _per_channel(fn, y: torch.Tensor, kernel: np.ndarray) -> torch.Tensor:
    """``fn(channel, kernel)`` on each channel of the reflect-padded observation, cropped back."""
    k = max(kernel.shape)
    img = y.numpy().astype(np.float64)
    out = []
    for c in img:
        padded = np.pad(c, k, mode="reflect")
        out.append(fn(padded, kernel)[k:k + c.shape[0], k:k + c.shape[1]])
    return torch.from_numpy(np.clip(np.stack(out), 0, 1).astype(np.float32))


def wiener(y: torch.Tensor, kernel: np.ndarray, balance: float) -> torch.Tensor:
    from skimage import restoration

    return _per_channel(lambda c, k: restoration.wiener(c, k, balance, clip=False), y, kernel)


def richardson_lucy(y: torch.Tensor, kernel: np.ndarray, iterations: int) -> torch.Tensor:
    from skimage import restoration

    return _per_channel(lambda c, k: restoration.richardson_lucy(np.clip(c, 0, None), k, num_iter=iterations,
                                                                 clip=False), y, kernel)


def tuned_baselines(y: torch.Tensor, kernel: np.ndarray, gt: torch.Tensor) -> dict:
    """{"wiener": (image, balance, psnr), "rl": (image, iterations, psnr)}, each with its
    parameter chosen on ``gt``."""
    searches: tuple[tuple[str, Any, Sequence[float]], ...] = (
        ("wiener", wiener, WIENER_BALANCES), ("rl", richardson_lucy, RL_ITERATIONS))
    out: dict[str, tuple[Any, Any, float]] = {}
    for name, fn, grid in searches:
        found: tuple[Any, Any, float] = (None, None, -math.inf)
        for p in grid:
            img = fn(y, kernel, p)
            score = metrics.psnr(img, gt)
            if score > found[2]:
                found = (img, p, score)
        out[name] = found
    return out


def best(found: dict) -> torch.Tensor:
    """The better image of ``tuned_baselines``' result."""
    return max(found.values(), key=lambda t: t[2])[0]


def baseline(case) -> torch.Tensor:
    """The better of the tuned Wiener and Richardson–Lucy results for ``case``."""
    return best(tuned_baselines(case.observation, case.kernel, case.gt))


def baseline_columns(found: dict) -> dict:
    """Row entries from ``tuned_baselines``' result: each baseline's PSNR and chosen parameter."""
    return {"wiener_psnr": found["wiener"][2], "wiener_balance": found["wiener"][1],
            "rl_psnr": found["rl"][2], "rl_iterations": found["rl"][1]}


def rl_tuned(y: torch.Tensor, kernel: np.ndarray, gt: torch.Tensor) -> tuple[int, float]:
    """(iterations, PSNR) of the best Richardson–Lucy result with ``kernel`` over ``RL_ITERATIONS``."""
    scores = [(n, metrics.psnr(richardson_lucy(y, kernel, n), gt)) for n in RL_ITERATIONS]
    return max(scores, key=lambda t: t[1])


def kernel_l1(estimate: np.ndarray, truth: np.ndarray) -> float:
    """Sum of |estimate - truth| of two kernels of one size (0 to 2 for kernels summing to 1)."""
    if estimate.shape != truth.shape:
        raise ValueError(f"the estimated kernel is {estimate.shape}, the true one {truth.shape}")
    return float(np.abs(np.asarray(estimate, dtype=np.float64) - truth).sum())


def blind_columns(case, spec: dict, physics) -> dict:
    """Row entries of a blind case (``physics`` a fitted ``BlindBlur``): ``kernel_l1`` and, with a
    ``guess`` in ``spec``, ``rl_guess_psnr``/``rl_guess_iterations``; {} for a non-blind case."""
    from dip.physics import BlindBlur, parse_kernel

    if not isinstance(physics, BlindBlur):
        return {}
    out: dict[str, Any] = {"kernel_l1": kernel_l1(physics.kernel[0].cpu().double().numpy(), case.kernel)}
    if spec.get("guess"):
        out["rl_guess_iterations"], out["rl_guess_psnr"] = rl_tuned(case.observation, parse_kernel(spec["guess"]),
                                                                    case.gt)
    return out


__all__ = ["rl_tuned", "kernel_l1", "blind_columns",
           "WIENER_BALANCES", "RL_ITERATIONS", "degrade", "wiener", "richardson_lucy", "tuned_baselines",
           "best", "baseline", "baseline_columns"]
