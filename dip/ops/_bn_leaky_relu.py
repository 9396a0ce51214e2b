"""``bn_leaky_relu``: training-mode BatchNorm2d followed by LeakyReLU, fused (the block after
every convolution of the skip network).

One module per op: the argument checks, the pure-PyTorch reference (the specification and the
fallback), the public wrappers and the fake kernels of ``torch.ops.dip.bn_leaky_relu`` /
``bn_leaky_relu_backward`` (schemas and autograd: csrc/ops/bn_leaky_relu.cpp; kernels:
csrc/cpu/bn_leaky_relu.cpp, csrc/cuda/bn_leaky_relu.cu).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dip.ops import _common


# ----------------------------------------------------------------------------- checks
def _channel_vector(name: str, t: torch.Tensor | None,
                    x: torch.Tensor) -> torch.Tensor | None:
    """None, or a (C,) floating tensor on x's device (its dtype may differ: autocast)."""
    if t is None:
        return None
    t = _common.tensor(name, t)
    c = x.shape[1]
    if t.shape != (c,):
        raise ValueError(f"{name} must have shape ({c},) for an input with {c} channels, "
                         f"got {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {t.dtype}")
    _common.same_device(name, t, "x", x)
    return t


def _kernel_param(t: torch.Tensor | None, x: torch.Tensor) -> bool:
    """Whether the kernels take the affine parameter ``t`` for ``x`` as it is: x's dtype, or
    float32 for a bfloat16 x on the CPU (the bf16 step's float32 parameters, no cast; their
    gradients come back in float32). Otherwise the op runs its reference."""
    return (t is None or t.dtype == x.dtype
            or (x.dtype == torch.bfloat16 and t.dtype == torch.float32 and x.device.type == "cpu"))


def _check(x, weight, bias, running_mean, running_var, momentum, eps, negative_slope):
    x = _common.image("x", x)
    # affine parameters may be float32 while x is bfloat16/float16 (autocast): the reference runs
    weight = _channel_vector("weight", weight, x)
    bias = _channel_vector("bias", bias, x)
    running_mean = _channel_vector("running_mean", running_mean, x)
    running_var = _channel_vector("running_var", running_var, x)
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must both be given or both be None")
    count = x.numel() // x.shape[1]
    if count < 2:
        raise ValueError(f"bn_leaky_relu needs more than 1 value per channel in training mode, "
                         f"got input shape {tuple(x.shape)}")
    for name, v in (("momentum", momentum), ("eps", eps), ("negative_slope", negative_slope)):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"{name} must be a number, got {v!r}")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must lie in [0, 1], got {momentum}")
    if eps <= 0.0:
        raise ValueError(f"eps must be positive, got {eps}")
    return x, weight, bias, running_mean, running_var, float(momentum), float(eps), float(
        negative_slope)


#: the kernels' dtypes: bfloat16 too (loaded and stored as bf16, computed in float32, statistics
#: in float32): fwd + bwd of 128 channels at 128², channels_last, one thread: 2-5 ms against
#: torch's 14 ms (AMX CPU)
NATIVE_DTYPES = (torch.float32, torch.float64, torch.bfloat16)


# ----------------------------------------------------------------------------- reference
def _reference(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
               running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
               momentum: float = 0.1, eps: float = 1e-5,
               negative_slope: float = 0.2) -> torch.Tensor:
    """``LeakyReLU(negative_slope)(BatchNorm2d(C, eps, momentum)(x))`` in training mode with
    standard torch ops: batch statistics over (N, H, W) (biased variance); ``running_mean`` /
    ``running_var`` (unbiased variance) updated in place when given."""
    z = F.batch_norm(x, running_mean, running_var, weight, bias, training=True,
                     momentum=momentum, eps=eps)
    return F.leaky_relu(z, negative_slope)


