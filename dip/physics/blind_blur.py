"""BlindBlur: a blur whose point-spread function is fitted too (blind deblurring).

``BlindBlur(kernel_size, padding)`` is the operator of ``Blur`` (same convolution, boundary
modes, ``x_size`` and ``crop_box``; :func:`dip.physics.blur.convolve`), but its kernel is the
output of a small trainable generator, fitted jointly with the image generator:

    logits = prior + net(z_k)        kernel = softmax(logits)  (K_h * K_w values, one kernel
                                                                shared by the channels)

- ``z_k``: a fixed random code (``code_size`` values, uniform in [0, 1), drawn from ``seed``);
- ``net``: ``Linear(code_size, hidden) -> ReLU -> Linear(hidden, K_h * K_w)`` (SelfDeblur's
  kernel generator), its last layer scaled by ``init_scale`` so that the kernel starts near
  the prior;
- ``prior``: the log of a normalised isotropic Gaussian of ``init_sigma`` pixels on the
  kernel's support, or of the flat kernel (``init_sigma=None``) (a fixed buffer), the kernel's
  start.

The softmax keeps every estimate on the simplex: non-negative, summing to 1. The trainable
state is the net's parameters (``parameters()``); the fit optimises them with the image
generator's (``dip.engine``: their own Adam group, learning rate ``FitConfig.physics_lr``).
``kernel`` is the current estimate, detached, as ``Blur.kernel`` is laid out: (1, Kh, Kw)
float32. ``A_adjoint`` is the adjoint of the blur by the current kernel.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from dip.physics.blur import METHODS, PADDINGS, Blur, Size2, convolve, crop_box, use_fft, x_size
from dip.physics.blur_kernels import MAX_SIZE

#: smallest kernel side a blind fit estimates (a 1- or 2-pixel kernel is hardly a blur)
MIN_SIZE = 3


def _check_size(kernel_size) -> Size2:
    sizes = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    ok = isinstance(sizes, (tuple, list)) and len(sizes) == 2
    if not ok or not all(isinstance(s, int) and not isinstance(s, bool) and MIN_SIZE <= s <= MAX_SIZE for s in sizes):
        raise ValueError(f"kernel_size must be an integer (or two) from {MIN_SIZE} to {MAX_SIZE}, "
                         f"got {kernel_size!r}")
    return (int(sizes[0]), int(sizes[1]))


def gaussian_log_prior(kernel_hw: Size2, sigma: float) -> torch.Tensor:
    """log of a normalised isotropic Gaussian of ``sigma`` pixels centred on a (Kh, Kw) support
    (the centre of an even side lies between its two middle pixels, as ``Blur`` aligns it), float32."""
    rows = torch.arange(kernel_hw[0], dtype=torch.float64) - (kernel_hw[0] - 1) / 2
    cols = torch.arange(kernel_hw[1], dtype=torch.float64) - (kernel_hw[1] - 1) / 2
    logits = -0.5 * (rows[:, None] ** 2 + cols[None, :] ** 2) / sigma ** 2
    return torch.log_softmax(logits.reshape(-1), 0).reshape(kernel_hw).float()


def flat_log_prior(kernel_hw: Size2) -> torch.Tensor:
    """log of the flat kernel on a (Kh, Kw) support, every value -log(Kh * Kw), float32."""
    return torch.full(tuple(kernel_hw), -math.log(kernel_hw[0] * kernel_hw[1]), dtype=torch.float32)


class BlindBlur(nn.Module):
    """A blur with a trainable kernel (see the module docstring).

    Args:
        kernel_size: K (a K x K kernel) or (Kh, Kw), from 3 to 129, odd or even.
        padding: boundary model as ``Blur``'s: ``"valid"`` (default), ``"reflect"``,
            ``"replicate"``, ``"zero"`` or ``"circular"``.
        code_size, hidden: sizes of the kernel generator's code and hidden layer.
        init_sigma: width (pixels) of the Gaussian the kernel starts from; None: the flat kernel
            (every pixel of the support 1 / (Kh * Kw)), the start that reaches a long motion
            blur as easily as a round one.
        init_scale: scale of the last layer's initial weights and bias (0: the kernel is
            exactly the prior at the start).
        seed: seed of the code and of the generator's initial weights (the global random
            state is not touched).
        method: ``"auto"``, ``"direct"`` or ``"fft"`` (``dip.physics.blur.use_fft``).

    Shapes: (N, C, H, W) -> (N, C, H - Kh + 1, W - Kw + 1) with "valid", else (N, C, H, W);
    the kernel follows x's dtype and device and is differentiable (gradients reach the
    kernel generator).
    """

    if TYPE_CHECKING:  # the buffers' types, for the type checker only
        code: torch.Tensor  # (code_size,) float32
        prior: torch.Tensor  # (Kh, Kw) float32

    def __init__(self, kernel_size, padding: str = "valid", *, code_size: int = 200, hidden: int = 1000,
                 init_sigma: float | None = 1.0, init_scale: float = 0.1, seed: int = 0, method: str = "auto"):
        super().__init__()
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {', '.join(PADDINGS)}, got {padding!r}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        if init_sigma is not None and not (isinstance(init_sigma, (int, float)) and not isinstance(init_sigma, bool)
                                           and init_sigma > 0 and math.isfinite(init_sigma)):
            raise ValueError(f"init_sigma must be a positive number of pixels (or None: a flat start), "
                             f"got {init_sigma!r}")
        self.size = _check_size(kernel_size)
        self.padding, self.method = padding, method
        sigma = None if init_sigma is None else float(init_sigma)
        self.settings = {"code_size": int(code_size), "hidden": int(hidden), "init_sigma": sigma,
                         "init_scale": float(init_scale), "seed": int(seed)}
        self.fft = use_fft(self.size, method)
        rng = torch.Generator().manual_seed(int(seed))
        self.register_buffer("code", torch.rand(int(code_size), generator=rng))
        self.register_buffer("prior", flat_log_prior(self.size) if sigma is None
                             else gaussian_log_prior(self.size, sigma))
        first = nn.Linear(int(code_size), int(hidden))
        last = nn.Linear(int(hidden), self.size[0] * self.size[1])
        with torch.no_grad():
            for layer in (first, last):
                bound = 1.0 / float(layer.in_features) ** 0.5  # nn.Linear's default, from our own generator
                layer.weight.uniform_(-bound, bound, generator=rng)
                layer.bias.uniform_(-bound, bound, generator=rng)
            last.weight.mul_(init_scale)
            last.bias.mul_(init_scale)
        self.net = nn.Sequential(first, nn.ReLU(), last)

    def extra_repr(self) -> str:
        return f"kernel_size={self.size}, padding={self.padding!r}, fft={self.fft}"

    @property
    def kernel_size(self) -> Size2:
        return self.size

    def weights(self) -> torch.Tensor:
        """The current kernel, differentiable: (1, Kh, Kw) float32, non-negative, summing to 1."""
        logits = self.prior.reshape(-1) + self.net(self.code)
        return torch.softmax(logits, 0).reshape(1, *self.size)

    @property
    def kernel(self) -> torch.Tensor:
        """The current estimate, detached: (1, Kh, Kw) float32 on the simplex (as ``Blur.kernel``)."""
        with torch.no_grad():
            return self.weights().detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return convolve(x, self.weights(), self.padding, self.fft)

    def frozen(self) -> Blur:
        """A ``Blur`` with the current kernel (its settings, method and device)."""
        return Blur(self.kernel.cpu(), self.padding, method=self.method).to(self.prior.device)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Transpose of the blur by the current kernel: (N, C, h, w) -> (N, C, *x_size((h, w)))."""
        return self.frozen().A_adjoint(y)

    def x_size(self, y_hw: Size2) -> Size2:
        return x_size(self.padding, self.size, y_hw)

    def crop_box(self, y_hw: Size2) -> tuple[int, int, int, int]:
        return crop_box(self.padding, self.size, y_hw)

    def config(self) -> dict:
        """Settings that rebuild this operator (without its trained state): ``BlindBlur(**config())``."""
        return {"kernel_size": list(self.size), "padding": self.padding, "method": self.method, **self.settings}
