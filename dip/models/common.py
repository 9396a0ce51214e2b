"""Building blocks shared by the generators.

Every block works on float tensors of shape (N, C, H, W) (any float dtype, any memory format).

- :func:`act` — activation factory (the names of the original Deep Image Prior code).
- :class:`Conv` — optional padding module, convolution, optional downsampler.
- :func:`downsampler` and :func:`upsample` — the resampling modules of one scale.
- :class:`BatchNormAct` — ``nn.BatchNorm2d`` followed by an activation, standard torch ops only.
- :class:`BNAct` — the same with a fused native path (``dip.ops.bn_leaky_relu``) for LeakyReLU.
- :class:`StandardDownsample` — a depthwise separable downsampler made of standard torch ops.
- :class:`ChannelCat` — concatenation on the channel axis, per member of a packed generator.
- :func:`check_input` — the input size checks every generator runs in ``forward``.
"""
from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

PADS = ("zero", "reflection")
UPSAMPLE_MODES = ("nearest", "bilinear")
DOWNSAMPLE_MODES = ("stride", "avg", "max", "lanczos2", "lanczos3")
ACTIVATIONS = ("LeakyReLU", "Swish", "ELU", "ReLU", "none")

LEAKY_SLOPE = 0.2


# --------------------------------------------------------------------------- argument checks
def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise ValueError naming the options."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def check_int(name: str, value: Any, minimum: int = 1) -> int:
    """Return ``value`` as int if it is an integer >= ``minimum``, else raise ValueError/TypeError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_odd(name: str, value: Any) -> int:
    """Return a positive odd int filter size, else raise (even sizes would shift the output)."""
    value = check_int(name, value, 1)
    if value % 2 == 0:
        raise ValueError(
            f"{name} must be odd so that every convolution keeps the spatial size, got {value}"
        )
    return value


def per_scale(name: str, value: Any, n: int) -> list:
    """Broadcast a scalar (or str) to a list of ``n`` entries; check a list/tuple has length ``n``."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(
                f"{name} has {len(value)} entries but the network has {n} scales "
                f"(the length of num_channels_down); give one value or a list of {n}"
            )
        return list(value)
    return [value] * n


# --------------------------------------------------------------------------- activations
def act(act_fun: Any = "LeakyReLU") -> nn.Module:
    """Make a fresh activation module.

    ``act_fun``: "LeakyReLU" (slope 0.2, in place), "Swish" (x·sigmoid(x)), "ELU", "ReLU",
    "none" (identity); or an ``nn.Module`` subclass / zero-argument callable returning a module
    (called once per use, as in the original code); or an ``nn.Module`` instance (deep-copied
    per use).
    """
    if isinstance(act_fun, str):
        check_choice("act_fun", act_fun, ACTIVATIONS)
        if act_fun == "LeakyReLU":
            return nn.LeakyReLU(LEAKY_SLOPE, inplace=True)
        if act_fun == "Swish":
            return nn.SiLU()
        if act_fun == "ELU":
            return nn.ELU()
        if act_fun == "ReLU":
            return nn.ReLU(inplace=True)
        return nn.Identity()
    if isinstance(act_fun, nn.Module):
        return copy.deepcopy(act_fun)
    if callable(act_fun):
        module = act_fun()
        if not isinstance(module, nn.Module):
            raise TypeError(
                f"act_fun callable must return an nn.Module, got {type(module).__name__}"
            )
        return module
    raise TypeError(
        f"act_fun must be one of {list(ACTIVATIONS)}, an nn.Module class or instance, "
        f"got {act_fun!r}"
    )


def check_act(act_fun: Any) -> Any:
    """Validate an activation spec early (so a bad name fails at construction with its name)."""
    act(act_fun)
    return act_fun


# --------------------------------------------------------------------------- resampling
def upsample(mode: str, scale: int = 2) -> nn.Module:
    """×``scale`` upsampling: "nearest" or "bilinear" (align_corners=False; ×2 is
    :class:`Bilinear2x`, which has a native kernel)."""
    check_choice("upsample_mode", mode, UPSAMPLE_MODES)
    if mode == "bilinear":
        if scale == 2:
            return Bilinear2x()
        return nn.Upsample(scale_factor=scale, mode="bilinear", align_corners=False)
    return nn.Upsample(scale_factor=scale, mode="nearest")


