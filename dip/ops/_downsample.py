"""``downsample`` and ``downsample_adjoint``: a separable FIR filter with decimation (e.g. the
Lanczos downsampler of super-resolution) and its exact transpose.

One module per op: the argument checks, the pure-PyTorch reference (the specification and the
fallback), the public wrappers and the fake kernels of ``torch.ops.dip.downsample`` /
``downsample_adjoint`` (schemas and autograd: csrc/ops/downsample.cpp; kernels:
csrc/cpu/downsample.cpp, csrc/cuda/downsample.cu).
"""
from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from dip.ops import _common

#: Border handling understood by :func:`downsample` / :func:`downsample_adjoint`.
PADDING_MODES = ("replicate", "reflect", "zero", "none")


def pad_amount(num_taps: int, factor: int, padding: str) -> int:
    """Border width in pixels added on every side before filtering.

    The original's ``preserve_size`` rule: ``(K - 1) // 2`` for an odd number of taps ``K``,
    ``(K - factor) // 2`` for an even one; ``0`` for ``padding="none"``.
    """
    if padding == "none":
        return 0
    if num_taps % 2 == 1:
        return (num_taps - 1) // 2
    return (num_taps - factor) // 2


# ----------------------------------------------------------------------------- checks
def _factor(value: object) -> int:
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


def _padding(value: object) -> str:
    if not isinstance(value, str) or value not in PADDING_MODES:
        raise ValueError(f"padding must be one of {', '.join(PADDING_MODES)}; got {value!r}")
    return value


def _taps(t: object, ref: torch.Tensor) -> torch.Tensor:
    t = _common.tensor("taps", t)
    if t.dim() != 1 or t.numel() == 0:
        raise ValueError(f"taps must be a non-empty 1-D tensor (K,), got shape {tuple(t.shape)}")
    _common.same_dtype_device("taps", t, "the image", ref)
    return t


def _geometry(size: Sequence[int], k: int, f: int, mode: str) -> tuple[int, int, int]:
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


