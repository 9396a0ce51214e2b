"""Decoder generator in the style of the Deep Decoder / ConvDecoder (Heckel & Hand 2019;
Darestani & Heckel 2021): a small code is enlarged by ``n_upsamples`` ×2 stages.

    conv(in → c0) → BN → act
    n_upsamples × [ upsample ×2 → conv(c_{j-1} → c_j) → BN → act ]
    conv1×1(c_n → out) [→ sigmoid]

The input code is ``input_scale = 2**n_upsamples`` times smaller than the image.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dip.models.common import (
    PADS,
    UPSAMPLE_MODES,
    BNAct,
    Conv,
    call_args,
    check_act,
    check_choice,
    check_input,
    check_int,
    check_odd,
    upsample,
)


class Decoder(nn.Module):
    """The decoder generator; see :func:`decoder`.

    Attributes ``input_scale`` (2**n_upsamples), ``size_multiple`` (1: any code size),
    ``min_input_size`` and ``config``. Forward: (N, num_input_channels, h, w) →
    (N, num_output_channels, h·input_scale, w·input_scale).
    """

    def __init__(self, a: dict) -> None:
        super().__init__()
        ch, k, bias, pad, act_fun = (a["num_channels"], a["filter_size"], a["need_bias"],
                                     a["pad"], a["act_fun"])
        n = a["n_upsamples"]
        self.start = nn.Sequential(Conv(a["num_input_channels"], ch[0], k, bias=bias, pad=pad),
                                   BNAct(ch[0], act_fun))
        self.stages = nn.Sequential(*[
            nn.Sequential(upsample(a["upsample_mode"][j]),
                          Conv(ch[j], ch[j + 1], k, bias=bias, pad=pad),
                          BNAct(ch[j + 1], act_fun))
            for j in range(n)
        ])
        self.head = Conv(ch[-1], a["num_output_channels"], 1, bias=bias, pad=pad)
        self.sigmoid = nn.Sigmoid() if a["need_sigmoid"] else nn.Identity()
        self.num_input_channels = a["num_input_channels"]
        self.size_multiple = 1
        self.input_scale = 2 ** n
        # reflection padding at the code's resolution needs side > (k-1)/2; BatchNorm needs
        # >= 2 values (side >= 2 at batch size 1).
        self.min_input_size = max(2, (k - 1) // 2 + 1) if pad == "reflection" else 2
        self.config = {"name": "decoder", "in_channels": a["num_input_channels"],
                       "out_channels": a["num_output_channels"],
                       **{key: v for key, v in a.items()
                          if key not in ("num_input_channels", "num_output_channels")}}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.num_input_channels, self.size_multiple, self.min_input_size,
                    "decoder")
        return self.sigmoid(self.head(self.stages(self.start(x))))


def decoder(
    num_input_channels: int = 32,
    num_output_channels: int = 3,
    num_channels: int | list = 128,
    n_upsamples: int = 4,
    filter_size: int = 3,
    need_sigmoid: bool = True,
    need_bias: bool = True,
    pad: str = "reflection",
    upsample_mode: str | list = "bilinear",
    act_fun: Any = "LeakyReLU",
) -> Decoder:
    """Build the decoder generator.

    Args:
        num_channels: int, or a list of n_upsamples + 1 widths (start, then each stage).
        n_upsamples: number of ×2 stages (>= 0); input_scale = 2**n_upsamples.
        filter_size: odd conv size. pad: "zero" | "reflection".
        upsample_mode: "nearest" | "bilinear", or one per stage.
        act_fun: see :func:`dip.models.common.act`. need_sigmoid: output in [0, 1].

    Sizes: the code (N, C, h, w) may have any h, w >= ``min_input_size`` (2 for 3×3 filters);
    the image is (h·2**n_upsamples, w·2**n_upsamples).
    """
    a = call_args(decoder, locals())
    check_int("num_input_channels", num_input_channels)
    check_int("num_output_channels", num_output_channels)
    n = check_int("n_upsamples", n_upsamples, 0)
    if isinstance(num_channels, (list, tuple)):
        if len(num_channels) != n + 1:
            raise ValueError(
                f"num_channels has {len(num_channels)} entries; give one int or a list of "
                f"n_upsamples + 1 = {n + 1} widths"
            )
        chans = list(num_channels)
    else:
        chans = [num_channels] * (n + 1)
    for j, c in enumerate(chans):
        check_int(f"num_channels[{j}]", c)
    a["num_channels"] = chans
    check_odd("filter_size", filter_size)
    check_choice("pad", pad, PADS)
    if isinstance(upsample_mode, (list, tuple)):
        if len(upsample_mode) != n:
            raise ValueError(
                f"upsample_mode has {len(upsample_mode)} entries; give one mode or a list of "
                f"n_upsamples = {n}"
            )
        modes = list(upsample_mode)
    else:
        modes = [upsample_mode] * n
    a["upsample_mode"] = [check_choice(f"upsample_mode[{j}]", m, UPSAMPLE_MODES)
                          for j, m in enumerate(modes)]
    check_act(act_fun)
    a["need_sigmoid"], a["need_bias"] = bool(need_sigmoid), bool(need_bias)
    return Decoder(a)


__all__ = ["decoder", "Decoder"]
