"""Functional operators of ``dip``: Lanczos/FIR downsampling, masked MSE, fused BatchNorm+LeakyReLU.

Each public op validates its arguments, then runs the native kernel (``torch.ops.dip.*``, from
the compiled library ``dip._C``) when it is loaded and supports the tensor's device and dtype,
and the pure-PyTorch reference (:mod:`dip.ops._reference`, the specification) otherwise. The
``*_reference`` variants always run standard torch ops (for ONNX/TorchScript export or for
checking). During ``torch.onnx.export`` the public ops choose the reference automatically.

``has_native()`` says whether the library is loaded and ``native_status()`` why (not). Setting
the environment variable ``DIP_REQUIRE_NATIVE=1`` makes ``import dip.ops`` fail when the
library is missing. The CPU kernels are compiled three times, for the baseline x86-64 ISA, for
AVX2+FMA and for AVX-512, and the best copy the CPU supports is chosen at run time;
``DIP_CPU_ISA=avx512|avx2|baseline`` forces one the CPU supports (asking for one it lacks is a
RuntimeError at the first kernel call), ``build_info()["cpu_isa"]`` says which one runs and
``build_info()["cpu_isas"]`` which ones the CPU supports.
"""
from __future__ import annotations

import functools
from typing import Dict, Optional, Sequence

import torch

from dip.ops import _checks, _reference
from dip.ops._loader import NATIVE, REQUIRE_ENV, STATUS
from dip.ops._reference import PADDING_MODES, pad_amount

if NATIVE is not None:
    from dip.ops import _native  # noqa: F401  (fake kernels and autograd for torch.ops.dip)

__all__ = [
    "PADDING_MODES",
    "REQUIRE_ENV",
    "bn_leaky_relu",
    "bn_leaky_relu_reference",
    "build_info",
    "downsample",
    "downsample_adjoint",
    "downsample_adjoint_reference",
    "downsample_reference",
    "downsample_size",
    "has_native",
    "masked_mse",
    "masked_mse_reference",
    "native_status",
    "pad_amount",
]

_NATIVE_DTYPES = (torch.float32, torch.float64)
_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA", "meta": "Meta"}


def has_native() -> bool:
    """True when the compiled library ``dip._C`` is loaded and its ops are registered."""
    return NATIVE is not None


def native_status() -> str:
    """``"loaded from <path>"``, or the reason the native library is unavailable."""
    return STATUS


def build_info() -> Dict[str, str]:
    """How ``dip._C`` was built (compiler, torch version, CUDA or not); empty when missing."""
    if NATIVE is None:
        return {}
    return dict(NATIVE.build_info())


@functools.lru_cache(maxsize=None)
def _has_kernel(op: str, device_type: str) -> bool:
    key = _DISPATCH_KEYS.get(device_type)
    if key is None:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"dip::{op}", key)


#: Device types on which each op's native kernel beats the standard-torch path, forward +
#: backward, measured in the same run (benchmarks/test_bench_ops.py on the CPU, one thread;
#: benchmarks/test_bench_cuda.py on an NVIDIA H200, torch 2.11+cu130, ms per call):
#: CPU (AVX2, one thread): downsample x4 3x512² 11-13x the dense conv, masked MSE 2.5-2.8x,
#: BN+LeakyReLU 128x256² 2.0-2.6x NCHW, 1.2-1.45x channels_last.
#: CPU (Intel Xeon, AVX-512 copies, one thread, shared machine): downsample 12.6-13.8x (the AVX2
#: copies there: 9.3-11.3x), masked MSE 3.0x, BN+LeakyReLU 2.65x NCHW, 1.55-1.67x channels_last.
#: CUDA: downsample 0.794 vs 0.315 (reference) / 0.669 (dense conv); masked MSE 0.262 vs 0.190;
#: BN+LeakyReLU 128x256² 0.691 vs 0.241 (cuDNN) NCHW, 0.794 vs 0.372 channels_last: the CUDA
#: kernels are correct (tests/ops/test_cuda_kernels.py) but slower, so the library's own users
#: (generators, physics, fit) take torch's path there. ``dip.ops.*`` itself always dispatches
#: to the native kernel when one exists.
_NATIVE_PAYS_OFF = {
    "cpu": frozenset({"downsample", "downsample_adjoint", "masked_mse", "bn_leaky_relu"}),
    "cuda": frozenset(),
}


