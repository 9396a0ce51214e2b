"""The original Deep Image Prior code, rebuilt in its original structure: the tests' oracle and
the benchmarks' baseline.

Written from the published description of the original code (see RECIPES.md), independently
of ``dip``: tests check ``dip`` against it, benchmarks time ``dip`` against it. Import it as
``from tests import oracle`` (the repository root is on ``sys.path`` through pytest's
``pythonpath`` setting; ``PYTHONPATH=.`` elsewhere).

* Lanczos kernels: :func:`lanczos_taps` (1-D, the separable factor) and
  :func:`lanczos_kernel_2d` (the original's dense 2-D kernel, element by element).
* The super-resolution operator as the original builds it: :class:`Downsampler` (replicate
  padding + a dense C x C ``Conv2d`` whose weights are zero off the channel diagonal, C times
  the necessary work) and its functional form :func:`dense_downsample`.
* The generator: :func:`skip` (nested ``nn.Sequential`` modules named ``"1"``, ``"2"``, ... as
  the original's ``add``; ``ReflectionPad2d`` + ``Conv2d`` for ``pad="reflection"``;
  ``nn.BatchNorm2d``; ``nn.LeakyReLU(0.2, inplace=True)``; a :class:`Concat` that centre-crops;
  ``nn.Upsample``; stride, average, max or Lanczos downsampling), :func:`denoise_skip` (the
  denoise recipe's network) and :func:`copy_weights` (weights into ``dip.models.skip``).
* The step: :class:`OriginalStep`, the original's closure and optimiser loop:
  ``optimizer.zero_grad()`` zero-filling the gradients, reg noise drawn as
  ``net_input = net_input_saved + noise.normal_() * reg_noise_std`` (a new tensor every step),
  ``loss = mse(out * mask, y * mask)`` or ``mse(out, y)`` as a separate ``nn.MSELoss``, and
  ``torch.optim.Adam`` in its single-tensor (non-foreach, non-fused) form, NCHW float32.
* Test data: :func:`smooth_image`, :func:`block_mask` (tensors) and :func:`write_image`,
  :func:`write_mask` (files; ``tests/conftest.py`` serves them as the ``image_maker`` and
  ``mask_maker`` fixtures).

Everything is float32 NCHW on the CPU unless the caller moves it.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Concat",
    "Downsampler",
    "OriginalStep",
    "block_mask",
    "copy_weights",
    "dense_downsample",
    "denoise_skip",
    "lanczos_kernel_2d",
    "lanczos_taps",
    "skip",
    "smooth_image",
    "write_image",
    "write_mask",
]

_SUPPORT = {"lanczos2": 2, "lanczos3": 3}


# ----------------------------------------------------------------------------- Lanczos kernels
def _check_kernel(kernel_type: str, phase: float) -> int:
    if kernel_type not in _SUPPORT:
        raise ValueError(f"kernel_type must be 'lanczos2' or 'lanczos3', got {kernel_type!r}")
    if phase not in (0, 0.5):
        raise ValueError(f"phase must be 0 or 0.5, got {phase!r}")
    return _SUPPORT[kernel_type]


def _lanczos(d: float, support: int) -> float:
    """The original's Lanczos weight at distance ``d`` (in low-resolution pixels)."""
    if d == 0:
        return 1.0
    return support * math.sin(math.pi * d) * math.sin(math.pi * d / support) / (math.pi * math.pi * d * d)


def _distances(factor: int, support: int, phase: float) -> list[float]:
    """Distances of the kernel's taps from its centre, in the original's 1-based indexing."""
    width = 2 * support * factor + 1
    size = width - 1 if phase == 0.5 else width
    center = (width + 1) / 2.0
    return [abs(i + phase - center) / factor for i in range(1, size + 1)]


def lanczos_taps(factor: int, kernel_type: str = "lanczos2", phase: float = 0.5) -> torch.Tensor:
    """1-D taps of the original's Lanczos kernel, float64, normalised to sum 1.

    Length 2 * support * factor at phase 0.5 (support 2 for lanczos2, 3 for lanczos3), one
    more at phase 0; ``torch.outer(taps, taps)`` is :func:`lanczos_kernel_2d`.
    """
    support = _check_kernel(kernel_type, phase)
    taps = torch.tensor([_lanczos(d, support) for d in _distances(factor, support, phase)],
                        dtype=torch.float64)
    return taps / taps.sum()


