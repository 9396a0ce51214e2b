"""Blur: convolution with a known 2-D point-spread function (the deblurring operator).

``Blur(kernel, padding)`` maps an image x (N, C, H, W) to y = k * x, a true convolution (the
kernel is flipped, as in ``scipy.signal.convolve``), computed as a depthwise ``conv2d``: one
kernel shared by every channel, or one per channel.  Boundary modes:

- ``"reflect"`` / ``"replicate"`` / ``"zero"`` / ``"circular"``: x is padded by K - 1 pixels
  (``ceil((K-1)/2)`` top/left, ``floor((K-1)/2)`` bottom/right, which is
  ``scipy.signal.convolve(mode="same")``'s alignment) and y has x's size.  The adjoint is the
  transposed convolution followed by the transpose of the padding (a linear map; it folds the
  padded border back onto the pixels it copied), so ``<A u, v> = <u, A* v>`` holds exactly.
- ``"valid"``: no padding; x is larger than y by K - 1 pixels per axis (``x_size``), which is
  what a camera does: the pixels just outside the frame blur into it.  The adjoint is the full
  transposed convolution.  ``crop_box`` gives where y's own pixels lie inside x.

The convolution runs directly (depthwise ``conv2d``) or by FFT (``torch.fft.rfft2``: a
circular convolution of x's size, whose wrapped-around rows and columns are exactly the ones a
"valid" convolution drops). ``use_fft`` makes the choice: FFT from ``FFT_MIN_SIDE`` pixels a
side (measured: ``benchmarks/test_bench_blur.py``); ``method="direct"|"fft"`` forces it.  Both
are standard torch operators; exports use the direct path (``direct()``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

Size2 = tuple[int, int]

PADDINGS = ("reflect", "replicate", "zero", "circular", "valid")
METHODS = ("auto", "direct", "fft")
#: the smaller kernel side from which "auto" convolves by FFT. Measured (Intel Xeon, 1 thread,
#: 3x256², forward + backward, ms direct / fft, benchmarks/test_bench_blur.py): K=5 13.7 / 14.1,
#: K=11 34.9 / 12.9, K=21 102 / 13.0, K=63 507 / 11.6 (FFT's cost does not depend on K)
FFT_MIN_SIDE = 9


def use_fft(kernel_hw: tuple[int, int], method: str = "auto") -> bool:
    """Whether a blur with a kernel of ``kernel_hw`` convolves by FFT: ``method`` "fft" or
    "direct" forces it; "auto" takes FFT when both sides are at least ``FFT_MIN_SIDE``."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if method != "auto":
        return method == "fft"
    return min(kernel_hw) >= FFT_MIN_SIDE


_TORCH_MODE = {"reflect": "reflect", "replicate": "replicate", "zero": "constant", "circular": "circular"}


def _as_kernel(kernel) -> torch.Tensor:
    """The kernel as float32 (1|C, Kh, Kw), checked: finite, non-negative, not all zero."""
    if not isinstance(kernel, torch.Tensor):
        try:
            kernel = torch.as_tensor(kernel)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"kernel must be a tensor or array of shape (Kh, Kw) or (C, Kh, Kw), "
                            f"got {type(kernel).__name__}") from None
    if kernel.dim() == 2:
        kernel = kernel[None]
    if kernel.dim() != 3 or kernel.numel() == 0:
        raise ValueError(f"kernel must have shape (Kh, Kw) or (C, Kh, Kw) with Kh, Kw >= 1, "
                         f"got {tuple(kernel.shape)}")
    kernel = kernel.detach().to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(kernel).all()):
        raise ValueError("kernel has non-finite values (nan or inf); give a finite point-spread function")
    if bool((kernel < 0).any()):
        raise ValueError(f"kernel has negative values (min {float(kernel.min()):.3g}); a point-spread "
                         "function is non-negative")
    if bool((kernel.sum(dim=(-2, -1)) == 0).any()):
        raise ValueError("kernel is all zero (for at least one channel); a point-spread function must "
                         "have positive weight")
    return kernel.to(torch.float32)


