"""Fake (meta) kernels and autograd formulas for the native ``torch.ops.dip`` operators.

Imported by :mod:`dip.ops` only when ``dip._C`` loaded (registering them for operators that do
not exist would fail). The schemas live in ``csrc/register.cpp``.
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


# ----------------------------------------------------------------------------- autograd
def _downsample_setup(ctx, inputs, output):
    x, taps, factor, padding = inputs
    ctx.save_for_backward(taps)
    ctx.args = (factor, padding, (x.shape[2], x.shape[3]))


def _downsample_backward(ctx, grad):
    (taps,) = ctx.saved_tensors
    factor, padding, size = ctx.args
    gx = torch.ops.dip.downsample_adjoint(grad, taps, factor, padding, list(size))
    return gx, None, None, None


def _adjoint_setup(ctx, inputs, output):
    _, taps, factor, padding, _ = inputs
    ctx.save_for_backward(taps)
    ctx.args = (factor, padding)


def _adjoint_backward(ctx, grad):
    (taps,) = ctx.saved_tensors
    factor, padding = ctx.args
    return torch.ops.dip.downsample(grad, taps, factor, padding), None, None, None, None


torch.library.register_autograd("dip::downsample", _downsample_backward,
                                setup_context=_downsample_setup)
torch.library.register_autograd("dip::downsample_adjoint", _adjoint_backward,
                                setup_context=_adjoint_setup)


def _mse_setup(ctx, inputs, output):
    x, target, mask, normalize_by_mask, with_grad = inputs
    _, unit, inv_denominator = output
    ctx.mark_non_differentiable(unit, inv_denominator)
    ctx.fused = with_grad
    if with_grad:  # the forward pass already produced the gradient direction
        ctx.save_for_backward(unit, inv_denominator)
    else:
        ctx.save_for_backward(x, target, mask)
    ctx.normalize_by_mask = normalize_by_mask


def _mse_backward(ctx, grad, grad_unit, grad_inv):
    need_x, need_target = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if not (need_x or need_target):
        return None, None, None, None, None
    if ctx.fused:
        unit, inv_denominator = ctx.saved_tensors
        gx = unit * (grad * inv_denominator)
    else:
        x, target, mask = ctx.saved_tensors
        gx = torch.ops.dip.masked_mse_backward(grad, x, target, mask, ctx.normalize_by_mask)
    return (gx if need_x else None), (-gx if need_target else None), None, None, None


torch.library.register_autograd("dip::masked_mse", _mse_backward, setup_context=_mse_setup)


def _bn_setup(ctx, inputs, output):
    x, weight, bias, eps, negative_slope = inputs
    _, mean, var = output
    ctx.mark_non_differentiable(mean, var)
    ctx.save_for_backward(x, weight, bias, mean, var)
    ctx.args = (eps, negative_slope)


def _bn_backward(ctx, grad_out, grad_mean, grad_var):
    x, weight, bias, mean, var = ctx.saved_tensors
    eps, negative_slope = ctx.args
    gx, gw, gb = torch.ops.dip.bn_leaky_relu_backward(grad_out, x, weight, bias, mean, var,
                                                      eps, negative_slope)
    return gx, gw, gb, None, None


torch.library.register_autograd("dip::bn_leaky_relu", _bn_backward, setup_context=_bn_setup)
