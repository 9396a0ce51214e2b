"""The original Deep Image Prior step, rebuilt in its original structure (the speed baseline).

This module is the baseline that the fast step is measured against and tested for equivalence
with. It rebuilds, from the published description of the original code (see RECIPES.md), the
structure that determines the original's cost:

* ``skip``: nested ``nn.Sequential`` modules; every convolution is
  ``ReflectionPad2d`` + ``Conv2d`` (padding 0) for ``pad="reflection"``; every normalisation is
  ``nn.BatchNorm2d``; every activation is ``nn.LeakyReLU(0.2, inplace=True)``; the skip
  connection is a :class:`Concat` that centre-crops mismatched inputs; upsampling is
  ``nn.Upsample``.
* :class:`Downsampler`: the Lanczos super-resolution operator as a dense C x C ``Conv2d`` whose
  weights are zero off the channel diagonal (2-D kernel, C times the necessary work), after
  ``ReplicationPad2d``.
* :class:`OriginalStep`: the original's closure and optimiser loop: ``optimizer.zero_grad()``
  zero-filling the gradients, reg noise drawn as
  ``net_input = net_input_saved + noise.normal_() * reg_noise_std`` (a new tensor every step),
  ``loss = mse(out * mask, y * mask)`` or ``mse(out, y)`` as a separate ``nn.MSELoss``, and
  ``torch.optim.Adam`` in its single-tensor (non-foreach, non-fused) form, NCHW float32.

Everything is float32 NCHW on the CPU unless the caller moves it.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

__all__ = [
    "Concat",
    "Downsampler",
    "OriginalStep",
    "copy_weights",
    "lanczos_kernel_2d",
    "skip",
]


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


def lanczos_kernel_2d(factor: int, kernel_type: str = "lanczos2", phase: float = 0.5) -> np.ndarray:
    """The original's dense 2-D Lanczos kernel, float64, normalised to sum 1.

    Shape (4*factor, 4*factor) for lanczos2 at phase 0.5 ((4*factor+1)^2 at phase 0), computed
    element by element as the original does.
    """
    if kernel_type == "lanczos2":
        support, width = 2, 4 * factor + 1
    elif kernel_type == "lanczos3":
        support, width = 3, 6 * factor + 1
    else:
        raise ValueError(f"kernel_type must be 'lanczos2' or 'lanczos3', got {kernel_type!r}")
    if phase not in (0, 0.5):
        raise ValueError(f"phase must be 0 or 0.5, got {phase!r}")
    size = width - 1 if phase == 0.5 else width
    kernel = np.zeros((size, size))
    center = (width + 1) / 2.0
    for i in range(1, size + 1):
        for j in range(1, size + 1):
            if phase == 0.5:
                di = abs(i + 0.5 - center) / factor
                dj = abs(j + 0.5 - center) / factor
            else:
                di = abs(i - center) / factor
                dj = abs(j - center) / factor
            val = 1.0
            if di != 0:
                val *= support * math.sin(math.pi * di) * math.sin(math.pi * di / support)
                val /= math.pi * math.pi * di * di
            if dj != 0:
                val *= support * math.sin(math.pi * dj) * math.sin(math.pi * dj / support)
                val /= math.pi * math.pi * dj * dj
            kernel[i - 1, j - 1] = val
    kernel /= kernel.sum()
    return kernel


class Downsampler(nn.Module):
    """The original's Lanczos downsampler: replicate padding, then a dense C x C conv.

    ``forward(x)``: x (N, n_planes, H, W) float -> (N, n_planes, H // factor, W // factor) with
    preserve_size. The conv weight is (n_planes, n_planes, K, K), zero off the channel diagonal;
    it stays a trainable parameter (as in the original, gradients are computed for it although
    no optimiser updates it).
    """

    def __init__(self, n_planes: int, factor: int, kernel_type: str = "lanczos2",
                 phase: float = 0.5, preserve_size: bool = True) -> None:
        super().__init__()
        kernel = lanczos_kernel_2d(factor, kernel_type, phase)
        self.kernel = kernel
        conv = nn.Conv2d(n_planes, n_planes, kernel_size=kernel.shape, stride=factor, padding=0)
        with torch.no_grad():
            conv.weight.zero_()
            conv.bias.zero_()
            k = torch.from_numpy(kernel).to(conv.weight.dtype)
            for i in range(n_planes):
                conv.weight[i, i] = k
        self.downsampler_ = conv
        self.preserve_size = preserve_size
        if preserve_size:
            k0 = kernel.shape[0]
            pad = (k0 - 1) // 2 if k0 % 2 == 1 else (k0 - factor) // 2
            self.padding = nn.ReplicationPad2d(pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.preserve_size:
            x = self.padding(x)
        return self.downsampler_(x)


def _conv(in_f: int, out_f: int, kernel_size: int, stride: int = 1, bias: bool = True,
          pad: str = "zero") -> nn.Sequential:
    """Original ``conv``: [ReflectionPad2d] + Conv2d (``downsample_mode='stride'`` only)."""
    to_pad = (kernel_size - 1) // 2
    layers = []
    if pad == "reflection":
        layers.append(nn.ReflectionPad2d(to_pad))
        to_pad = 0
    elif pad != "zero":
        raise ValueError(f"pad must be 'reflection' or 'zero', got {pad!r}")
    layers.append(nn.Conv2d(in_f, out_f, kernel_size, stride, padding=to_pad, bias=bias))
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
         upsample_mode="nearest", need1x1_up: bool = True) -> nn.Sequential:
    """The original ``skip`` generator, module for module (LeakyReLU, stride downsampling).

    Input (N, num_input_channels, H, W) float32 with H, W multiples of 2**scales; output
    (N, num_output_channels, H, W) in (0, 1) with the sigmoid.
    """
    n_scales = len(num_channels_down)
    if not (len(num_channels_up) == len(num_channels_skip) == n_scales):
        raise ValueError("num_channels_down, num_channels_up and num_channels_skip must have the "
                         f"same length, got {len(num_channels_down)}, {len(num_channels_up)}, "
                         f"{len(num_channels_skip)}")
    upsample_mode = _per_scale(upsample_mode, n_scales, "upsample_mode")
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
                           bias=need_bias, pad=pad))
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
    nesting and names may differ, e.g. the original-style ``skip`` and ``dip.models.skip``);
    tensors are matched by position and their shapes are checked.

    Raises ValueError when the counts or any pair of shapes differ.
    """
    a, b = _ordered_tensors(src), _ordered_tensors(dst)
    if len(a) != len(b):
        raise ValueError(f"networks differ in their number of tensors: {len(a)} vs {len(b)}; "
                         "copy_weights needs the same architecture")
    for (na, ta), (nb, tb) in zip(a, b):
        if ta.shape != tb.shape:
            raise ValueError(f"shape mismatch between {na} {tuple(ta.shape)} and "
                             f"{nb} {tuple(tb.shape)}: the networks' parameters are not in the "
                             "same order")
    with torch.no_grad():
        for (_, ta), (_, tb) in zip(a, b):
            tb.copy_(ta)


class OriginalStep:
    """One optimisation step exactly as the original's closure and optimiser loop run it.

    ``net``: generator; ``net_input`` (1, C, H, W) float32, the fixed code z; ``target``
    observation y; ``mask`` optional (1|N, 1|C, H, W) 0/1 float (loss ``mse(out*m, y*m)``);
    ``downsampler`` optional module applied to the output before the loss (super-resolution).
    ``step()`` returns the loss tensor (0-dim, float32) and leaves the output in ``self.out``.
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
