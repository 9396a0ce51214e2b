"""``masked_mse``: the masked mean squared error of inpainting (and, with a mask of ones, of
denoising), in one fused pass that also writes the gradient.

One module per op: the argument checks, the pure-PyTorch reference (the specification and the
fallback), the public wrappers and the fake kernels of ``torch.ops.dip.masked_mse`` /
``masked_mse_backward`` (schemas and autograd: csrc/ops/masked_mse.cpp; kernels:
csrc/cpu/masked_mse.cpp, csrc/cuda/masked_mse.cu).
"""
from __future__ import annotations

import torch

from dip.ops import _common


# ----------------------------------------------------------------------------- checks
def _mask(m: object, x: torch.Tensor) -> torch.Tensor:
    """A (N|1, C|1, H, W) mask matching ``x``; bool masks are converted to ``x``'s dtype."""
    m = _common.tensor("mask", m)
    n, c, h, w = x.shape
    if (m.dim() != 4 or m.shape[2:] != x.shape[2:] or m.shape[0] not in (1, n)
            or m.shape[1] not in (1, c)):
        raise ValueError(f"mask must have shape ({n} or 1, {c} or 1, {h}, {w}) to match x, "
                         f"got {tuple(m.shape)}")
    _common.same_device("mask", m, "x", x)
    if m.dtype == torch.bool:
        return m.to(x.dtype)
    if m.dtype != x.dtype:
        raise TypeError(f"mask must be bool or have the dtype of x ({x.dtype}), got {m.dtype}")
    return m


def _normalize(value: object) -> str:
    if value not in ("all", "mask"):
        raise ValueError(f"normalize must be 'all' or 'mask', got {value!r}")
    return str(value)


def _check(x, target, mask, normalize):
    x = _common.image("x", x)
    target = _common.tensor("target", target)
    if target.shape != x.shape:
        raise ValueError(f"target must have the shape of x {tuple(x.shape)}, "
                         f"got {tuple(target.shape)}")
    _common.same_dtype_device("target", target, "x", x)
    return x, target, _mask(mask, x), _normalize(normalize)


# ----------------------------------------------------------------------------- reference
def _reference(x: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
               normalize: str = "all") -> torch.Tensor:
    """``sum(((x - target) * mask)**2) / D`` with standard torch ops; ``D = x.numel()`` for
    "all", the mask's sum broadcast to x for "mask" (an all-zero mask gives 0)."""
    d = (x - target) * mask
    s = (d * d).sum()
    if normalize == "all":
        return s / x.numel()
    denom = mask.sum() * (x.numel() // mask.numel())
    return torch.where(denom > 0, s / denom.clamp_min(torch.finfo(s.dtype).tiny),
                       torch.zeros_like(s))


# ----------------------------------------------------------------------------- public ops
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
    x, target, mask, norm = _check(x, target, mask, normalize)
    if _common.use_native("masked_mse", x) and not mask.requires_grad:
        # with a gradient to come, the forward pass also writes it (one pass each way)
        with_grad = torch.is_grad_enabled() and (x.requires_grad or target.requires_grad)
        return torch.ops.dip.masked_mse(x, target, mask, norm == "mask", with_grad)[0]
    return _reference(x, target, mask, norm)


def masked_mse_reference(x: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                         normalize: str = "all") -> torch.Tensor:
    """:func:`masked_mse` with standard torch ops only."""
    return _reference(*_check(x, target, mask, normalize))


# ----------------------------------------------------------------------------- fake kernels
def _masked_mse_fake(x, target, mask, normalize_by_mask, with_grad):
    unit = torch.empty_like(x) if with_grad else x.new_empty((0,))
    return x.new_empty(()), unit, x.new_empty(())


def _masked_mse_backward_fake(grad, x, target, mask, normalize_by_mask):
    return torch.empty_like(x)


if _common.native_ops("masked_mse", "masked_mse_backward"):
    torch.library.register_fake("dip::masked_mse")(_masked_mse_fake)
    torch.library.register_fake("dip::masked_mse_backward")(_masked_mse_backward_fake)