def native_pays_off(op: str, device: torch.device | str) -> bool:
    """Whether the library's modules should call the native ``op`` for tensors on ``device``:
    the kernel is loaded there and was measured faster than torch's own path (see above)."""
    device_type = torch.device(device).type
    return (NATIVE is not None and op in _NATIVE_PAYS_OFF.get(device_type, ())
            and _has_kernel(op, device_type))


def _use_native(op: str, x: torch.Tensor) -> bool:
    if NATIVE is None or x.dtype not in _NATIVE_DTYPES or torch.onnx.is_in_onnx_export():
        return False
    return _has_kernel(op, x.device.type)


# ----------------------------------------------------------------------------- downsample
def _check_downsample(x, taps, factor, padding):
    x = _checks.image("x", x)
    taps = _checks.taps(taps, x)
    f = _checks.factor(factor)
    mode = _checks.padding(padding)
    _checks.resample_geometry(x.shape[2:], taps.shape[0], f, mode)
    return x, taps, f, mode


def downsample_size(input_size: Sequence[int], num_taps: int, factor: int,
                    padding: str = "replicate") -> tuple[int, int]:
    """Spatial size (h, w) of :func:`downsample`'s output for an input of ``input_size``."""
    size = _checks.input_size(input_size)
    _, h, w = _checks.resample_geometry(size, int(num_taps), _checks.factor(factor),
                                        _checks.padding(padding))
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
    if _use_native("downsample", x) and not taps.requires_grad:
        return torch.ops.dip.downsample(x, taps, f, mode)
    return _reference.downsample(x, taps, f, mode)


def downsample_reference(x: torch.Tensor, taps: torch.Tensor, factor: int,
                         padding: str = "replicate") -> torch.Tensor:
    """:func:`downsample` with standard torch ops only (exportable)."""
    x, taps, f, mode = _check_downsample(x, taps, factor, padding)
    return _reference.downsample(x, taps, f, mode)


def _check_adjoint(y, taps, factor, padding, input_size):
    y = _checks.image("y", y)
    taps = _checks.taps(taps, y)
    f = _checks.factor(factor)
    mode = _checks.padding(padding)
    size = _checks.input_size(input_size)
    _, h, w = _checks.resample_geometry(size, taps.shape[0], f, mode)
    if tuple(y.shape[2:]) != (h, w):
        raise ValueError(f"y must have spatial size {(h, w)} (the downsampled size of "
                         f"input_size={size} with {taps.shape[0]} taps, factor {f}, padding "
                         f"{mode!r}), got {tuple(y.shape[2:])}")
    return y, taps, f, mode, size