# ----------------------------------------------------------------------------- public ops
def bn_leaky_relu(x: torch.Tensor, weight: torch.Tensor | None = None,
                  bias: torch.Tensor | None = None,
                  running_mean: torch.Tensor | None = None,
                  running_var: torch.Tensor | None = None, momentum: float = 0.1,
                  eps: float = 1e-5, negative_slope: float = 0.2) -> torch.Tensor:
    """``LeakyReLU(negative_slope)(BatchNorm2d(x))`` with batch statistics (training mode).

    Args:
        x: (N, C, H, W) float tensor, NCHW or channels_last (the output keeps its layout).
        weight, bias: (C,) affine parameters (None = 1 and 0) on x's device; the native kernel
            runs when they have x's dtype (float32, float64 or bfloat16) or, on the CPU, are
            float32 with a bfloat16 x (the bf16 step's parameters, read as they are: their
            gradients come back in float32); the reference otherwise (e.g. float32 parameters
            with a bfloat16 x on CUDA).
        running_mean, running_var: (C,) buffers updated in place like ``nn.BatchNorm2d``
            (exponential average with ``momentum``, unbiased variance), or None.
        momentum: float in [0, 1]; eps: added to the variance; negative_slope: LeakyReLU slope.
    Returns:
        (N, C, H, W) tensor of x's dtype. Backward is one fused native kernel.
    """
    args = _check(x, weight, bias, running_mean, running_var, momentum, eps, negative_slope)
    x, weight, bias, running_mean, running_var, momentum, eps, slope = args
    if not (all(_kernel_param(t, x) for t in (weight, bias))
            and _common.use_native("bn_leaky_relu", x, NATIVE_DTYPES)):
        return _reference(*args)
    c = x.shape[1]
    w = weight if weight is not None else x.new_ones(c)
    b = bias if bias is not None else x.new_zeros(c)
    y, mean, var = torch.ops.dip.bn_leaky_relu(x, w, b, eps, slope)
    if running_mean is not None and running_var is not None:
        # running <- running + momentum * (batch - running): two fused in-place updates (this
        # runs once per BatchNorm layer and step, where every small op costs microseconds)
        count = x.numel() // c
        if mean.dtype != running_mean.dtype:
            mean = mean.to(running_mean.dtype)
        unbiased = var.to(running_var.dtype) * (count / (count - 1))
        with torch.no_grad():
            torch._foreach_lerp_([running_mean, running_var], [mean, unbiased], momentum)
    return y


def bn_leaky_relu_reference(x: torch.Tensor, weight: torch.Tensor | None = None,
                            bias: torch.Tensor | None = None,
                            running_mean: torch.Tensor | None = None,
                            running_var: torch.Tensor | None = None, momentum: float = 0.1,
                            eps: float = 1e-5, negative_slope: float = 0.2) -> torch.Tensor:
    """:func:`bn_leaky_relu` with standard torch ops only (F.batch_norm + F.leaky_relu)."""
    return _reference(*_check(x, weight, bias, running_mean, running_var, momentum, eps,
                              negative_slope))


# ----------------------------------------------------------------------------- fake kernels
def _stat_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _bn_like(x: torch.Tensor) -> torch.Tensor:
    """Empty tensor in the layout the kernels produce: channels_last when x is exactly
    channels_last-contiguous (and not NCHW-contiguous), else NCHW-contiguous."""
    cl = (not x.is_contiguous()) and x.is_contiguous(memory_format=torch.channels_last)
    fmt = torch.channels_last if cl else torch.contiguous_format
    return torch.empty_like(x, memory_format=fmt)


def _bn_leaky_relu_fake(x, weight, bias, eps, negative_slope):
    stats = x.new_empty((x.shape[1],), dtype=_stat_dtype(x))
    return _bn_like(x), stats, torch.empty_like(stats)


def _bn_leaky_relu_backward_fake(grad_out, x, weight, bias, mean, var, eps, negative_slope):
    return _bn_like(x), torch.empty_like(weight), torch.empty_like(bias)


if _common.native_ops("bn_leaky_relu", "bn_leaky_relu_backward"):
    torch.library.register_fake("dip::bn_leaky_relu")(_bn_leaky_relu_fake)
    torch.library.register_fake("dip::bn_leaky_relu_backward")(_bn_leaky_relu_backward_fake)
