"""Blur kernels (point-spread functions) from a short text spec, for ``dip.physics.Blur``.

``parse_kernel(spec)`` returns a float64 numpy array (Kh, Kw), non-negative, summing to 1:

==========================  ===============================================================
spec                        kernel
==========================  ===============================================================
``gaussian:SIGMA``          isotropic Gaussian, SIGMA pixels (0 < SIGMA <= 20), side
                            2 * ceil(3 * SIGMA) + 1
``box:SIZE``                SIZE x SIZE mean (1 <= SIZE <= MAX_SIZE; even sizes allowed)
``motion:LENGTH,ANGLE``     straight motion of LENGTH pixels (1 <= LENGTH <= MAX_LENGTH = 100) at
                            ANGLE degrees counter-clockwise from the x axis, anti-aliased
                            (each of 8 samples per pixel of length shares its weight
                            bilinearly), on an odd square support
a path to ``.npy``          a 2-D array (Kh, Kw)
a path to an image          the image's grey levels (colour is averaged to grey)
==========================  ===============================================================

Every kernel is checked: finite, non-negative, non-empty, not all zero, at most ``MAX_SIZE``
pixels per side.  ``kernel_bytes`` writes a kernel in the two file forms read back here (a
``.npy`` array, or a 16-bit grey PNG scaled so that its largest value is white).  Odd and even
sizes are both used as they are (``Blur`` centres an even kernel as
``scipy.signal.convolve(mode="same")`` does).  Every problem is a ``ValueError`` whose message
names the value and says what is accepted.  No torch here: numpy (and Pillow
for image files) only.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

#: largest kernel side accepted (a 129-pixel blur is already more than any photograph's shake)
MAX_SIZE = 129
MAX_SIGMA = 20.0
MAX_LENGTH = 100.0
ACCEPTED = ("gaussian:SIGMA (e.g. gaussian:1.6), box:SIZE (e.g. box:5), motion:LENGTH,ANGLE "
            "(e.g. motion:9,30; degrees), or a path to a .npy array or an image file")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".pgm")


def _bad(spec: str, why: str) -> ValueError:
    return ValueError(f"kernel {spec!r}: {why}; accepted: {ACCEPTED}")


def _numbers(spec: str, body: str, count: int) -> list[float]:
    parts = body.split(",")
    if len(parts) != count:
        raise _bad(spec, f"expected {count} number{'s' if count > 1 else ''} after ':', got {len(parts)}")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise _bad(spec, f"{body!r} is not {'a number' if count == 1 else 'numbers'}") from None
    if not all(math.isfinite(v) for v in values):
        raise _bad(spec, "the numbers must be finite")
    return values


def gaussian(sigma: float) -> np.ndarray:
    """Isotropic Gaussian of standard deviation ``sigma`` pixels on a (2r+1)² support, r = ceil(3 sigma)."""
    r = max(1, math.ceil(3 * sigma))
    t = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-0.5 * (t / sigma) ** 2)
    k = np.outer(g, g)
    return k / k.sum()


def box(size: int) -> np.ndarray:
    """``size`` x ``size`` mean filter."""
    return np.full((size, size), 1.0 / (size * size))


def motion(length: float, angle_degrees: float) -> np.ndarray:
    """A straight motion blur: a segment of ``length`` pixels through the centre at
    ``angle_degrees`` (counter-clockwise from the x axis, y pointing up), anti-aliased."""
    half = length / 2.0
    r = math.ceil(half) + 1
    size = 2 * r + 1
    samples = max(2, int(math.ceil(8 * length)) + 1)
    t = np.linspace(-half, half, samples)
    a = math.radians(angle_degrees)
    cols = r + t * math.cos(a)
    rows = r - t * math.sin(a)
    k = np.zeros((size, size))
    r0, c0 = np.floor(rows).astype(int), np.floor(cols).astype(int)
    fr, fc = rows - r0, cols - c0
    for dr, dc, w in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc), (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
        np.add.at(k, (r0 + dr, c0 + dc), w)
    return _trim(k) / k.sum()


def _trim(k: np.ndarray) -> np.ndarray:
    """Drop all-zero outer rows/columns symmetrically, keeping the centre where it is."""
    while k.shape[0] > 1 and not k[0].any() and not k[-1].any():
        k = k[1:-1]
    while k.shape[1] > 1 and not k[:, 0].any() and not k[:, -1].any():
        k = k[:, 1:-1]
    return k


def _from_file(spec: str) -> np.ndarray:
    path = Path(spec)
    if not path.exists():
        raise _bad(spec, "no such file, and not a gaussian:, box: or motion: spec")
    if path.is_dir():
        raise _bad(spec, "is a directory")
    if path.suffix.lower() == ".npy":
        try:
            a = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise _bad(spec, f"cannot read it as a .npy array ({exc})") from None
        if a.dtype.kind not in "biuf":
            raise _bad(spec, f"holds {a.dtype} values, not numbers")
        if a.ndim != 2:
            raise _bad(spec, f"must hold a 2-D array (Kh, Kw), got shape {a.shape}")
        return a.astype(np.float64)
    if path.suffix.lower() not in _IMAGE_SUFFIXES:
        raise _bad(spec, f"unknown file type {path.suffix!r} (give .npy or an image: {', '.join(_IMAGE_SUFFIXES)})")
    try:
        from PIL import Image

        with Image.open(path) as im:
            a = np.asarray(im.convert("F") if im.mode not in ("I;16", "I") else im, dtype=np.float64)
    except (OSError, ValueError) as exc:
        raise _bad(spec, f"cannot read it as an image ({exc})") from None
    return a if a.ndim == 2 else a.mean(axis=-1)


def check_kernel(k: np.ndarray, spec: str = "kernel") -> np.ndarray:
    """``k`` checked (finite, non-negative, non-empty, not all zero, sides <= MAX_SIZE) and
    normalised to sum 1, as float64 (Kh, Kw)."""
    k = np.asarray(k, dtype=np.float64)
    if k.ndim != 2 or k.size == 0:
        raise _bad(spec, f"must be a non-empty 2-D array, got shape {k.shape}")
    if max(k.shape) > MAX_SIZE:
        raise _bad(spec, f"is {k.shape[0]}x{k.shape[1]} pixels, more than the {MAX_SIZE} accepted per side")
    if not np.isfinite(k).all():
        raise _bad(spec, "has non-finite values (nan or inf)")
    if (k < 0).any():
        raise _bad(spec, f"has negative values (min {k.min():.3g}); a blur kernel is non-negative")
    total = k.sum()
    if total <= 0:
        raise _bad(spec, "is all zero")
    return k / total


def parse_kernel(spec: str) -> np.ndarray:
    """The kernel a spec names (see the module docstring), float64 (Kh, Kw), summing to 1."""
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"kernel spec must be a string, got {type(spec).__name__}")
    spec = os.fspath(spec)
    if not spec.strip():
        raise _bad(spec, "is empty")
    name, sep, body = spec.partition(":")
    kind = name.strip().lower()
    if not sep or kind not in ("gaussian", "box", "motion"):
        return check_kernel(_from_file(spec), spec)
    if kind == "gaussian":
        (sigma,) = _numbers(spec, body, 1)
        if not 0 < sigma <= MAX_SIGMA:
            raise _bad(spec, f"SIGMA must be > 0 and <= {MAX_SIGMA:g} pixels, got {sigma:g}")
        return check_kernel(gaussian(sigma), spec)
    if kind == "box":
        (size,) = _numbers(spec, body, 1)
        if not size.is_integer() or not 1 <= size <= MAX_SIZE:
            raise _bad(spec, f"SIZE must be a whole number from 1 to {MAX_SIZE}, got {size:g}")
        return check_kernel(box(int(size)), spec)
    length, angle = _numbers(spec, body, 2)
    if not 1 <= length <= MAX_LENGTH:
        raise _bad(spec, f"LENGTH must be from 1 to {MAX_LENGTH:g} pixels, got {length:g}")
    return check_kernel(motion(length, angle), spec)


KERNEL_FILE_SUFFIXES = (".png", ".npy")


def kernel_bytes(k: np.ndarray, suffix: str) -> bytes:
    """The file content of kernel ``k`` (Kh, Kw) for a file ending in ``suffix``: ``.npy`` the
    values as float64, ``.png`` a 16-bit grey image scaled so that its largest value is 65535
    (``parse_kernel`` reads either back, normalised to sum 1)."""
    import io

    k = check_kernel(k)
    buffer = io.BytesIO()
    if suffix.lower() == ".npy":
        np.save(buffer, k, allow_pickle=False)
    elif suffix.lower() == ".png":
        from PIL import Image

        levels = np.round(k / k.max() * 65535.0).astype(np.uint16)
        Image.fromarray(levels).save(buffer, format="PNG")
    else:
        raise ValueError(f"a kernel file ends in {' or '.join(KERNEL_FILE_SUFFIXES)}, got {suffix!r}")
    return buffer.getvalue()


__all__ = ["KERNEL_FILE_SUFFIXES", "kernel_bytes",
           "MAX_SIZE", "MAX_SIGMA", "MAX_LENGTH", "ACCEPTED", "parse_kernel", "check_kernel", "gaussian", "box",
           "motion"]