class Bilinear2x(nn.Upsample):
    """``nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)`` that runs
    ``dip.ops.upsample_bilinear2x`` where its native kernel pays off (the CPU: with a
    channel slice of a channels_last gradient, as the skip generator's concatenation passes
    back, fwd + bwd of 128 channels at 64² → 128² took 3.5-6.6 ms against torch's 35-48 ms,
    one thread, fp32 and bf16). Input (N, C, H, W) → (N, C, 2H, 2W), same dtype and layout.
    ``dip.models.to_standard`` turns it into the ``nn.Upsample`` it equals; ``native=False``
    (or setting the attribute) forces torch's path, whose float rounding the native kernel
    does not copy bit for bit (it blends rows, then columns: within ~2 ulp)."""

    def __init__(self, native: bool = True) -> None:
        super().__init__(scale_factor=2, mode="bilinear", align_corners=False)
        self.native = bool(native)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        op = _native_op("upsample_bilinear2x", x.device) if self.native else None
        if op is not None and x.dim() == 4:
            return op(x)
        return super().forward(x)

    def standard(self) -> nn.Upsample:
        return nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)


def downsampler(mode: str, factor: int = 2) -> nn.Module | None:
    """The module that follows a stride-1 convolution to downsample by ``factor``.

    "stride" → None (the convolution itself has the stride); "avg"/"max" → 2-D pooling;
    "lanczos2"/"lanczos3" → ``dip.physics.Downsample`` (depthwise, phase 0.5, size preserving,
    fixed taps: unlike the original, the taps are buffers, not trainable parameters).
    """
    check_choice("downsample_mode", mode, DOWNSAMPLE_MODES)
    if mode == "stride":
        return None
    if mode == "avg":
        return nn.AvgPool2d(factor, factor)
    if mode == "max":
        return nn.MaxPool2d(factor, factor)
    from dip.physics import Downsample  # lazy: physics imports ops, models must import cheaply

    return Downsample(factor=factor, kernel=mode, phase=0.5, preserve_size=True)


class Conv(nn.Module):
    """Padding, convolution, then an optional downsampler (the original's ``conv`` block).

    pad "zero": the convolution's own zero padding; "reflection": ``ReflectionPad2d`` then an
    unpadded convolution. With ``stride > 1`` and ``downsample_mode != "stride"`` the convolution
    runs at stride 1 and :func:`downsampler` reduces the size by ``stride``.
    Input (N, in_f, H, W) → output (N, out_f, H / stride, W / stride) for odd ``kernel_size``
    and H, W multiples of ``stride``.
    """

    def __init__(
        self,
        in_f: int,
        out_f: int,
        kernel_size: int,
        stride: int = 1,
        bias: bool = True,
        pad: str = "zero",
        downsample_mode: str = "stride",
    ) -> None:
        super().__init__()
        check_odd("kernel_size", kernel_size)
        check_choice("pad", pad, PADS)
        check_choice("downsample_mode", downsample_mode, DOWNSAMPLE_MODES)
        down = None
        if stride != 1 and downsample_mode != "stride":
            down = downsampler(downsample_mode, stride)
            stride = 1
        to_pad = (kernel_size - 1) // 2
        self.pad = nn.ReflectionPad2d(to_pad) if pad == "reflection" and to_pad > 0 else None
        self.conv = nn.Conv2d(
            in_f, out_f, kernel_size, stride,
            padding=0 if pad == "reflection" else to_pad, bias=bias,
        )
        self.down = down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad is not None:
            x = self.pad(x)
        x = self.conv(x)
        if self.down is not None:
            x = self.down(x)
        return x


