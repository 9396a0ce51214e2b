"""Pure-PyTorch reference of every ``dip`` operator: the specification and the fallback.

Every function here is built from standard differentiable torch operations only, so autograd
(including double backward), TorchScript tracing and ONNX export work on it unchanged. The
native library (``dip._C``) must agree with these functions to rounding error.

Argument checking lives in :mod:`dip.ops._checks`; these functions assume valid inputs.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "PADDING_MODES",
    "pad_amount",
    "downsample",
    "downsample_adjoint",
    "masked_mse",
    "bn_leaky_relu",
]

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


def downsample(x: torch.Tensor, taps: torch.Tensor, factor: int,
               padding: str = "replicate") -> torch.Tensor:
    """Separable depthwise FIR filter followed by decimation.

    ``y[n,c,i,j] = sum_{a,b} taps[a] * taps[b] * xp[n,c,i*factor+a, j*factor+b]`` where ``xp`` is
    ``x`` padded by :func:`pad_amount` pixels on every side with ``padding``
    ("replicate" | "reflect" | "zero" | "none").

    Args:
        x: (N, C, H, W) floating tensor.
        taps: (K,) 1-D filter, same dtype and device as ``x``.
        factor: integer stride >= 1.
    Returns:
        (N, C, h, w) with ``h = (H + 2p - K) // factor + 1`` (likewise ``w``), dtype of ``x``.
    """
    c = x.shape[1]
    p = pad_amount(taps.shape[0], factor, padding)
    vertical, horizontal = _depthwise_taps(taps, c)
    xp = _pad(x, p, padding)
    t = F.conv2d(xp, vertical, stride=(factor, 1), groups=c)
    return F.conv2d(t, horizontal, stride=(1, factor), groups=c)


def downsample_adjoint(y: torch.Tensor, taps: torch.Tensor, factor: int, padding: str,
                       input_size: Sequence[int]) -> torch.Tensor:
    """Exact transpose of :func:`downsample` for an input of spatial size ``input_size``.

    Args:
        y: (N, C, h, w) with ``h, w`` the sizes :func:`downsample` gives for ``input_size``.
        taps, factor, padding: as for :func:`downsample`.
        input_size: (H, W) of the image space.
    Returns:
        (N, C, H, W) such that ``<downsample(u), y> == <u, downsample_adjoint(y)>`` for all u.
    """
    H, W = int(input_size[0]), int(input_size[1])
    c = y.shape[1]
    k = taps.shape[0]
    p = pad_amount(k, factor, padding)
    hp, wp = H + 2 * p, W + 2 * p
    extra_h = hp - ((y.shape[2] - 1) * factor + k)
    extra_w = wp - ((y.shape[3] - 1) * factor + k)
    vertical, horizontal = _depthwise_taps(taps, c)
    t = F.conv_transpose2d(y, horizontal, stride=(1, factor), output_padding=(0, extra_w),
                           groups=c)
    g = F.conv_transpose2d(t, vertical, stride=(factor, 1), output_padding=(extra_h, 0),
                           groups=c)
    return _pad_adjoint(g, p, padding, (H, W))


def masked_mse(x: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
               normalize: str = "all") -> torch.Tensor:
    """Masked mean squared error ``sum(((x - target) * mask)**2) / D``.

    Args:
        x, target: (N, C, H, W) of one floating dtype.
        mask: (N|1, C|1, H, W), broadcast over ``x``; 0/1 for the usual "known pixel" mask.
        normalize: "all" -> ``D = x.numel()`` (the original's ``mse(x*m, target*m)``);
            "mask" -> ``D`` = sum of the mask broadcast to ``x``'s shape (known elements);
            an all-zero mask then gives 0.
    Returns:
        0-dim tensor of ``x``'s dtype.
    """
    d = (x - target) * mask
    s = (d * d).sum()
    if normalize == "all":
        return s / x.numel()
    denom = mask.sum() * (x.numel() // mask.numel())
    return torch.where(denom > 0, s / denom.clamp_min(torch.finfo(s.dtype).tiny),
                       torch.zeros_like(s))


def bn_leaky_relu(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                  running_mean: Optional[torch.Tensor], running_var: Optional[torch.Tensor],
                  momentum: float = 0.1, eps: float = 1e-5,
                  negative_slope: float = 0.2) -> torch.Tensor:
    """Training-mode BatchNorm2d followed by LeakyReLU.

    Equals ``LeakyReLU(negative_slope)(BatchNorm2d(C, eps, momentum)(x))`` in training mode:
    normalises with the batch statistics over (N, H, W) (biased variance) and updates
    ``running_mean`` / ``running_var`` (unbiased variance) in place when given.

    Args:
        x: (N, C, H, W) floating tensor (any memory format).
        weight, bias: (C,) affine parameters or None.
        running_mean, running_var: (C,) buffers updated in place, or None.
    Returns:
        (N, C, H, W) tensor of ``x``'s dtype.
    """
    z = F.batch_norm(x, running_mean, running_var, weight, bias, training=True,
                     momentum=momentum, eps=eps)
    return F.leaky_relu(z, negative_slope)

