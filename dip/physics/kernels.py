"""Resampling kernels of the degradation operators.

The original code builds its downsampling kernels as 2-D arrays (``get_kernel`` in its
``models/downsampler.py``).  Every one of them is a product ``w(di) * w(dj)`` of a 1-D
weight, normalised to sum 1, so the 2-D kernel is exactly the outer product of a 1-D kernel
with itself.  This module computes the 1-D taps directly (``downsampler_taps``) and, for
verification, the original's 2-D construction (``original_kernel_2d``).

Kernel names (as in the original):

============  ===========================================  ======================
name          definition                                   width (phase 0)
============  ===========================================  ======================
lanczos2      Lanczos, support a = 2                        4 * factor + 1
lanczos3      Lanczos, support a = 3                        6 * factor + 1
gauss12       Gaussian, sigma = 1/2                         7
gauss1sq2     Gaussian, sigma = 1/sqrt(2)                   9
box           mean over factor x factor (phase 1/2 only)    factor
============  ===========================================  ======================

With phase 1/2 the kernel has ``width - 1`` taps (the sampling grid sits between pixels);
with phase 0 it has ``width`` taps.
"""
from __future__ import annotations

import math

import numpy as np

KERNELS = ("lanczos2", "lanczos3", "gauss12", "gauss1sq2", "box")


def _check(factor: int, kernel: str, phase: float) -> None:
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 1:
        raise ValueError(f"factor must be an integer >= 1, got {factor!r}")
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    if phase not in (0, 0.5):
        raise ValueError(f"phase must be 0 or 0.5, got {phase!r}")
    if kernel == "box" and phase != 0.5:
        raise ValueError("the box kernel is defined for phase 0.5 only; pass phase=0.5")
    if kernel.startswith("gauss") and phase == 0.5:
        raise ValueError(f"the {kernel} kernel is defined for phase 0 only (as in the original); pass phase=0")


def _lanczos_weight(d: np.ndarray, support: int) -> np.ndarray:
    """Lanczos window ``a sin(pi d) sin(pi d / a) / (pi^2 d^2)`` with value 1 at d = 0."""
    d = np.asarray(d, dtype=np.float64)
    out = np.ones_like(d)
    nz = d != 0
    dn = d[nz]
    out[nz] = support * np.sin(np.pi * dn) * np.sin(np.pi * dn / support) / (np.pi * np.pi * dn * dn)
    return out


def _raw_weights_1d(factor: int, kernel: str, phase: float) -> np.ndarray:
    """Unnormalised 1-D weights whose outer product is the original's 2-D kernel."""
    if kernel == "box":
        return np.ones(factor, dtype=np.float64)
    if kernel in ("lanczos2", "lanczos3"):
        support = 2 if kernel == "lanczos2" else 3
        width = 2 * support * factor + 1
        center = (width + 1) / 2.0
        n_taps = width - 1 if phase == 0.5 else width
        i = np.arange(1, n_taps + 1, dtype=np.float64)
        offset = 0.5 if phase == 0.5 else 0.0
        d = np.abs(i + offset - center) / factor
        return _lanczos_weight(d, support)
    # gaussians (phase 0): the original measures distance in half-pixels, independent of factor
    width, sigma = (7, 0.5) if kernel == "gauss12" else (9, 1.0 / math.sqrt(2.0))
    center = (width + 1) / 2.0
    i = np.arange(1, width + 1, dtype=np.float64)
    d = (i - center) / 2.0
    return np.exp(-(d * d) / (2.0 * sigma * sigma))


def downsampler_taps(factor: int, kernel: str = "lanczos2", phase: float = 0.5) -> np.ndarray:
    """1-D taps of a downsampling kernel, float64, summing to 1.

    The 2-D kernel the original applies is ``np.outer(taps, taps)``.

    Args:
        factor: integer downsampling factor (>= 1).
        kernel: one of ``KERNELS``.
        phase: 0.5 (sampling between pixels, used throughout the paper) or 0.

    Returns:
        ``np.ndarray`` of shape (K,), e.g. K = 16 for lanczos2 at factor 4, phase 0.5.
    """
    _check(factor, kernel, phase)
    w = _raw_weights_1d(int(factor), kernel, phase)
    return w / w.sum()


def original_kernel_2d(factor: int, kernel: str = "lanczos2", phase: float = 0.5) -> np.ndarray:
    """The original's 2-D kernel built element by element (its ``get_kernel``), float64 (K, K).

    Kept as the independent reference that the separable taps are tested against.
    """
    _check(factor, kernel, phase)
    factor = int(factor)
    if kernel == "box":
        return np.full((factor, factor), 1.0 / (factor * factor))
    if kernel.startswith("gauss"):
        width, sigma = (7, 0.5) if kernel == "gauss12" else (9, 1.0 / math.sqrt(2.0))
        center = (width + 1) / 2.0
        k = np.zeros((width, width))
        for i in range(1, width + 1):
            for j in range(1, width + 1):
                di, dj = (i - center) / 2.0, (j - center) / 2.0
                k[i - 1, j - 1] = math.exp(-(di * di + dj * dj) / (2 * sigma * sigma)) / (2 * math.pi * sigma * sigma)
        return k / k.sum()
    support = 2 if kernel == "lanczos2" else 3
    width = 2 * support * factor + 1
    size = width - 1 if phase == 0.5 else width
    center = (width + 1) / 2.0
    k = np.zeros((size, size))
    for i in range(1, size + 1):
        for j in range(1, size + 1):
            if phase == 0.5:
                di, dj = abs(i + 0.5 - center) / factor, abs(j + 0.5 - center) / factor
            else:
                di, dj = abs(i - center) / factor, abs(j - center) / factor
            val = 1.0
            for d in (di, dj):
                if d != 0:
                    val *= (support * math.sin(math.pi * d) * math.sin(math.pi * d / support)
                            / (math.pi * math.pi * d * d))
            k[i - 1, j - 1] = val
    return k / k.sum()


def preserve_size_padding(n_taps: int, factor: int) -> int:
    """Padding per side that makes the output size ``input size / factor`` (the original's rule).

    ``(K - 1) / 2`` for an odd number of taps K, else ``(K - factor) / 2``.
    """
    return (n_taps - 1) // 2 if n_taps % 2 == 1 else (n_taps - factor) // 2
