"""Fake (meta) kernels of the native ``torch.ops.dip`` operators.

Imported by :mod:`dip.ops` only when ``dip._C`` loaded (registering them for operators that do
not exist would fail). The schemas live in ``csrc/register.cpp``; autograd is registered in
C++ (``csrc/autograd.cpp``, the Autograd dispatch key), which keeps the Python
``autograd.Function`` machinery out of every call.
"""
from __future__ import annotations

import torch

from dip.ops._reference import pad_amount


# ----------------------------------------------------------------------------- fake kernels
@torch.library.register_fake("dip::downsample")
def _downsample_fake(x, taps, factor, padding):
    k = taps.shape[0]
    p = pad_amount(k, factor, padding)
    h = (x.shape[2] + 2 * p - k) // factor + 1
    w = (x.shape[3] + 2 * p - k) // factor + 1
    return x.new_empty((x.shape[0], x.shape[1], h, w))


@torch.library.register_fake("dip::downsample_adjoint")
def _downsample_adjoint_fake(y, taps, factor, padding, input_size):
    return y.new_empty((y.shape[0], y.shape[1], input_size[0], input_size[1]))


@torch.library.register_fake("dip::masked_mse")
def _masked_mse_fake(x, target, mask, normalize_by_mask, with_grad):
    unit = torch.empty_like(x) if with_grad else x.new_empty((0,))
    return x.new_empty(()), unit, x.new_empty(())


@torch.library.register_fake("dip::masked_mse_backward")
def _masked_mse_backward_fake(grad, x, target, mask, normalize_by_mask):
    return torch.empty_like(x)


def _stat_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _bn_like(x: torch.Tensor) -> torch.Tensor:
    """Empty tensor in the layout the bn kernels produce: channels_last when x is exactly
    channels_last-contiguous (and not NCHW-contiguous), else NCHW-contiguous."""
    cl = (not x.is_contiguous()) and x.is_contiguous(memory_format=torch.channels_last)
    fmt = torch.channels_last if cl else torch.contiguous_format
    return torch.empty_like(x, memory_format=fmt)


@torch.library.register_fake("dip::bn_leaky_relu")
def _bn_leaky_relu_fake(x, weight, bias, eps, negative_slope):
    c = x.shape[1]
    stats = x.new_empty((c,), dtype=_stat_dtype(x))
    return _bn_like(x), stats, torch.empty_like(stats)


@torch.library.register_fake("dip::bn_leaky_relu_backward")
def _bn_leaky_relu_backward_fake(grad_out, x, weight, bias, mean, var, eps, negative_slope):
    return _bn_like(x), torch.empty_like(weight), torch.empty_like(bias)