def _input_size(value: object) -> tuple[int, int]:
    if value is None:
        raise TypeError("input_size (H, W) of the image space is required")
    try:
        h, w = (operator.index(v) for v in value)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        raise TypeError(f"input_size must be a pair of integers (H, W), got {value!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"input_size must be positive, got {(h, w)}")
    return int(h), int(w)


def _check_downsample(x, taps, factor, padding):
    x = _common.image("x", x)
    taps = _taps(taps, x)
    f = _factor(factor)
    mode = _padding(padding)
    _geometry(x.shape[2:], taps.shape[0], f, mode)
    return x, taps, f, mode


def _check_adjoint(y, taps, factor, padding, input_size):
    y = _common.image("y", y)
    taps = _taps(taps, y)
    f = _factor(factor)
    mode = _padding(padding)
    size = _input_size(input_size)
    _, h, w = _geometry(size, taps.shape[0], f, mode)
    if tuple(y.shape[2:]) != (h, w):
        raise ValueError(f"y must have spatial size {(h, w)} (the downsampled size of "
                         f"input_size={size} with {taps.shape[0]} taps, factor {f}, padding "
                         f"{mode!r}), got {tuple(y.shape[2:])}")
    return y, taps, f, mode, size


# ----------------------------------------------------------------------------- reference
def _source_index(n: int, p: int, padding: str, device: torch.device) -> torch.Tensor:
    """Index of the source pixel behind each of the ``n + 2p`` padded positions (int64)."""
    q = torch.arange(-p, n + p, device=device)
    if padding == "replicate":
        return q.clamp(0, n - 1)
    # reflect (edge pixel not repeated), valid for p <= n - 1
    q = q.abs()
    return torch.where(q > n - 1, 2 * (n - 1) - q, q)


def _pad(x: torch.Tensor, p: int, padding: str) -> torch.Tensor:
    if p == 0 or padding == "none":
        return x
    if padding == "zero":
        return F.pad(x, (p, p, p, p), mode="constant", value=0.0)
    return F.pad(x, (p, p, p, p), mode=padding)


def _pad_adjoint(g: torch.Tensor, p: int, padding: str, size: Sequence[int]) -> torch.Tensor:
    """Transpose of :func:`_pad`: folds the border of ``g`` (N,C,H+2p,W+2p) back onto (N,C,H,W)."""
    if p == 0 or padding == "none":
        return g
    H, W = int(size[0]), int(size[1])
    if padding == "zero":
        return g[:, :, p:p + H, p:p + W]
    rows = _source_index(H, p, padding, g.device)
    cols = _source_index(W, p, padding, g.device)
    n, c = g.shape[0], g.shape[1]
    r = torch.index_add(g.new_zeros(n, c, H, g.shape[3]), 2, rows, g)
    return torch.index_add(g.new_zeros(n, c, H, W), 3, cols, r)


def _depthwise_taps(taps: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    k = taps.shape[0]
    vertical = taps.reshape(1, 1, k, 1).expand(channels, 1, k, 1)
    horizontal = taps.reshape(1, 1, 1, k).expand(channels, 1, 1, k)
    return vertical, horizontal


def _reference(x: torch.Tensor, taps: torch.Tensor, factor: int, padding: str) -> torch.Tensor:
    """``y[n,c,i,j] = sum_{a,b} taps[a] taps[b] xp[n,c,i*factor+a, j*factor+b]``, ``xp`` = ``x``
    padded by :func:`pad_amount` pixels on every side with ``padding``: two depthwise strided
    convolutions (standard differentiable ops: double backward, tracing and ONNX export work)."""
    c = x.shape[1]
    p = pad_amount(taps.shape[0], factor, padding)
    vertical, horizontal = _depthwise_taps(taps, c)
    t = F.conv2d(_pad(x, p, padding), vertical, stride=(factor, 1), groups=c)
    return F.conv2d(t, horizontal, stride=(1, factor), groups=c)


def _adjoint_reference(y: torch.Tensor, taps: torch.Tensor, factor: int, padding: str,
                       input_size: Sequence[int]) -> torch.Tensor:
    """Exact transpose of :func:`_reference` for an image of spatial size ``input_size``:
    ``<_reference(u), y> == <u, _adjoint_reference(y)>`` for all u."""
    H, W = int(input_size[0]), int(input_size[1])
    c, k = y.shape[1], taps.shape[0]
    p = pad_amount(k, factor, padding)
    extra_h = H + 2 * p - ((y.shape[2] - 1) * factor + k)
    extra_w = W + 2 * p - ((y.shape[3] - 1) * factor + k)
    vertical, horizontal = _depthwise_taps(taps, c)
    t = F.conv_transpose2d(y, horizontal, stride=(1, factor), output_padding=(0, extra_w),
                           groups=c)
    g = F.conv_transpose2d(t, vertical, stride=(factor, 1), output_padding=(extra_h, 0),
                           groups=c)
    return _pad_adjoint(g, p, padding, (H, W))


# ----------------------------------------------------------------------------- public ops
def downsample_size(input_size: Sequence[int], num_taps: int, factor: int,
                    padding: str = "replicate") -> tuple[int, int]:
    """Spatial size (h, w) of :func:`downsample`'s output for an input of ``input_size``."""
    size = _input_size(input_size)
    _, h, w = _geometry(size, int(num_taps), _factor(factor), _padding(padding))
    return h, w


def downsample(x: torch.Tensor, taps: torch.Tensor, factor: int,
               padding: str = "replicate") -> torch.Tensor:
    """Separable depthwise FIR filter ``taps`` on rows and columns, then stride ``factor``.

    Args:
        x: (N, C, H, W) float tensor.
        taps: (K,) 1-D filter, same dtype and device as ``x`` (e.g. Lanczos-2 taps).
        factor: integer >= 1.
        padding: "replicate" | "reflect" | "zero" with ``pad_amount(K, factor)`` pixels on
            every side (the original's preserve_size), or "none".
    Returns:
        (N, C, h, w), ``h = (H + 2p - K) // factor + 1``; contiguous on the native path.
    Gradients flow to ``x`` (and to ``taps`` through the reference path when it requires grad).
    """
    x, taps, f, mode = _check_downsample(x, taps, factor, padding)
    if _common.use_native("downsample", x) and not taps.requires_grad:
        return torch.ops.dip.downsample(x, taps, f, mode)
    return _reference(x, taps, f, mode)


def downsample_reference(x: torch.Tensor, taps: torch.Tensor, factor: int,
                         padding: str = "replicate") -> torch.Tensor:
    """:func:`downsample` with standard torch ops only (exportable)."""
    return _reference(*_check_downsample(x, taps, factor, padding))


def downsample_adjoint(y: torch.Tensor, taps: torch.Tensor, factor: int,
                       padding: str = "replicate",
                       input_size: Sequence[int] | None = None) -> torch.Tensor:
    """Exact transpose of :func:`downsample` (its backward), mapping (N,C,h,w) to (N,C,H,W).

    ``input_size`` is the (H, W) of the image space (required: several sizes downsample to
    the same h, w).
    """
    y, taps, f, mode, size = _check_adjoint(y, taps, factor, padding, input_size)
    if _common.use_native("downsample_adjoint", y) and not taps.requires_grad:
        return torch.ops.dip.downsample_adjoint(y, taps, f, mode, list(size))
    return _adjoint_reference(y, taps, f, mode, size)


def downsample_adjoint_reference(y: torch.Tensor, taps: torch.Tensor, factor: int,
                                 padding: str = "replicate",
                                 input_size: Sequence[int] | None = None) -> torch.Tensor:
    """:func:`downsample_adjoint` with standard torch ops only (exportable)."""
    return _adjoint_reference(*_check_adjoint(y, taps, factor, padding, input_size))


# ----------------------------------------------------------------------------- fake kernels
def _downsample_fake(x, taps, factor, padding):
    k = taps.shape[0]
    p = pad_amount(k, factor, padding)
    h = (x.shape[2] + 2 * p - k) // factor + 1
    w = (x.shape[3] + 2 * p - k) // factor + 1
    return x.new_empty((x.shape[0], x.shape[1], h, w))


def _downsample_adjoint_fake(y, taps, factor, padding, input_size):
    return y.new_empty((y.shape[0], y.shape[1], input_size[0], input_size[1]))


if _common.native_ops("downsample", "downsample_adjoint"):
    torch.library.register_fake("dip::downsample")(_downsample_fake)
    torch.library.register_fake("dip::downsample_adjoint")(_downsample_adjoint_fake)