def lanczos_kernel_2d(factor: int, kernel_type: str = "lanczos2", phase: float = 0.5) -> np.ndarray:
    """The original's dense 2-D Lanczos kernel, float64 numpy (K, K), normalised to sum 1.

    K = 4 * factor for lanczos2 at phase 0.5 (6 * factor for lanczos3; one more at phase 0),
    computed element by element as the original does.
    """
    support = _check_kernel(kernel_type, phase)
    dist = _distances(factor, support, phase)
    kernel = np.array([[_lanczos(di, support) * _lanczos(dj, support) for dj in dist] for di in dist])
    return kernel / kernel.sum()


# ----------------------------------------------------------------------------- the downsampler
def _preserve_size_pad(k: int, factor: int) -> int:
    """The original's padding per side for ``preserve_size``."""
    return (k - 1) // 2 if k % 2 == 1 else (k - factor) // 2


def _dense_weight(n_planes: int, kernel: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """(n_planes, n_planes, K, K): ``kernel`` on the channel diagonal, zero elsewhere."""
    k = torch.from_numpy(kernel).to(dtype)
    weight = torch.zeros(n_planes, n_planes, *k.shape, dtype=dtype)
    for i in range(n_planes):
        weight[i, i] = k
    return weight


def dense_downsample(x: torch.Tensor, factor: int, kernel_type: str = "lanczos2",
                     phase: float = 0.5) -> torch.Tensor:
    """The original's downsampler as a function: replicate padding, then the dense C x C conv.

    x (N, C, H, W) float -> (N, C, H // factor, W // factor) in x's dtype and on its device;
    the kernel is cast from float64 to x's dtype once (exact enough for float64 comparisons).
    """
    kernel = lanczos_kernel_2d(factor, kernel_type, phase)
    weight = _dense_weight(x.shape[1], kernel, x.dtype).to(x.device)
    pad = _preserve_size_pad(kernel.shape[0], factor)
    return F.conv2d(F.pad(x, (pad,) * 4, mode="replicate"), weight, stride=factor)


class Downsampler(nn.Module):
    """The original's Lanczos downsampler: replicate padding, then a dense C x C conv.

    ``forward(x)``: x (N, n_planes, H, W) float -> (N, n_planes, H // factor, W // factor) with
    preserve_size. The conv weight is (n_planes, n_planes, K, K), zero off the channel diagonal;
    it stays a trainable parameter (as in the original, gradients are computed for it although
    no optimiser updates it; ``requires_grad_(False)`` gives the cheaper variant).
    """

    def __init__(self, n_planes: int, factor: int, kernel_type: str = "lanczos2",
                 phase: float = 0.5, preserve_size: bool = True) -> None:
        super().__init__()
        kernel = lanczos_kernel_2d(factor, kernel_type, phase)
        self.kernel = kernel
        conv = nn.Conv2d(n_planes, n_planes, kernel_size=kernel.shape, stride=factor, padding=0)
        with torch.no_grad():
            conv.weight.copy_(_dense_weight(n_planes, kernel, conv.weight.dtype))
            conv.bias.zero_()
        self.downsampler_ = conv
        self.preserve_size = preserve_size
        if preserve_size:
            self.padding = nn.ReplicationPad2d(_preserve_size_pad(kernel.shape[0], factor))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.preserve_size:
            x = self.padding(x)
        return self.downsampler_(x)


# ----------------------------------------------------------------------------- the generator
def _add(seq: nn.Sequential, module: nn.Module) -> None:
    """Append ``module`` to ``seq`` under the name the original used (``str(len + 1)``)."""
    seq.add_module(str(len(seq) + 1), module)


class Concat(nn.Module):
    """Run every child on the same input and concatenate along ``dim``.

    Inputs whose spatial sizes differ are centre-cropped to the smallest height and width
    first (the original's behaviour, and the reason it needs sizes that are multiples of 32).
    """

    def __init__(self, dim: int, *modules: nn.Module) -> None:
        super().__init__()
        self.dim = dim
        for idx, module in enumerate(modules):
            self.add_module(str(idx), module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [module(x) for module in self._modules.values()]
        h = min(o.shape[2] for o in outs)
        w = min(o.shape[3] for o in outs)
        if any(o.shape[2] != h or o.shape[3] != w for o in outs):
            cropped = []
            for o in outs:
                dh = (o.shape[2] - h) // 2
                dw = (o.shape[3] - w) // 2
                cropped.append(o[:, :, dh:dh + h, dw:dw + w])
            outs = cropped
        return torch.cat(outs, dim=self.dim)


def _conv(in_f: int, out_f: int, kernel_size: int, stride: int = 1, bias: bool = True,
          pad: str = "zero", downsample_mode: str = "stride") -> nn.Sequential:
    """Original ``conv``: [ReflectionPad2d] + Conv2d + [downsampler when stride > 1 and the
    mode is not ``"stride"``: AvgPool2d, MaxPool2d or :class:`Downsampler`]."""
    downsampler: nn.Module | None = None
    if stride != 1 and downsample_mode != "stride":
        if downsample_mode == "avg":
            downsampler = nn.AvgPool2d(stride, stride)
        elif downsample_mode == "max":
            downsampler = nn.MaxPool2d(stride, stride)
        elif downsample_mode in _SUPPORT:
            downsampler = Downsampler(out_f, stride, downsample_mode, phase=0.5, preserve_size=True)
        else:
            raise ValueError(f"downsample_mode must be 'stride', 'avg', 'max', 'lanczos2' or "
                             f"'lanczos3', got {downsample_mode!r}")
        stride = 1
    to_pad = (kernel_size - 1) // 2
    layers: list[nn.Module] = []
    if pad == "reflection":
        layers.append(nn.ReflectionPad2d(to_pad))
        to_pad = 0
    elif pad != "zero":
        raise ValueError(f"pad must be 'reflection' or 'zero', got {pad!r}")
    layers.append(nn.Conv2d(in_f, out_f, kernel_size, stride, padding=to_pad, bias=bias))
    if downsampler is not None:
        layers.append(downsampler)
    return nn.Sequential(*layers)


def _act() -> nn.Module:
    return nn.LeakyReLU(0.2, inplace=True)


def _per_scale(value, n: int, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} must have {n} entries (one per scale), got {len(value)}")
        return list(value)
    return [value] * n


def skip(num_input_channels: int = 2, num_output_channels: int = 3,
         num_channels_down: Sequence[int] = (16, 32, 64, 128, 128),
         num_channels_up: Sequence[int] = (16, 32, 64, 128, 128),
         num_channels_skip: Sequence[int] = (4, 4, 4, 4, 4),
         filter_size_down=3, filter_size_up=3, filter_skip_size: int = 1,
         need_sigmoid: bool = True, need_bias: bool = True, pad: str = "zero",
         upsample_mode="nearest", downsample_mode="stride", need1x1_up: bool = True) -> nn.Sequential:
    """The original ``skip`` generator, module for module (LeakyReLU activations).

    Input (N, num_input_channels, H, W) float32 with H, W multiples of 2**scales; output
    (N, num_output_channels, H, W) in (0, 1) with the sigmoid. ``upsample_mode``,
    ``downsample_mode`` and the filter sizes take one value or one per scale.
    """
    n_scales = len(num_channels_down)
    if not (len(num_channels_up) == len(num_channels_skip) == n_scales):
        raise ValueError("num_channels_down, num_channels_up and num_channels_skip must have the "
                         f"same length, got {len(num_channels_down)}, {len(num_channels_up)}, "
                         f"{len(num_channels_skip)}")
    upsample_mode = _per_scale(upsample_mode, n_scales, "upsample_mode")
    downsample_mode = _per_scale(downsample_mode, n_scales, "downsample_mode")
    filter_size_down = _per_scale(filter_size_down, n_scales, "filter_size_down")
    filter_size_up = _per_scale(filter_size_up, n_scales, "filter_size_up")
    last_scale = n_scales - 1

    model = nn.Sequential()
    model_tmp = model
    input_depth = num_input_channels
    for i in range(n_scales):
        deeper = nn.Sequential()
        skip_branch = nn.Sequential()
        if num_channels_skip[i] != 0:
            _add(model_tmp, Concat(1, skip_branch, deeper))
        else:
            _add(model_tmp, deeper)
        _add(model_tmp, nn.BatchNorm2d(num_channels_skip[i] + (
            num_channels_up[i + 1] if i < last_scale else num_channels_down[i])))

        if num_channels_skip[i] != 0:
            _add(skip_branch, _conv(input_depth, num_channels_skip[i], filter_skip_size,
                                    bias=need_bias, pad=pad))
            _add(skip_branch, nn.BatchNorm2d(num_channels_skip[i]))
            _add(skip_branch, _act())

        _add(deeper, _conv(input_depth, num_channels_down[i], filter_size_down[i], 2,
                           bias=need_bias, pad=pad, downsample_mode=downsample_mode[i]))
        _add(deeper, nn.BatchNorm2d(num_channels_down[i]))
        _add(deeper, _act())
        _add(deeper, _conv(num_channels_down[i], num_channels_down[i], filter_size_down[i],
                           bias=need_bias, pad=pad))
        _add(deeper, nn.BatchNorm2d(num_channels_down[i]))
        _add(deeper, _act())

        deeper_main = nn.Sequential()
        if i == last_scale:
            k = num_channels_down[i]
        else:
            _add(deeper, deeper_main)
            k = num_channels_up[i + 1]
        _add(deeper, nn.Upsample(scale_factor=2, mode=upsample_mode[i]))

        _add(model_tmp, _conv(num_channels_skip[i] + k, num_channels_up[i], filter_size_up[i], 1,
                              bias=need_bias, pad=pad))
        _add(model_tmp, nn.BatchNorm2d(num_channels_up[i]))
        _add(model_tmp, _act())
        if need1x1_up:
            _add(model_tmp, _conv(num_channels_up[i], num_channels_up[i], 1, bias=need_bias,
                                  pad=pad))
            _add(model_tmp, nn.BatchNorm2d(num_channels_up[i]))
            _add(model_tmp, _act())

        input_depth = num_channels_down[i]
        model_tmp = deeper_main

    _add(model, _conv(num_channels_up[0], num_output_channels, 1, bias=need_bias, pad=pad))
    if need_sigmoid:
        _add(model, nn.Sigmoid())
    return model


def denoise_skip(input_depth: int = 32, out_channels: int = 3, width: int = 128,
                 scales: int = 5, skip_channels: int = 4) -> nn.Sequential:
    """The denoise recipe's generator (``get_net(..., 'skip', 'reflection', ...)``): bilinear.

    With the defaults: 2,217,831 parameters.
    """
    return skip(input_depth, out_channels, num_channels_down=[width] * scales,
                num_channels_up=[width] * scales, num_channels_skip=[skip_channels] * scales,
                upsample_mode="bilinear", need_sigmoid=True, need_bias=True, pad="reflection")


def _ordered_tensors(net: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Parameters in registration order, then BatchNorm running statistics in the same order."""
    tensors = [(name, p) for name, p in net.named_parameters()]
    tensors += [(name, b) for name, b in net.named_buffers()
                if name.endswith(("running_mean", "running_var"))]
    return tensors


def copy_weights(src: nn.Module, dst: nn.Module) -> None:
    """Copy parameters and BatchNorm running statistics from ``src`` into ``dst`` in place.

    The two networks must have the same parameters in the same registration order (module
    nesting and names may differ, e.g. :func:`skip` and ``dip.models.skip``); tensors are
    matched by position and their shapes are checked.

    Raises ValueError when the counts or any pair of shapes differ.
    """
    a, b = _ordered_tensors(src), _ordered_tensors(dst)
    if len(a) != len(b):
        raise ValueError(f"networks differ in their number of tensors: {len(a)} vs {len(b)}; "
                         "copy_weights needs the same architecture")
    for (na, ta), (nb, tb) in zip(a, b, strict=True):
        if ta.shape != tb.shape:
            raise ValueError(f"shape mismatch between {na} {tuple(ta.shape)} and "
                             f"{nb} {tuple(tb.shape)}: the networks' parameters are not in the "
                             "same order")
    with torch.no_grad():
        for (_, ta), (_, tb) in zip(a, b, strict=True):
            tb.copy_(ta)


# ----------------------------------------------------------------------------- the step
class OriginalStep:
    """One optimisation step exactly as the original's closure and optimiser loop run it.

    ``net``: generator; ``net_input`` (1, C, H, W) float32, the fixed code z; ``target``
    observation y; ``mask`` optional (1|N, 1|C, H, W) 0/1 float (loss ``mse(out*m, y*m)``);
    ``downsampler`` optional module applied to the output before the loss (super-resolution).
    ``step()`` returns the loss tensor (0-dim, float32) and leaves the output in ``self.out``.
    The reg noise comes from the global generator (``torch.manual_seed``), as in the original.
    """

    def __init__(self, net: nn.Module, net_input: torch.Tensor, target: torch.Tensor, *,
                 lr: float = 0.01, reg_noise_std: float = 1.0 / 30.0,
                 mask: torch.Tensor | None = None, downsampler: nn.Module | None = None,
                 parameters: Iterable[torch.nn.Parameter] | None = None) -> None:
        self.net = net
        self.net_input_saved = net_input.detach().clone()
        self.noise = net_input.detach().clone()
        self.net_input = self.net_input_saved
        self.target = target
        self.mask = mask
        self.downsampler = downsampler
        self.reg_noise_std = reg_noise_std
        self.mse = nn.MSELoss()
        params = list(net.parameters()) if parameters is None else list(parameters)
        self.optimizer = torch.optim.Adam(params, lr=lr, foreach=False, fused=False)
        self.out: torch.Tensor | None = None

    def closure(self) -> torch.Tensor:
        """Forward, loss and backward (the original's ``closure``)."""
        if self.reg_noise_std > 0:
            self.net_input = self.net_input_saved + (self.noise.normal_() * self.reg_noise_std)
        out = self.net(self.net_input)
        pred = out if self.downsampler is None else self.downsampler(out)
        if self.mask is not None:
            loss = self.mse(pred * self.mask, self.target * self.mask)
        else:
            loss = self.mse(pred, self.target)
        loss.backward()
        self.out = out
        return loss

    def step(self) -> torch.Tensor:
        """``optimizer.zero_grad()`` (zero-filling, as the original's torch did), closure, Adam."""
        self.optimizer.zero_grad(set_to_none=False)
        loss = self.closure()
        self.optimizer.step()
        return loss


# ----------------------------------------------------------------------------- test data
def _smooth(h: int, w: int, channels: int, g: torch.Generator, coarse: int = 4) -> torch.Tensor:
    base = torch.rand(channels, max(h // coarse, 2), max(w // coarse, 2), generator=g)
    return F.interpolate(base[None], size=(h, w), mode="bilinear", align_corners=False)[0]


def smooth_image(h: int, w: int, channels: int = 3, seed: int = 0, *, coarse: int = 4,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """A smooth random image (C, H, W) float32 in [0, 1]: random pixels on a grid ``coarse``
    times coarser (at least 2 x 2), bilinearly upsampled; the same for the same arguments.
    ``generator`` (CPU) replaces ``seed`` where the caller draws more from the same stream."""
    g = torch.Generator().manual_seed(seed) if generator is None else generator
    return _smooth(h, w, channels, g, coarse)


def noisy_smooth_image(size: int, seed: int = 0, sigma: float = 25.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean, noisy): :func:`smooth_image` (3, size, size) with ``coarse=8`` and that image
    with Gaussian noise of std ``sigma``/255 clipped to [0, 1], both drawn from one generator
    seeded with ``seed`` (the same pair for the same arguments)."""
    g = torch.Generator().manual_seed(seed)
    clean = smooth_image(size, size, 3, generator=g, coarse=8)
    return clean, (clean + torch.randn(clean.shape, generator=g) * sigma / 255).clamp(0, 1)


def block_mask(h: int, w: int) -> torch.Tensor:
    """(1, H, W) float32 mask: ones (known) with a missing block of zeros at rows
    [H/4, H/2) and columns [W/4, 3W/4)."""
    mask = torch.ones(1, h, w)
    mask[:, h // 4: h // 2, w // 4: 3 * w // 4] = 0
    return mask


def write_image(path: str | Path, h: int, w: int, layout: str = "RGB", bits: int = 8,
                seed: int = 0) -> torch.Tensor:
    """Write a :func:`smooth_image` (same seed, same pixels) to ``path`` with ``dip.images`` (format
    from the suffix) and return its pixels (C, H, W) float32; ``layout`` "L", "LA", "RGB" or
    "RGBA" (alpha random, drawn after the pixels), ``bits`` 8 or 16."""
    from dip import images as io

    g = torch.Generator().manual_seed(seed)
    image = _smooth(h, w, 1 if layout in ("L", "LA") else 3, g)
    alpha = torch.rand(1, h, w, generator=g) if "A" in layout else None
    io.write_image(path, image, io.ImageInfo(layout, bits, alpha=alpha))
    return image


def write_mask(path: str | Path, h: int, w: int) -> torch.Tensor:
    """Write :func:`block_mask` to ``path`` with ``dip.images`` and return it (1, H, W)."""
    from dip import images as io

    mask = block_mask(h, w)
    io.write_image(path, mask)
    return mask
