"""Forward (degradation) operators A and their adjoints A*.

Every operator is an ``nn.Module`` mapping an image batch x of shape (N, C, H, W) to the
observation A(x), with ``A_adjoint`` mapping an observation back to image space, so that
``<A u, v> = <u, A* v>`` for all u, v.  ``x_size(observation_hw)`` gives the image size (H, W)
that produces an observation of the given size.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import nn

import dip.ops
from dip.physics.kernels import KERNELS, downsampler_taps, original_kernel_2d, preserve_size_padding

Size2 = tuple[int, int]


def _check_batch(x: torch.Tensor, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must have shape (N, C, H, W), got {tuple(x.shape)}")


class Identity(nn.Module):
    """A(x) = x: denoising and JPEG-artefact removal."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return y

    def x_size(self, y_hw: Size2) -> Size2:
        return (int(y_hw[0]), int(y_hw[1]))


class Mask(nn.Module):
    """A(x) = x * mask: inpainting and missing-pixel restoration.

    Args:
        mask: float tensor of shape (H, W), (1|C, H, W) or (1|N, 1|C, H, W); non-zero marks a
            known pixel.  It is stored as 0/1 float32 of shape (1|N, 1|C, H, W) and broadcast
            over channels (and the batch) when applied.
    """

    if TYPE_CHECKING:  # the buffer's type, for the type checker only (TorchScript reads class annotations)
        mask: torch.Tensor  # (1|N, 1|C, H, W) float32 0/1

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
        if mask.dim() == 2:
            mask = mask[None, None]
        elif mask.dim() == 3:
            mask = mask[None]
        elif mask.dim() != 4:
            raise ValueError(f"mask must have shape (H, W), (C, H, W) or (N, C, H, W), got {tuple(mask.shape)}")
        if mask.numel() == 0:
            raise ValueError(f"mask is empty (shape {tuple(mask.shape)})")
        self.register_buffer("mask", (mask != 0).to(torch.float32))

    def _mask_for(self, x: torch.Tensor) -> torch.Tensor:
        _check_batch(x)
        m = self.mask
        if m.shape[-2:] != x.shape[-2:] or m.shape[1] not in (1, x.shape[1]) or m.shape[0] not in (1, x.shape[0]):
            raise ValueError(
                f"mask of shape {tuple(m.shape)} does not fit an image of shape {tuple(x.shape)}: "
                "mask and image must have the same height and width"
            )
        return m.to(dtype=x.dtype, device=x.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self._mask_for(x)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return y * self._mask_for(y)

    def x_size(self, y_hw: Size2) -> Size2:
        return (int(y_hw[0]), int(y_hw[1]))


class Downsample(nn.Module):
    """Depthwise separable FIR downsampling (the super-resolution operator).

    Equal to the original's ``Downsampler`` (a dense C x C convolution with the 2-D kernel on
    the channel diagonal), computed separably: the same 1-D taps on rows and columns,
    stride ``factor``.

    Args:
        factor: integer >= 2 (1 is accepted and gives a plain FIR filter).
        kernel: ``"lanczos2"`` (default, used by the paper's fits), ``"lanczos3"``, ``"gauss12"``,
            ``"gauss1sq2"`` or ``"box"``.
        phase: 0.5 (default) or 0.
        preserve_size: pad so that the output is ``input size / factor`` (the original's
            rule: ``(K-1)/2`` per side for odd K taps, else ``(K-factor)/2``).
        padding: padding mode when ``preserve_size``: ``"replicate"`` (the original's),
            ``"reflect"`` or ``"zero"``.

    Odd factors: with an even number of taps K and an odd factor, the original's rule
    ``(K - factor) / 2`` is not a whole number of pixels (the original truncates it and its
    output is one pixel short). Here one more pixel of the same padding is added at the bottom
    and right, so the output is exactly ``input size / factor`` for every factor.

    Shapes: (N, C, H, W) -> (N, C, h, w) with h = (H + 2p - K) // factor + 1 (= H / factor
    for H divisible by factor when preserve_size).
    """

    if TYPE_CHECKING:  # the buffer's type, for the type checker only (TorchScript reads class annotations)
        taps: torch.Tensor  # (K,) float64

    def __init__(self, factor: int, kernel: str = "lanczos2", phase: float = 0.5,
                 preserve_size: bool = True, padding: str = "replicate"):
        super().__init__()
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise ValueError(f"factor must be an integer >= 1, got {factor!r}")
        if kernel not in KERNELS:
            raise ValueError(f"unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
        if padding not in ("replicate", "reflect", "zero"):
            raise ValueError(f"padding must be 'replicate', 'reflect' or 'zero', got {padding!r}")
        self.factor = factor
        self.kernel = kernel
        self.phase = phase
        self.preserve_size = bool(preserve_size)
        self.padding = padding if preserve_size else "none"
        taps = torch.from_numpy(downsampler_taps(factor, kernel, phase))
        self.register_buffer("taps", taps, persistent=False)
        self.pad = preserve_size_padding(taps.numel(), factor) if preserve_size else 0
        # one extra pixel bottom/right where (K - factor) is odd (odd factors), see above
        self.extra_pad = int(preserve_size and taps.numel() % 2 == 0 and (taps.numel() - factor) % 2 == 1)

    def _pad_extra(self, x: torch.Tensor) -> torch.Tensor:
        mode = {"replicate": "replicate", "reflect": "reflect", "zero": "constant"}[self.padding]
        return F.pad(x, (0, 1, 0, 1), mode=mode)

    def _pad_extra_adjoint(self, g: torch.Tensor) -> torch.Tensor:
        """Transpose of ``_pad_extra`` (a linear map), computed as its vector-Jacobian product."""
        shape = g.shape[:-2] + (g.shape[-2] - 1, g.shape[-1] - 1)
        with torch.enable_grad():
            u = torch.zeros(shape, dtype=g.dtype, device=g.device, requires_grad=True)
            (out,) = torch.autograd.grad(self._pad_extra(u), u, g, create_graph=g.requires_grad)
        return out

    def extra_repr(self) -> str:
        return f"factor={self.factor}, kernel={self.kernel!r}, phase={self.phase}, padding={self.padding!r}"

    def _taps_for(self, x: torch.Tensor) -> torch.Tensor:
        return self.taps.to(dtype=x.dtype, device=x.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_batch(x)
        if self.extra_pad:
            x = self._pad_extra(x)
        if not dip.ops.native_pays_off("downsample", x.device):  # e.g. CUDA: torch's conv is faster
            return dip.ops.downsample_reference(x, self._taps_for(x), self.factor, self.padding)
        return dip.ops.downsample(x, self._taps_for(x), self.factor, self.padding)

    def forward_standard(self, x: torch.Tensor) -> torch.Tensor:
        """``forward`` with standard torch operators only (for export to ONNX/TorchScript)."""
        if self.extra_pad:
            x = self._pad_extra(x)
        return dip.ops.downsample_reference(x, self._taps_for(x), self.factor, self.padding)

    def A_adjoint(self, y: torch.Tensor, x_size: Size2 | None = None) -> torch.Tensor:
        """Transpose of ``forward``; ``x_size`` defaults to ``self.x_size(y's size)``."""
        _check_batch(y, "y")
        size = tuple(x_size) if x_size is not None else self.x_size((y.shape[-2], y.shape[-1]))
        if self.extra_pad:
            padded = (size[0] + 1, size[1] + 1)
            return self._pad_extra_adjoint(
                dip.ops.downsample_adjoint(y, self._taps_for(y), self.factor, self.padding, padded))
        return dip.ops.downsample_adjoint(y, self._taps_for(y), self.factor, self.padding, size)

    def x_size(self, y_hw: Size2) -> Size2:
        """High-resolution size for an observation of size ``y_hw``: ``y_hw * factor``.

        Only meaningful with ``preserve_size`` (else the size mapping is not one-to-one).
        """
        if not self.preserve_size:
            k = self.taps.numel()
            return cast(Size2, tuple(int((s - 1) * self.factor + k) for s in y_hw))
        return (int(y_hw[0]) * self.factor, int(y_hw[1]) * self.factor)

    def kernel_2d(self):
        """The original's dense 2-D kernel (float64 numpy array), for comparison."""
        return original_kernel_2d(self.factor, self.kernel, self.phase)