# --------------------------------------------------------------------------- BatchNorm + act
class BatchNormAct(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` followed by an activation, using standard torch ops only.

    Its state_dict keys are exactly those of ``nn.BatchNorm2d`` (weight, bias, running_mean,
    running_var, num_batches_tracked) for parameter-free activations. ``act_fun`` is an
    activation spec for :func:`act` (default "none": plain BatchNorm) or an ``nn.Module`` used
    as is (stored as ``self.act``). Input (N, C, H, W) → output of the same shape and dtype.
    """

    def __init__(self, num_features: int, act_fun: Any = "none", **bn_kwargs: Any) -> None:
        super().__init__(num_features, **bn_kwargs)
        self.act = act_fun if isinstance(act_fun, nn.Module) else act(act_fun)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self._batch_norm(x))

    def _batch_norm(self, x: torch.Tensor) -> torch.Tensor:
        # nn.BatchNorm2d's forward, written out so that TorchScript can compile it (no super()).
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        use_batch = self.training or (self.running_mean is None and self.running_var is None)
        keep = not self.training or self.track_running_stats
        return F.batch_norm(x, self.running_mean if keep else None,
                            self.running_var if keep else None, self.weight, self.bias,
                            use_batch, factor, self.eps)

    def _bn_kwargs(self) -> dict:
        return dict(eps=self.eps, momentum=self.momentum, affine=self.affine,
                    track_running_stats=self.track_running_stats)


def _native_op(name: str, device: torch.device) -> Callable | None:
    """``dip.ops.<name>`` when its native kernel is loaded and pays off on ``device``
    (``dip.ops.native_pays_off``), else None."""
    try:
        from dip import ops
    except ModuleNotFoundError as err:
        if err.name in ("dip.ops", "dip"):
            return None
        raise
    if not ops.native_pays_off(name, device):
        return None
    return getattr(ops, name)


class BNAct(BatchNormAct):
    """BatchNorm2d + activation with a fused native path.

    In training mode, with a LeakyReLU, ReLU (slope 0) or no activation (``nn.Identity``: slope
    1, plain BatchNorm), affine weights, running statistics, matching dtypes (or a bfloat16
    input with float32 parameters, which the CPU kernels read as they are) and the native kernel
    loaded and faster on the input's device (``dip.ops.native_pays_off``: the CPU), the forward
    pass is one call of ``dip.ops.bn_leaky_relu`` (batch statistics, running stats and
    num_batches_tracked updated as ``nn.BatchNorm2d`` does); otherwise ``nn.BatchNorm2d`` then
    the activation.
    ``fused=False`` forces the standard path. State_dict keys equal ``nn.BatchNorm2d``'s.
    """

    def __init__(self, num_features: int, act_fun: Any = "none", *, fused: bool = True,
                 **bn_kwargs: Any) -> None:
        super().__init__(num_features, act_fun, **bn_kwargs)
        self.fused = bool(fused)

    def _fused_slope(self, x: torch.Tensor) -> float | None:
        """The LeakyReLU slope the fused op computes this module on ``x`` with (its
        negative_slope, 0 for ReLU, 1 for none: ``nn.Identity``), or None where the op does not
        apply (an other activation, eval mode, no affine parameters or running statistics,
        dtypes the kernels do not pair)."""
        if not (self.fused and self.training and self.affine and self.track_running_stats
                and self.momentum is not None and x.dim() == 4
                and (x.dtype == self.weight.dtype
                     or (x.dtype == torch.bfloat16 and self.weight.dtype == torch.float32))):
            return None
        if isinstance(self.act, nn.LeakyReLU):
            return float(self.act.negative_slope)
        if isinstance(self.act, nn.ReLU):
            return 0.0
        if isinstance(self.act, nn.Identity):
            return 1.0
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        slope = self._fused_slope(x)
        op = _native_op("bn_leaky_relu", x.device) if slope is not None else None
        if op is not None and slope is not None:
            self.num_batches_tracked.add_(1)
            # a bf16 x (the bf16 step) with the fp32 parameters: the CPU kernels read them as
            # they are (no cast per step; gradients in fp32), other devices' take them cast to
            # bf16; statistics stay fp32
            weight: torch.Tensor = self.weight
            bias: torch.Tensor = self.bias
            if x.device.type != "cpu":
                weight, bias = weight.to(x.dtype), bias.to(x.dtype)
            return op(x, weight, bias, self.running_mean, self.running_var,
                      momentum=self.momentum, eps=self.eps, negative_slope=slope)
        return self.act(self._batch_norm(x))

    def standard(self) -> BatchNormAct:
        """An equivalent :class:`BatchNormAct` holding copies of this module's state."""
        ref = self.running_mean if self.running_mean is not None else self.weight
        new = BatchNormAct(self.num_features, copy.deepcopy(self.act), **self._bn_kwargs(),
                           device=ref.device if ref is not None else None,
                           dtype=ref.dtype if ref is not None else None)
        new.load_state_dict(self.state_dict())
        for (_, p_new), (_, p_old) in zip(new.named_parameters(), self.named_parameters(), strict=True):
            p_new.requires_grad_(p_old.requires_grad)
        new.train(self.training)
        return new


# --------------------------------------------------------------------------- standard downsampler
class StandardDownsample(nn.Module):
    """Depthwise separable downsampling with standard torch ops (for export).

    ``taps`` (K,) 1-D filter applied on rows then columns with stride ``factor``; ``padding``
    "replicate" | "reflect" | "zero" by p = (K-1)//2 for odd K else (K-factor)//2 on every
    side, or "none". (N, C, H, W) → (N, C, (H+2p-K)//factor+1, (W+2p-K)//factor+1).
    """

    if TYPE_CHECKING:  # the buffer's type, for the type checker only (TorchScript reads class annotations)
        taps: torch.Tensor  # (K,)

    def __init__(self, taps: torch.Tensor, factor: int, padding: str = "replicate",
                 persistent: bool = True) -> None:
        super().__init__()
        check_choice("padding", padding, ("replicate", "reflect", "zero", "none"))
        self.factor = check_int("factor", factor, 1)
        self.padding = padding
        self.register_buffer("taps", torch.as_tensor(taps).detach().clone(),
                             persistent=persistent)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.taps.numel()
        f = self.factor
        if self.padding != "none":
            p = (k - 1) // 2 if k % 2 == 1 else (k - f) // 2
            mode = "constant" if self.padding == "zero" else self.padding
            x = F.pad(x, (p, p, p, p), mode=mode)
        c = x.shape[1]
        taps = self.taps.to(dtype=x.dtype)
        x = F.conv2d(x, taps.view(1, 1, k, 1).expand(c, 1, k, 1), stride=(f, 1), groups=c)
        return F.conv2d(x, taps.view(1, 1, 1, k).expand(c, 1, 1, k), stride=(1, f), groups=c)


# --------------------------------------------------------------------------- concatenation
class ChannelCat(nn.Module):
    """Concatenation of feature maps on the channel axis, per member of a packed generator.

    ``members`` = 1 (every plain generator): ``torch.cat(xs, dim=1)``. ``members`` = K (a
    packed generator, see :mod:`dip.models.packed`): each input (N, K·C_i, H, W) holds K
    members' channels side by side (member k owns [k·C_i, (k+1)·C_i)); the output
    (N, K·ΣC_i, H, W) holds member k's [x_0 channels, x_1 channels, ...] in block k. A
    channels_last first input gives a channels_last output. No parameters or buffers.
    """

    def __init__(self, members: int = 1) -> None:
        super().__init__()
        self.members = check_int("members", members)

    def extra_repr(self) -> str:
        return f"members={self.members}"

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        if self.members == 1:
            return torch.cat(xs, dim=1)
        return cat_members(xs, self.members)


def cat_members(xs: list[torch.Tensor], members: int) -> torch.Tensor:
    """Per-member channel concatenation of (N, members·C_i, H, W) tensors (see
    :class:`ChannelCat`); the layout (NCHW or channels_last) follows ``xs[0]``."""
    n, h, w = xs[0].shape[0], xs[0].shape[2], xs[0].shape[3]
    first = xs[0]
    if first.is_contiguous(memory_format=torch.channels_last) and not first.is_contiguous():
        # NHWC storage: member blocks are contiguous runs of the last axis
        parts = [x.permute(0, 2, 3, 1).reshape(n, h, w, members, -1) for x in xs]
        return torch.cat(parts, dim=4).reshape(n, h, w, -1).permute(0, 3, 1, 2)
    parts = [x.reshape(n, members, -1, h, w) for x in xs]
    return torch.cat(parts, dim=2).reshape(n, -1, h, w)


# --------------------------------------------------------------------------- input checks
def check_input(x: torch.Tensor, channels: int, multiple: int, minimum: int, net: str) -> None:
    """Raise ValueError unless ``x`` is (N, channels, H, W) with H, W multiples of ``multiple``
    and at least ``minimum``."""
    if x.dim() != 4:
        raise ValueError(f"{net} expects a 4-D input (N, C, H, W), got shape {list(x.shape)}")
    if x.shape[1] != channels:
        raise ValueError(
            f"{net} expects {channels} input channels, got shape {list(x.shape)}"
        )
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if h % multiple != 0 or w % multiple != 0:
        raise ValueError(
            f"{net} input size {h}x{w} is not a multiple of size_multiple={multiple}; "
            f"pad the input to multiples of {multiple} (dip.fit does this) and crop the output"
        )
    if h < minimum or w < minimum:
        raise ValueError(
            f"{net} input size {h}x{w} is below min_input_size={minimum}; pad the input to at "
            f"least {minimum}x{minimum} (dip.fit does this) and crop the output"
        )


def min_multiple(multiple: int, constraints: Sequence[tuple[int, int]]) -> int:
    """Smallest k·multiple (k >= 1) such that for every (divisor, need) in ``constraints``
    k·multiple // divisor >= need. Used to derive ``min_input_size`` from the layers'
    reflection-padding and BatchNorm needs."""
    k = 1
    for divisor, need in constraints:
        k = max(k, math.ceil(need * divisor / multiple))
    return k * multiple


def call_args(func: Callable, values: dict) -> dict:
    """The full argument dict of ``func`` (defaults filled in) from ``values`` (e.g. locals())."""
    out = {}
    for name in inspect.signature(func).parameters:
        v = values[name]
        out[name] = list(v) if isinstance(v, (list, tuple)) else v
    return out
