"""The Deep Image Prior "skip" generator (an encoder-decoder with skip connections).

Same keyword arguments, meanings, defaults and parameter count as ``models/skip.py`` of the
original Deep Image Prior code, built as a recursive module instead of nested Sequentials:

    level_i(x) = BN( cat[ skip_i(x), up( level_{i+1}( down_i(x) ) ) ] ) → conv → BN → act
                 [→ conv1×1 → BN → act]
    skip_i     = conv(filter_skip_size) → BN → act                 (absent when n_skip[i] == 0)
    down_i     = conv(stride 2 or stride 1 + downsampler) → BN → act → conv → BN → act
    head       = conv1×1(num_channels_up[0] → num_output_channels) [→ sigmoid]

Branches are concatenated directly (no centre cropping): inputs must have H and W multiples of
``size_multiple = 2**n_scales`` (dip.fit pads to it). The parameters are registered in the same
order as the original's, so :func:`load_original_state_dict` can load its state_dicts.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from dip.models.common import (
    DOWNSAMPLE_MODES,
    PADS,
    UPSAMPLE_MODES,
    BNAct,
    ChannelCat,
    Conv,
    call_args,
    check_act,
    check_choice,
    check_input,
    check_int,
    check_odd,
    min_multiple,
    per_scale,
    upsample,
)


class SkipLevel(nn.Module):
    """One scale of the skip network; holds the next (deeper) scale as ``inner``.

    Input (N, in_ch, H, W) → output (N, num_channels_up[i], H, W); H, W even.
    Submodule order (skip, down, inner, upsample, bn, up) is the original's parameter order.
    """

    def __init__(self, in_ch: int, i: int, a: dict) -> None:
        super().__init__()
        n_down, n_up, n_skip = (a["num_channels_down"][i], a["num_channels_up"][i],
                                a["num_channels_skip"][i])
        last = i == len(a["num_channels_down"]) - 1
        bias, pad, act_fun = a["need_bias"], a["pad"], a["act_fun"]
        fd, fu = a["filter_size_down"][i], a["filter_size_up"][i]

        self.skip = None
        if n_skip != 0:
            self.skip = nn.Sequential(
                Conv(in_ch, n_skip, a["filter_skip_size"], bias=bias, pad=pad),
                BNAct(n_skip, act_fun),
            )
        self.down = nn.Sequential(
            Conv(in_ch, n_down, fd, 2, bias=bias, pad=pad,
                 downsample_mode=a["downsample_mode"][i]),
            BNAct(n_down, act_fun),
            Conv(n_down, n_down, fd, bias=bias, pad=pad),
            BNAct(n_down, act_fun),
        )
        self.inner = None if last else SkipLevel(n_down, i + 1, a)
        self.upsample = upsample(a["upsample_mode"][i])
        k = n_down if last else a["num_channels_up"][i + 1]
        self.bn = BNAct(n_skip + k, "none")
        up = [Conv(n_skip + k, n_up, fu, bias=bias, pad=pad), BNAct(n_up, act_fun)]
        if a["need1x1_up"]:
            up += [Conv(n_up, n_up, 1, bias=bias, pad=pad), BNAct(n_up, act_fun)]
        self.up = nn.Sequential(*up)
        self.cat = ChannelCat()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.down(x)
        if self.inner is not None:
            y = self.inner(y)
        y = self.upsample(y)
        if self.skip is not None:
            y = self.cat([self.skip(x), y])
        return self.up(self.bn(y))


class Skip(nn.Module):
    """The skip generator; see :func:`skip` for the arguments.

    Attributes: ``size_multiple`` (2**n_scales), ``min_input_size``, ``input_scale`` (1),
    ``config`` (``dip.models.build(**config)`` rebuilds it).
    Forward: (N, num_input_channels, H, W) float → (N, num_output_channels, H, W), in [0, 1]
    with ``need_sigmoid``; H, W multiples of ``size_multiple`` and >= ``min_input_size``.
    """

    def __init__(self, a: dict) -> None:
        super().__init__()
        n = len(a["num_channels_down"])
        self.body = SkipLevel(a["num_input_channels"], 0, a)
        self.head = Conv(a["num_channels_up"][0], a["num_output_channels"], 1,
                         bias=a["need_bias"], pad=a["pad"])
        self.sigmoid = nn.Sigmoid() if a["need_sigmoid"] else nn.Identity()
        self.num_input_channels = a["num_input_channels"]
        self.size_multiple = 2 ** n
        self.input_scale = 1
        self.min_input_size = _min_input_size(a)
        self.config = {"name": "skip", "in_channels": a["num_input_channels"],
                       "out_channels": a["num_output_channels"],
                       **{k: v for k, v in a.items()
                          if k not in ("num_input_channels", "num_output_channels")}}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.num_input_channels, self.size_multiple, self.min_input_size, "skip")
        return self.sigmoid(self.head(self.body(x)))


def _min_input_size(a: dict) -> int:
    """Smallest input side: every reflection pad p needs a side > p at its scale, and the
    deepest BatchNorm needs >= 2 values (side >= 2 at batch size 1)."""
    n = len(a["num_channels_down"])
    refl = a["pad"] == "reflection"
    cons = [(2 ** n, 2)]
    for i in range(n):
        pads = [(a["filter_size_up"][i] - 1) // 2, (a["filter_size_down"][i] - 1) // 2]
        if a["num_channels_skip"][i]:
            pads.append((a["filter_skip_size"] - 1) // 2)
        if refl:
            cons.append((2 ** i, max(pads) + 1))
            cons.append((2 ** (i + 1), (a["filter_size_down"][i] - 1) // 2 + 1))
    return min_multiple(2 ** n, cons)


def skip(
    num_input_channels: int = 2,
    num_output_channels: int = 3,
    num_channels_down: list = [16, 32, 64, 128, 128],  # noqa: B006 (the original's defaults)
    num_channels_up: list = [16, 32, 64, 128, 128],  # noqa: B006
    num_channels_skip: list = [4, 4, 4, 4, 4],  # noqa: B006
    filter_size_down: int | list = 3,
    filter_size_up: int | list = 3,
    filter_skip_size: int = 1,
    need_sigmoid: bool = True,
    need_bias: bool = True,
    pad: str = "zero",
    upsample_mode: str | list = "nearest",
    downsample_mode: str | list = "stride",
    act_fun: Any = "LeakyReLU",
    need1x1_up: bool = True,
) -> Skip:
    """Build the skip generator (the original ``models.skip`` signature).

    Args:
        num_input_channels, num_output_channels: channels of the code z and of the image.
        num_channels_down, num_channels_up, num_channels_skip: one entry per scale (equal
            lengths; n_scales = their length). num_channels_skip[i] == 0 drops that skip branch.
        filter_size_down, filter_size_up: odd int, or one per scale. filter_skip_size: odd int.
        need_sigmoid: sigmoid on the output (range [0, 1]). need_bias: bias in every conv.
        pad: "zero" | "reflection". upsample_mode: "nearest" | "bilinear" (or one per scale).
        downsample_mode: "stride" | "avg" | "max" | "lanczos2" | "lanczos3" (or one per scale).
        act_fun: "LeakyReLU" (0.2) | "Swish" | "ELU" | "ReLU" | "none" | a module class.
        need1x1_up: extra 1×1 conv → BN → act after each decoder conv.

    Sizes: input (N, C, H, W) with H, W multiples of ``size_multiple = 2**n_scales`` and at
    least ``min_input_size``: 2·2**n_scales for the default 3×3 filters (64 px for 5 scales),
    more with larger reflection-padded filters. Output has the input's H, W.

    Standard configuration (32 → 3, [128]*5 down/up, [4]*5 skip, bilinear, reflection):
    2,217,831 parameters; text inpainting ([128]*5 skip too, nearest): 3,002,627.
    The Lanczos downsample modes use fixed (non-trainable) taps, so they add no parameters
    (the original trained a dense C×C copy of them).
    """
    a = call_args(skip, locals())
    n = len(a["num_channels_down"]) if isinstance(a["num_channels_down"], (list, tuple)) else -1
    for name in ("num_channels_down", "num_channels_up", "num_channels_skip"):
        if not isinstance(a[name], (list, tuple)) or len(a[name]) == 0:
            raise ValueError(f"{name} must be a non-empty list of ints, got {a[name]!r}")
        if len(a[name]) != n:
            raise ValueError(
                "num_channels_down, num_channels_up and num_channels_skip must have the same "
                f"length (one entry per scale), got {len(a['num_channels_down'])}, "
                f"{len(a['num_channels_up'])}, {len(a['num_channels_skip'])}"
            )
        for j, c in enumerate(a[name]):
            check_int(f"{name}[{j}]", c, 0 if name == "num_channels_skip" else 1)
    check_int("num_input_channels", a["num_input_channels"])
    check_int("num_output_channels", a["num_output_channels"])
    a["filter_size_down"] = [check_odd(f"filter_size_down[{j}]", v) for j, v in
                             enumerate(per_scale("filter_size_down", filter_size_down, n))]
    a["filter_size_up"] = [check_odd(f"filter_size_up[{j}]", v) for j, v in
                           enumerate(per_scale("filter_size_up", filter_size_up, n))]
    check_odd("filter_skip_size", filter_skip_size)
    a["upsample_mode"] = [check_choice(f"upsample_mode[{j}]", v, UPSAMPLE_MODES) for j, v in
                          enumerate(per_scale("upsample_mode", upsample_mode, n))]
    a["downsample_mode"] = [check_choice(f"downsample_mode[{j}]", v, DOWNSAMPLE_MODES)
                            for j, v in
                            enumerate(per_scale("downsample_mode", downsample_mode, n))]
    check_choice("pad", pad, PADS)
    check_act(act_fun)
    a["need_sigmoid"], a["need_bias"], a["need1x1_up"] = (
        bool(need_sigmoid), bool(need_bias), bool(need1x1_up))
    return Skip(a)


def load_original_state_dict(net: Skip, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load a state_dict saved from the original code's skip network into ``net``.

    The networks register their parameters and buffers in the same order, so entries are
    matched by position (checked by name suffix and shape). The original's trainable Lanczos
    downsampler weights ("downsampler_" entries) are dropped: here those taps are fixed.
    State_dicts without ``num_batches_tracked`` (old torch versions) are accepted.
    Raises ValueError when the two structures differ.
    """
    if not isinstance(net, Skip):
        raise TypeError(f"net must be a skip network from dip.models.skip, got {type(net)}")
    src = [(k, v) for k, v in state_dict.items() if "downsampler_" not in k]
    has_nbt = any(k.endswith("num_batches_tracked") for k, _ in src)
    own = net.state_dict()
    fixed = tuple(f"{name}.down." for name, m in net.named_modules()
                  if isinstance(m, Conv) and m.down is not None)
    dst = [k for k in own if (has_nbt or not k.endswith("num_batches_tracked"))
           and not k.startswith(fixed)]
    if len(src) != len(dst):
        raise ValueError(
            f"state_dict has {len(src)} entries but this network expects {len(dst)}: "
            "build the network with the same arguments as the original"
        )
    mapped = {}
    for (ks, v), kd in zip(src, dst, strict=True):
        if ks.rsplit(".", 1)[-1] != kd.rsplit(".", 1)[-1] or tuple(v.shape) != tuple(
                own[kd].shape):
            raise ValueError(
                f"entry {ks!r} {tuple(v.shape)} does not match {kd!r} {tuple(own[kd].shape)}: "
                "build the network with the same arguments as the original"
            )
        mapped[kd] = v
    missing = [k for k in own if k not in mapped]
    net.load_state_dict({**{k: own[k] for k in missing}, **mapped})


__all__ = ["skip", "Skip", "SkipLevel", "load_original_state_dict"]
