"""ResNet generator (full resolution throughout), after ``models/resnet.py`` of the original
Deep Image Prior code.

    conv3×3(in → C) → act → num_blocks × [x + (conv → BN → act → conv → BN)(x)]
    → conv3×3(C → C) → BN → conv3×3(C → out) [→ sigmoid]

Differences from the original: ``need_sigmoid`` is honoured (the original always applied a
sigmoid), every 3×3 convolution uses ``pad`` (the original zero-padded the inner ones), and
``norm_layer`` may be given by name.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dip.models.common import PADS, BNAct, Conv, act, call_args, check_act, check_choice, check_input, check_int

NORMS = ("batch", "instance")


def _norm(norm: str, channels: int, act_fun: Any) -> nn.Module:
    if norm == "batch":
        return BNAct(channels, act_fun)
    return nn.Sequential(nn.InstanceNorm2d(channels, affine=True), act(act_fun))


class ResidualBlock(nn.Module):
    """x + (conv → norm → act → conv → norm)(x), or without ``x +`` if not residual.
    (N, C, H, W) → (N, C, H, W)."""

    def __init__(self, channels: int, norm: str, act_fun: Any, pad: str,
                 residual: bool) -> None:
        super().__init__()
        self.body = nn.Sequential(
            Conv(channels, channels, 3, bias=False, pad=pad),
            _norm(norm, channels, act_fun),
            Conv(channels, channels, 3, bias=False, pad=pad),
            _norm(norm, channels, "none"),
        )
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class ResNet(nn.Module):
    """The ResNet generator; see :func:`resnet`.

    Attributes ``size_multiple`` (1), ``min_input_size`` (2), ``input_scale`` (1), ``config``.
    Forward: (N, num_input_channels, H, W) → (N, num_output_channels, H, W).
    """

    def __init__(self, a: dict) -> None:
        super().__init__()
        c, pad, norm = a["num_channels"], a["pad"], a["norm_layer"]
        self.start = nn.Sequential(Conv(a["num_input_channels"], c, 3, pad=pad),
                                   act(a["act_fun"]))
        self.blocks = nn.Sequential(*[
            ResidualBlock(c, norm, a["act_fun"], pad, a["need_residual"])
            for _ in range(a["num_blocks"])
        ])
        self.end = nn.Sequential(Conv(c, c, 3, pad=pad), _norm(norm, c, "none"),
                                 Conv(c, a["num_output_channels"], 3, pad=pad))
        self.sigmoid = nn.Sigmoid() if a["need_sigmoid"] else nn.Identity()
        self.num_input_channels = a["num_input_channels"]
        self.size_multiple = 1
        self.input_scale = 1
        self.min_input_size = 2  # reflection padding by 1 and BatchNorm both need side >= 2
        self.config = {"name": "resnet", "in_channels": a["num_input_channels"],
                       "out_channels": a["num_output_channels"],
                       **{k: v for k, v in a.items()
                          if k not in ("num_input_channels", "num_output_channels")}}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.num_input_channels, self.size_multiple, self.min_input_size,
                    "resnet")
        return self.sigmoid(self.end(self.blocks(self.start(x))))


def resnet(
    num_input_channels: int = 32,
    num_output_channels: int = 3,
    num_blocks: int = 10,
    num_channels: int = 16,
    need_residual: bool = True,
    act_fun: Any = "LeakyReLU",
    need_sigmoid: bool = True,
    norm_layer: Any = "batch",
    pad: str = "reflection",
) -> ResNet:
    """Build the ResNet generator (the original ``ResNet`` constructor arguments).

    Args:
        num_blocks: residual blocks; num_channels: width of every layer.
        need_residual: add the skip connection in each block.
        act_fun: see :func:`dip.models.common.act`. need_sigmoid: output in [0, 1].
        norm_layer: "batch" (= nn.BatchNorm2d) | "instance" (= nn.InstanceNorm2d, affine).
        pad: "zero" | "reflection".

    Sizes: any H, W >= ``min_input_size`` = 2. 54,131 parameters with the defaults.
    """
    a = call_args(resnet, locals())
    check_int("num_input_channels", num_input_channels)
    check_int("num_output_channels", num_output_channels)
    check_int("num_blocks", num_blocks, 0)
    check_int("num_channels", num_channels)
    check_act(act_fun)
    check_choice("pad", pad, PADS)
    if norm_layer is nn.BatchNorm2d:
        norm_layer = "batch"
    elif norm_layer is nn.InstanceNorm2d:
        norm_layer = "instance"
    a["norm_layer"] = check_choice("norm_layer", norm_layer, NORMS)
    a["need_residual"], a["need_sigmoid"] = bool(need_residual), bool(need_sigmoid)
    return ResNet(a)


__all__ = ["resnet", "ResNet"]