def downsample_adjoint(y: torch.Tensor, taps: torch.Tensor, factor: int,
                       padding: str = "replicate",
                       input_size: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Exact transpose of :func:`downsample` (its backward), mapping (N,C,h,w) to (N,C,H,W).

    ``input_size`` is the (H, W) of the image space (required: several sizes downsample to
    the same h, w).
    """
    y, taps, f, mode, size = _check_adjoint(y, taps, factor, padding, input_size)
    if _use_native("downsample_adjoint", y) and not taps.requires_grad:
        return torch.ops.dip.downsample_adjoint(y, taps, f, mode, list(size))
    return _reference.downsample_adjoint(y, taps, f, mode, size)


def downsample_adjoint_reference(y: torch.Tensor, taps: torch.Tensor, factor: int,
                                 padding: str = "replicate",
                                 input_size: Optional[Sequence[int]] = None) -> torch.Tensor:
    """:func:`downsample_adjoint` with standard torch ops only (exportable)."""
    y, taps, f, mode, size = _check_adjoint(y, taps, factor, padding, input_size)
    return _reference.downsample_adjoint(y, taps, f, mode, size)


# ----------------------------------------------------------------------------- masked_mse
def _check_mse(x, target, mask, normalize):
    x = _checks.image("x", x)
    target = _checks.tensor("target", target)
    if target.shape != x.shape:
        raise ValueError(f"target must have the shape of x {tuple(x.shape)}, "
                         f"got {tuple(target.shape)}")
    _checks.same_dtype_device("target", target, "x", x)
    mask = _checks.mask(mask, x)
    return x, target, mask, _checks.normalize(normalize)


def masked_mse(x: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
               normalize: str = "all") -> torch.Tensor:
    """``sum(((x - target) * mask)**2) / D`` as a 0-dim tensor; fused native kernels.

    Args:
        x, target: (N, C, H, W), same dtype and device.
        mask: (N|1, C|1, H, W) of x's dtype, or bool; broadcast over x.
        normalize: "all" (D = x.numel(), the original's ``mse(x*m, target*m)``) or "mask"
            (D = the mask's sum broadcast to x; an all-zero mask gives 0).
    Gradients flow to ``x`` and ``target`` (and to ``mask`` through the reference path).
    """
    x, target, mask, norm = _check_mse(x, target, mask, normalize)
    if _use_native("masked_mse", x) and not mask.requires_grad:
        # with a gradient to come, the forward pass also writes its direction (one pass each)
        with_grad = torch.is_grad_enabled() and (x.requires_grad or target.requires_grad)
        return torch.ops.dip.masked_mse(x, target, mask, norm == "mask", with_grad)[0]
    return _reference.masked_mse(x, target, mask, norm)


def masked_mse_reference(x: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                         normalize: str = "all") -> torch.Tensor:
    """:func:`masked_mse` with standard torch ops only."""
    return _reference.masked_mse(*_check_mse(x, target, mask, normalize))


# ----------------------------------------------------------------------------- bn_leaky_relu
def _check_bn(x, weight, bias, running_mean, running_var, momentum, eps, negative_slope):
    x = _checks.image("x", x)
    # affine parameters may be float32 while x is bfloat16/float16 (autocast): the reference runs
    weight = _checks.channel_vector("weight", weight, x, False)
    bias = _checks.channel_vector("bias", bias, x, False)
    running_mean = _checks.channel_vector("running_mean", running_mean, x, False)
    running_var = _checks.channel_vector("running_var", running_var, x, False)
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


def bn_leaky_relu(x: torch.Tensor, weight: Optional[torch.Tensor] = None,
                  bias: Optional[torch.Tensor] = None,
                  running_mean: Optional[torch.Tensor] = None,
                  running_var: Optional[torch.Tensor] = None, momentum: float = 0.1,
                  eps: float = 1e-5, negative_slope: float = 0.2) -> torch.Tensor:
    """``LeakyReLU(negative_slope)(BatchNorm2d(x))`` with batch statistics (training mode).

    Args:
        x: (N, C, H, W) float tensor, NCHW or channels_last (the output keeps its layout).
        weight, bias: (C,) affine parameters (None = 1 and 0) on x's device; the native kernel
            runs when they have x's dtype, the reference otherwise (e.g. float32 parameters
            with a bfloat16 x under autocast).
        running_mean, running_var: (C,) buffers updated in place like ``nn.BatchNorm2d``
            (exponential average with ``momentum``, unbiased variance), or None.
        momentum: float in [0, 1]; eps: added to the variance; negative_slope: LeakyReLU slope.
    Returns:
        (N, C, H, W) tensor of x's dtype. Backward is one fused native kernel.
    """
    args = _check_bn(x, weight, bias, running_mean, running_var, momentum, eps, negative_slope)
    x, weight, bias, running_mean, running_var, momentum, eps, slope = args
    same_dtype = all(t is None or t.dtype == x.dtype for t in (weight, bias))
    if not (same_dtype and _use_native("bn_leaky_relu", x)):
        return _reference.bn_leaky_relu(*args)
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


def bn_leaky_relu_reference(x: torch.Tensor, weight: Optional[torch.Tensor] = None,
                            bias: Optional[torch.Tensor] = None,
                            running_mean: Optional[torch.Tensor] = None,
                            running_var: Optional[torch.Tensor] = None, momentum: float = 0.1,
                            eps: float = 1e-5, negative_slope: float = 0.2) -> torch.Tensor:
    """:func:`bn_leaky_relu` with standard torch ops only (F.batch_norm + F.leaky_relu)."""
    return _reference.bn_leaky_relu(*_check_bn(x, weight, bias, running_mean, running_var,
                                               momentum, eps, negative_slope))
