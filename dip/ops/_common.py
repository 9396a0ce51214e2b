"""What every op module of :mod:`dip.ops` shares: the basic argument checks and the choice
between the native kernel and the reference.

Checks raise ``TypeError`` (wrong type or dtype) or ``ValueError`` (wrong shape, value or
device) with a message naming the argument, the offending value and what is expected.
"""
from __future__ import annotations

import functools

import torch

from dip.ops._loader import NATIVE, registered_ops

#: dtypes the native kernels are used for (others take the reference).
NATIVE_DTYPES = (torch.float32, torch.float64)
_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA", "meta": "Meta"}


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


def same_device(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}; "
                         "move both to the same device")


def native_ops(*names: str) -> bool:
    """True when the native library is loaded and registers every operator ``dip::<name>``
    (the op modules register their fake kernels only then)."""
    return NATIVE is not None and set(names) <= set(registered_ops())


@functools.cache
def has_kernel(op: str, device_type: str) -> bool:
    """Whether ``dip::<op>`` has a native kernel for tensors on ``device_type``."""
    key = _DISPATCH_KEYS.get(device_type)
    if key is None or not native_ops(op):
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"dip::{op}", key)


def use_native(op: str, x: torch.Tensor, dtypes: tuple[torch.dtype, ...] = NATIVE_DTYPES) -> bool:
    """Whether a public op should call ``dip::<op>`` for ``x``: a kernel exists for its device,
    its dtype is one of ``dtypes`` (default float32/float64: what every op's kernels are tested
    in), and no ONNX export is tracing (which needs standard ops)."""
    if NATIVE is None or x.dtype not in dtypes or torch.onnx.is_in_onnx_export():
        return False
    return has_kernel(op, x.device.type)
