"""Functional operators of ``dip``: Lanczos/FIR downsampling, masked MSE, fused BatchNorm+LeakyReLU,
bilinear ×2 upsampling.

Each public op validates its arguments, then runs the native kernel (``torch.ops.dip.*``, from
the compiled library ``dip._C``) when it is loaded and supports the tensor's device and dtype,
and the pure-PyTorch reference (the specification) otherwise. Each op lives in one module,
``dip/ops/_<op>.py``: checks, reference, public wrappers and fake kernels (CONTRIBUTING.md says
how to add one). The
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

import torch

from dip.ops._bn_leaky_relu import bn_leaky_relu, bn_leaky_relu_reference
from dip.ops._common import has_kernel
from dip.ops._downsample import (
    PADDING_MODES,
    downsample,
    downsample_adjoint,
    downsample_adjoint_reference,
    downsample_reference,
    downsample_size,
    pad_amount,
)
from dip.ops._loader import NATIVE, REQUIRE_ENV, STATUS
from dip.ops._masked_mse import masked_mse, masked_mse_reference
from dip.ops._upsample_bilinear2x import (
    upsample_bilinear2x,
    upsample_bilinear2x_adjoint,
    upsample_bilinear2x_adjoint_reference,
    upsample_bilinear2x_reference,
)

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
    "native_pays_off",
    "native_status",
    "pad_amount",
    "upsample_bilinear2x",
    "upsample_bilinear2x_adjoint",
    "upsample_bilinear2x_adjoint_reference",
    "upsample_bilinear2x_reference",
]


def has_native() -> bool:
    """True when the compiled library ``dip._C`` is loaded and its ops are registered."""
    return NATIVE is not None


def native_status() -> str:
    """``"loaded from <path>"``, or the reason the native library is unavailable."""
    return STATUS


def build_info() -> dict[str, str]:
    """How ``dip._C`` was built (compiler, torch version, CUDA or not) and which CPU kernel
    copies run (``cpu_isa``) and exist for this CPU (``cpu_isas``); empty when missing."""
    if NATIVE is None:
        return {}
    return dict(NATIVE.build_info())


#: Device types on which each op's native kernel beats the standard-torch path, forward +
#: backward, measured in the same run (benchmarks/test_bench_ops.py on the CPU, one thread;
#: benchmarks/test_bench_cuda.py on an NVIDIA H200, torch 2.11+cu130, ms per call):
#: CPU (AVX2, one thread): downsample x4 3x512² 11-13x the dense conv, masked MSE 2.5-2.8x,
#: BN+LeakyReLU 128x256² 2.0-2.6x NCHW, 1.2-1.45x channels_last.
#: CPU (Intel Xeon, AVX-512 copies, one thread, shared machine): downsample 12.6-13.8x (the AVX2
#: copies there: 9.3-11.3x), masked MSE 3.0x, BN+LeakyReLU 2.65x NCHW, 1.55-1.67x channels_last.
#: CUDA: downsample 0.794 vs 0.315 (reference) / 0.669 (dense conv); masked MSE 0.262 vs 0.190;
#: BN+LeakyReLU 128x256² 0.691 vs 0.241 (cuDNN) NCHW, 0.794 vs 0.372 channels_last: the CUDA
#: kernels are correct (tests/ops, the cuda parameter) but slower, so the library's own users
#: (generators, physics, fit) take torch's path there. ``dip.ops.*`` itself always dispatches
#: to the native kernel when one exists.
_NATIVE_PAYS_OFF = {
    "cpu": frozenset({"downsample", "downsample_adjoint", "masked_mse", "bn_leaky_relu",
                      "upsample_bilinear2x", "upsample_bilinear2x_adjoint"}),
    "cuda": frozenset(),
}


def native_pays_off(op: str, device: torch.device | str) -> bool:
    """Whether the library's modules should call the native ``op`` for tensors on ``device``:
    the kernel is loaded there and was measured faster than torch's own path (see above)."""
    device_type = torch.device(device).type
    return (NATIVE is not None and op in _NATIVE_PAYS_OFF.get(device_type, ())
            and has_kernel(op, device_type))