def same_pads(kernel_hw: Size2) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) padding of a kernel of ``kernel_hw``: K - 1 pixels per axis,
    ``ceil((K-1)/2)`` top/left (``scipy.signal.convolve(mode="same")``'s alignment)."""
    kh, kw = kernel_hw
    return (kw - 1 - (kw - 1) // 2, (kw - 1) // 2, kh - 1 - (kh - 1) // 2, (kh - 1) // 2)


def pad(x: torch.Tensor, padding: str, kernel_hw: Size2) -> torch.Tensor:
    """``x`` (N, C, H, W) padded for a kernel of ``kernel_hw`` (unchanged for "valid")."""
    if padding == "valid":
        return x
    pads = same_pads(kernel_hw)
    mode = _TORCH_MODE[padding]
    if mode == "reflect" and (max(pads[:2]) >= x.shape[-1] or max(pads[2:]) >= x.shape[-2]):
        raise ValueError(f"reflect padding needs an image larger than half the kernel "
                         f"{tuple(kernel_hw)}, got {tuple(x.shape[-2:])}; use padding='replicate'")
    return F.pad(x, pads, mode=mode)


def conv_weight(kernel: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """conv2d weight (C, 1, Kh, Kw) of ``kernel`` (1|C, Kh, Kw), flipped (true convolution), in
    x's dtype and device, and the group count (x's channels C). Differentiable in ``kernel``."""
    if x.dim() != 4:
        raise ValueError(f"x must have shape (N, C, H, W), got {tuple(x.shape)}")
    c = x.shape[1]
    if kernel.shape[0] not in (1, c):
        raise ValueError(f"the blur has {kernel.shape[0]} per-channel kernels but the image has {c} channels; "
                         "give one kernel (Kh, Kw) or one per channel (C, Kh, Kw)")
    w = torch.flip(kernel.to(dtype=x.dtype, device=x.device), dims=(-2, -1)).expand(c, -1, -1)
    return w[:, None].contiguous(), c


def fft_valid(xp: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """The "valid" convolution of ``xp`` (N, C, H, W) with ``kernel`` (1|C, Kh, Kw) by FFT
    (circular at xp's size; the rows and columns that wrap around are the first Kh - 1 and
    Kw - 1, which "valid" drops). Differentiable in both."""
    kh, kw = int(kernel.shape[-2]), int(kernel.shape[-1])
    size = (int(xp.shape[-2]), int(xp.shape[-1]))
    if size[0] < kh or size[1] < kw:
        raise ValueError(f"the image {size} is smaller than the kernel {(kh, kw)}")
    real = xp if xp.dtype in (torch.float32, torch.float64) else xp.float()
    k = kernel.to(dtype=real.dtype, device=real.device)
    out = torch.fft.irfft2(torch.fft.rfft2(real, s=size) * torch.fft.rfft2(k, s=size), s=size)
    return out[..., kh - 1:, kw - 1:].to(xp.dtype)


def convolve(x: torch.Tensor, kernel: torch.Tensor, padding: str, fft: bool) -> torch.Tensor:
    """``kernel * x``: x (N, C, H, W) padded by ``padding`` (see the module docstring), then
    convolved with ``kernel`` (1|C, Kh, Kw) directly or by FFT. Differentiable in x and kernel.
    Returns (N, C, H, W), or (N, C, H - Kh + 1, W - Kw + 1) for "valid"."""
    w, groups = conv_weight(kernel, x)
    xp = pad(x, padding, (int(kernel.shape[-2]), int(kernel.shape[-1])))
    if fft:
        return fft_valid(xp, kernel)
    return F.conv2d(xp, w, groups=groups)


def x_size(padding: str, kernel_hw: Size2, y_hw: Size2) -> Size2:
    """Image size for an observation of ``y_hw``: the same, or ``y + K - 1`` for "valid"."""
    if padding == "valid":
        return (int(y_hw[0]) + kernel_hw[0] - 1, int(y_hw[1]) + kernel_hw[1] - 1)
    return (int(y_hw[0]), int(y_hw[1]))


def crop_box(padding: str, kernel_hw: Size2, y_hw: Size2) -> tuple[int, int, int, int]:
    """(top, left, h, w) of the observation's own pixels inside the image ``x_size``."""
    if padding == "valid":
        pads = same_pads(kernel_hw)
        return (pads[2], pads[0], int(y_hw[0]), int(y_hw[1]))
    return (0, 0, int(y_hw[0]), int(y_hw[1]))


class Blur(nn.Module):
    """Convolution with a known point-spread function.

    Args:
        kernel: tensor or array (Kh, Kw) shared by all channels, or (C, Kh, Kw) one per channel;
            finite, non-negative, not all zero.  It is used as given (``normalize=True`` scales
            each channel's kernel to sum 1 first).  Any size, odd or even.
        padding: ``"reflect"`` (default), ``"replicate"``, ``"zero"``, ``"circular"`` or
            ``"valid"`` (see the module docstring).
        normalize: scale each kernel to sum 1.
        method: ``"auto"`` (default: ``use_fft`` decides by the kernel's size), ``"direct"``
            or ``"fft"``.

    Shapes: (N, C, H, W) -> (N, C, H, W) with padding, (N, C, H - Kh + 1, W - Kw + 1) with
    ``"valid"``; float dtypes; the kernel follows x's dtype and device.
    """

    if TYPE_CHECKING:  # the buffer's type, for the type checker only
        kernel: torch.Tensor  # (1|C, Kh, Kw) float32

    def __init__(self, kernel, padding: str = "reflect", normalize: bool = False, method: str = "auto"):
        super().__init__()
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {', '.join(PADDINGS)}, got {padding!r}")
        k = _as_kernel(kernel)
        self.fft = use_fft((int(k.shape[-2]), int(k.shape[-1])), method)
        if normalize:
            k = k / k.sum(dim=(-2, -1), keepdim=True)
        self.register_buffer("kernel", k)
        self.padding = padding
        self.pads = same_pads(self.kernel_size)  # (left, right, top, bottom)

    def extra_repr(self) -> str:
        return f"kernel={tuple(self.kernel.shape)}, padding={self.padding!r}, fft={self.fft}"

    def direct(self) -> Blur:
        """A copy that convolves directly (the form exports use)."""
        return Blur(self.kernel, self.padding, method="direct").to(self.kernel.device)

    @property
    def kernel_size(self) -> Size2:
        return (int(self.kernel.shape[-2]), int(self.kernel.shape[-1]))

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        return pad(x, self.padding, self.kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return convolve(x, self.kernel, self.padding, self.fft)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Transpose of ``forward``: (N, C, h, w) -> (N, C, *x_size((h, w)))."""
        w, groups = conv_weight(self.kernel, y)
        if self.fft:  # the forward is linear: its vector-Jacobian product is its exact transpose
            shape = y.shape[:-2] + self.x_size((int(y.shape[-2]), int(y.shape[-1])))
            with torch.enable_grad():
                u = torch.zeros(shape, dtype=y.dtype, device=y.device, requires_grad=True)
                (adj,) = torch.autograd.grad(self.forward(u), u, y, create_graph=y.requires_grad)
            return adj
        full = F.conv_transpose2d(y, w, groups=groups)
        if self.padding == "valid":
            return full
        # transpose of the padding, as its vector-Jacobian product (exact for every mode)
        shape = full.shape[:-2] + (y.shape[-2], y.shape[-1])
        with torch.enable_grad():
            u = torch.zeros(shape, dtype=y.dtype, device=y.device, requires_grad=True)
            (out,) = torch.autograd.grad(self._pad(u), u, full, create_graph=y.requires_grad)
        return out

    def x_size(self, y_hw: Size2) -> Size2:
        """Image size for an observation of size ``y_hw``: the same, or ``y + K - 1`` for "valid"."""
        return x_size(self.padding, self.kernel_size, y_hw)

    def crop_box(self, y_hw: Size2) -> tuple[int, int, int, int]:
        """(top, left, h, w) of the observation's own pixels inside the image ``x_size(y_hw)``
        (the whole image unless the padding is "valid")."""
        return crop_box(self.padding, self.kernel_size, y_hw)
