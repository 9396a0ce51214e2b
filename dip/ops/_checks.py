"""Argument validation shared by the public ``dip.ops`` wrappers.

Each function raises ``TypeError`` (wrong type or dtype) or ``ValueError`` (wrong shape, value or
device) with a message naming the argument, the offending value and what is expected.
"""
from __future__ import annotations

import operator
from typing import Optional, Sequence, Tuple

import torch

from dip.ops._reference import PADDING_MODES, pad_amount


def tensor(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def image(name: str, t: object) -> torch.Tensor:
    """A non-empty (N, C, H, W) floating tensor."""
    t = tensor(name, t)
    if t.dim() != 4:
        raise ValueError(f"{name} must be 4-D (N, C, H, W), got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype (float32, float64, ...), got {t.dtype}")
    if t.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(t.shape)}")
    return t


def same_dtype_device(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} must have the dtype of {ref_name} ({ref.dtype}), got {t.dtype}; "
                        f"convert it with .to({ref.dtype})")
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}; "
                         "move both to the same device")


def factor(value: object) -> int:
    if isinstance(value, bool):
        raise TypeError(f"factor must be an integer >= 1, got {value!r}")
    try:
        f = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"factor must be an integer >= 1, got {value!r} "
                        f"({type(value).__name__})") from None
    if f < 1:
        raise ValueError(f"factor must be an integer >= 1, got {f}")
    return int(f)


def padding(value: object) -> str:
    if not isinstance(value, str) or value not in PADDING_MODES:
        raise ValueError(f"padding must be one of {', '.join(PADDING_MODES)}; got {value!r}")
    return value


def taps(t: object, ref: torch.Tensor) -> torch.Tensor:
    t = tensor("taps", t)
    if t.dim() != 1 or t.numel() == 0:
        raise ValueError(f"taps must be a non-empty 1-D tensor (K,), got shape {tuple(t.shape)}")
    same_dtype_device("taps", t, "the image", ref)
    return t


def resample_geometry(size: Sequence[int], k: int, f: int, mode: str) -> Tuple[int, int, int]:
    """Checks that ``k`` taps fit an image of spatial ``size``; returns (p, h, w)."""
    p = pad_amount(k, f, mode)
    if p < 0:
        raise ValueError(f"{k} taps (an even number smaller than factor {f}) give a negative "
                         f"border ({p}); use an odd number of taps, at least factor taps, "
                         "or padding='none'")
    H, W = int(size[0]), int(size[1])
    if mode == "reflect" and p > min(H, W) - 1:
        raise ValueError(f"reflect padding by {p} pixels needs an image of at least {p + 1}x{p + 1}"
                         f" pixels, got {H}x{W}; use padding='replicate' or fewer taps")
    if min(H, W) + 2 * p < k:
        raise ValueError(f"taps longer than the image allows: {k} taps need a padded size of at "
                         f"least {k}, but the {H}x{W} image padded by {p} ({mode}) is "
                         f"{H + 2 * p}x{W + 2 * p}")
    return p, (H + 2 * p - k) // f + 1, (W + 2 * p - k) // f + 1


def input_size(value: object) -> Tuple[int, int]:
    if value is None:
        raise TypeError("input_size (H, W) of the image space is required")
    try:
        h, w = (operator.index(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise TypeError(f"input_size must be a pair of integers (H, W), got {value!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"input_size must be positive, got {(h, w)}")
    return int(h), int(w)


def normalize(value: object) -> str:
    if value not in ("all", "mask"):
        raise ValueError(f"normalize must be 'all' or 'mask', got {value!r}")
    return str(value)


def mask(m: object, x: torch.Tensor) -> torch.Tensor:
    """A (N|1, C|1, H, W) mask matching ``x``; bool masks are converted to ``x``'s dtype."""
    m = tensor("mask", m)
    n, c, h, w = x.shape
    if (m.dim() != 4 or m.shape[2:] != x.shape[2:] or m.shape[0] not in (1, n)
            or m.shape[1] not in (1, c)):
        raise ValueError(f"mask must have shape ({n} or 1, {c} or 1, {h}, {w}) to match x, "
                         f"got {tuple(m.shape)}")
    if m.device != x.device:
        raise ValueError(f"mask is on {m.device} but x is on {x.device}; "
                         "move both to the same device")
    if m.dtype == torch.bool:
        return m.to(x.dtype)
    if m.dtype != x.dtype:
        raise TypeError(f"mask must be bool or have the dtype of x ({x.dtype}), got {m.dtype}")
    return m


def channel_vector(name: str, t: Optional[torch.Tensor], x: torch.Tensor,
                   dtype_must_match: bool = True) -> Optional[torch.Tensor]:
    if t is None:
        return None
    t = tensor(name, t)
    c = x.shape[1]
    if t.shape != (c,):
        raise ValueError(f"{name} must have shape ({c},) for an input with {c} channels, "
                         f"got {tuple(t.shape)}")
    if dtype_must_match:
        same_dtype_device(name, t, "x", x)
        return t
    if not t.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {t.dtype}")
    if t.device != x.device:
        raise ValueError(f"{name} is on {t.device} but x is on {x.device}; "
                         "move both to the same device")
    return t
