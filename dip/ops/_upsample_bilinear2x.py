"""``upsample_bilinear2x``: bilinear ×2 upsampling (align_corners=False), the skip generator's
upsampler, and its adjoint.

One module per op: the argument checks, the pure-PyTorch reference (the specification and the
fallback), the public wrappers and the fake kernels of ``torch.ops.dip.upsample_bilinear2x`` /
``upsample_bilinear2x_adjoint`` (schemas and autograd: csrc/ops/upsample_bilinear2x.cpp; kernels:
csrc/cpu/upsample_bilinear2x.cpp; on CUDA the reference runs: torch's kernel is fast there).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dip.ops import _common

#: the kernels' dtypes (bfloat16 is computed in float32)
NATIVE_DTYPES = (torch.float32, torch.float64, torch.bfloat16)


# ----------------------------------------------------------------------------- checks
def _even(g: torch.Tensor) -> torch.Tensor:
    if g.shape[2] % 2 or g.shape[3] % 2:
        raise ValueError(f"g must have an even height and width (an upsampled size), got {tuple(g.shape)}")
    return g


# ----------------------------------------------------------------------------- reference
def _reference(x: torch.Tensor) -> torch.Tensor:
    """``F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)``."""
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def _adjoint_reference(g: torch.Tensor) -> torch.Tensor:
    """The adjoint of :func:`_reference` at ``g`` (its vector-Jacobian product; it is linear)."""
    n, c, h, w = g.shape
    x = torch.zeros(n, c, h // 2, w // 2, dtype=g.dtype, device=g.device, requires_grad=True)
    with torch.enable_grad():
        (out,) = torch.autograd.grad(_reference(x), x, g, create_graph=g.requires_grad)
    return out


# ----------------------------------------------------------------------------- public ops
def upsample_bilinear2x(x: torch.Tensor) -> torch.Tensor:
    """Bilinear ×2 upsampling with align_corners=False (``nn.Upsample(scale_factor=2,
    mode="bilinear")``): (N, C, H, W) float → (N, C, 2H, 2W) of x's dtype, channels_last when
    x is. Native on the CPU (float32, float64, bfloat16); differentiable (the backward is
    :func:`upsample_bilinear2x_adjoint`)."""
    x = _common.image("x", x)
    if _common.use_native("upsample_bilinear2x", x, NATIVE_DTYPES):
        return torch.ops.dip.upsample_bilinear2x(x)
    return _reference(x)


def upsample_bilinear2x_adjoint(g: torch.Tensor) -> torch.Tensor:
    """The adjoint of :func:`upsample_bilinear2x`: (N, C, 2H, 2W) → (N, C, H, W), so that
    ``<up(u), v> = <u, up*(v)>``; the gradient of the upsampler's input."""
    g = _even(_common.image("g", g))
    if _common.use_native("upsample_bilinear2x_adjoint", g, NATIVE_DTYPES):
        return torch.ops.dip.upsample_bilinear2x_adjoint(g)
    return _adjoint_reference(g)


def upsample_bilinear2x_reference(x: torch.Tensor) -> torch.Tensor:
    """:func:`upsample_bilinear2x` with standard torch ops only."""
    return _reference(_common.image("x", x))


def upsample_bilinear2x_adjoint_reference(g: torch.Tensor) -> torch.Tensor:
    """:func:`upsample_bilinear2x_adjoint` with standard torch ops only."""
    return _adjoint_reference(_even(_common.image("g", g)))


# ----------------------------------------------------------------------------- fake kernels
def _layout(t: torch.Tensor) -> torch.memory_format:
    """The kernels' layout: channels_last when t is channels_last-contiguous or a non-contiguous
    tensor with channels_last-like strides, else NCHW."""
    if t.is_contiguous():
        return torch.contiguous_format
    if t.is_contiguous(memory_format=torch.channels_last) or t.stride(1) == 1:
        return torch.channels_last
    return torch.contiguous_format


def _upsample_fake(x):
    n, c, h, w = x.shape
    return x.new_empty((n, c, 2 * h, 2 * w)).contiguous(memory_format=_layout(x))


def _adjoint_fake(g):
    n, c, h, w = g.shape
    return g.new_empty((n, c, h // 2, w // 2)).contiguous(memory_format=_layout(g))


if _common.native_ops("upsample_bilinear2x", "upsample_bilinear2x_adjoint"):
    torch.library.register_fake("dip::upsample_bilinear2x")(_upsample_fake)
    torch.library.register_fake("dip::upsample_bilinear2x_adjoint")(_adjoint_fake)
