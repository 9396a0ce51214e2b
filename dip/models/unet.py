"""U-Net generator, after ``models/unet.py`` of the original Deep Image Prior code.

Encoder: ``start`` (two 3×3 conv → norm → ReLU), then 4 + more_layers ``down`` stages
(max-pool ×½, two conv → norm → ReLU). Decoder: per stage an upsampling (transposed conv 4×4
stride 2, or nearest/bilinear ×2 followed by a 3×3 conv), concatenation with the encoder
feature of the same scale, two 3×3 conv → ReLU (no norm, as in the original). Head: 1×1 conv
[→ sigmoid]. Channels: [64, 128, 256, 512, 1024] // feature_scale.

Differences from the original: no centre cropping (inputs must be multiples of
``size_multiple``), ``more_layers > 1`` works, and ``norm_layer`` may be given by name.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dip.models.common import (
    PADS,
    BNAct,
    ChannelCat,
    Conv,
    call_args,
    check_choice,
    check_input,
    check_int,
    min_multiple,
)

UNET_UPSAMPLE = ("deconv", "nearest", "bilinear")
NORMS = ("instance", "batch", "none")


def _norm_name(norm_layer: Any) -> str:
    if norm_layer is None:
        return "none"
    if norm_layer is nn.InstanceNorm2d:
        return "instance"
    if norm_layer is nn.BatchNorm2d:
        return "batch"
    if isinstance(norm_layer, str) and norm_layer in NORMS:
        return norm_layer
    raise ValueError(
        f"norm_layer must be one of {list(NORMS)}, nn.InstanceNorm2d, nn.BatchNorm2d or None, "
        f"got {norm_layer!r}"
    )


def _conv_norm_relu(in_f: int, out_f: int, norm: str, bias: bool, pad: str) -> nn.Sequential:
    conv = Conv(in_f, out_f, 3, bias=bias, pad=pad)
    if norm == "batch":
        return nn.Sequential(conv, BNAct(out_f, "ReLU"))
    if norm == "instance":
        return nn.Sequential(conv, nn.InstanceNorm2d(out_f), nn.ReLU(inplace=True))
    return nn.Sequential(conv, nn.ReLU(inplace=True))


class UNetConv2(nn.Module):
    """Two 3×3 conv → norm → ReLU. (N, in_f, H, W) → (N, out_f, H, W)."""

    def __init__(self, in_f: int, out_f: int, norm: str, bias: bool, pad: str) -> None:
        super().__init__()
        self.conv1 = _conv_norm_relu(in_f, out_f, norm, bias, pad)
        self.conv2 = _conv_norm_relu(out_f, out_f, norm, bias, pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class UNetDown(nn.Module):
    """Max-pool ×½ then :class:`UNetConv2`. (N, in_f, H, W) → (N, out_f, H/2, W/2)."""

    def __init__(self, in_f: int, out_f: int, norm: str, bias: bool, pad: str) -> None:
        super().__init__()
        self.conv = UNetConv2(in_f, out_f, norm, bias, pad)
        self.down = nn.MaxPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.down(x))


class UNetUp(nn.Module):
    """Upsample ×2 the deeper feature, concatenate the skip feature, two 3×3 conv → ReLU.

    (N, num_filt, H, W), (N, out_f, 2H, 2W) → (N, out_f, 2H, 2W);
    num_filt = out_f if same_num_filt else 2·out_f.
    """

    def __init__(self, out_f: int, mode: str, bias: bool, pad: str,
                 same_num_filt: bool = False) -> None:
        super().__init__()
        num_filt = out_f if same_num_filt else out_f * 2
        if mode == "deconv":
            self.up: nn.Module = nn.ConvTranspose2d(num_filt, out_f, 4, stride=2, padding=1)
        else:
            up = (nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
                  if mode == "bilinear" else nn.Upsample(scale_factor=2, mode="nearest"))
            self.up = nn.Sequential(up, Conv(num_filt, out_f, 3, bias=bias, pad=pad))
        self.conv = UNetConv2(out_f * 2, out_f, "none", bias, pad)
        self.cat = ChannelCat()

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(self.cat([self.up(deep), skip]))


class UNet(nn.Module):
    """The U-Net generator; see :func:`unet`.

    Attributes ``size_multiple`` (2**(4 + more_layers)), ``min_input_size``, ``input_scale``
    (1) and ``config``. Forward: (N, num_input_channels, H, W) → (N, num_output_channels, H, W).
    """

    def __init__(self, a: dict) -> None:
        super().__init__()
        cin, norm, bias, pad, mode = (a["num_input_channels"], a["norm_layer"], a["need_bias"],
                                      a["pad"], a["upsample_mode"])
        f = [c // a["feature_scale"] for c in (64, 128, 256, 512, 1024)]
        extra = cin if a["concat_x"] else 0
        self.concat_x = a["concat_x"]
        self.more_layers = a["more_layers"]
        self.start = UNetConv2(cin, f[0] - extra, norm, bias, pad)
        self.downs = nn.ModuleList(
            [UNetDown(f[i], f[i + 1] - extra, norm, bias, pad) for i in range(4)]
            + [UNetDown(f[4], f[4] - extra, norm, bias, pad) for _ in range(self.more_layers)]
        )
        # decoder stages in the order they run: deepest first
        self.ups = nn.ModuleList(
            [UNetUp(f[4], mode, bias, pad, same_num_filt=True)
             for _ in range(self.more_layers)]
            + [UNetUp(f[i], mode, bias, pad) for i in range(3, -1, -1)]
        )
        self.pool = nn.AvgPool2d(2, 2)
        self.cat = ChannelCat()
        self.head = Conv(f[0], a["num_output_channels"], 1, bias=bias, pad=pad)
        self.sigmoid = nn.Sigmoid() if a["need_sigmoid"] else nn.Identity()
        n = 4 + self.more_layers
        self.num_input_channels = cin
        self.size_multiple = 2 ** n
        self.input_scale = 1
        # every scale has 3×3 convs (reflection needs side >= 2) and the deepest norm needs
        # >= 2 values: side >= 2 at the deepest scale covers both.
        self.min_input_size = min_multiple(2 ** n, [(2 ** n, 2)])
        self.config = {"name": "unet", "in_channels": cin,
                       "out_channels": a["num_output_channels"],
                       **{k: v for k, v in a.items()
                          if k not in ("num_input_channels", "num_output_channels")}}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.num_input_channels, self.size_multiple, self.min_input_size, "unet")
        y = self.start(x)
        xs = x
        if self.concat_x:
            y = self.cat([y, xs])
        feats = [y]
        for down in self.downs:
            y = down(y)
            if self.concat_x:
                xs = self.pool(xs)
                y = self.cat([y, xs])
            feats.append(y)
        y = feats[-1]
        n = len(feats)
        for j, up in enumerate(self.ups):
            y = up(y, feats[n - 2 - j])
        return self.sigmoid(self.head(y))


def unet(
    num_input_channels: int = 3,
    num_output_channels: int = 3,
    feature_scale: int = 4,
    more_layers: int = 0,
    concat_x: bool = False,
    upsample_mode: str = "deconv",
    pad: str = "zero",
    norm_layer: Any = "instance",
    need_sigmoid: bool = True,
    need_bias: bool = True,
) -> UNet:
    """Build the U-Net generator (the original ``UNet`` constructor arguments).

    Args:
        feature_scale: divides the channel widths [64, 128, 256, 512, 1024].
        more_layers: extra down/up stages at the deepest width.
        concat_x: concatenate the (average-pooled) input to every encoder feature.
        upsample_mode: "deconv" | "nearest" | "bilinear". pad: "zero" | "reflection".
        norm_layer: "instance" (default, = nn.InstanceNorm2d) | "batch" | "none" (or the
            classes / None); used in the encoder only.
        need_sigmoid: output in [0, 1]. need_bias: bias in the convolutions.

    Sizes: H, W multiples of ``size_multiple = 2**(4 + more_layers)`` and at least
    ``min_input_size = 2 * size_multiple`` (32 px by default). 2,463,379 parameters with the
    defaults.
    """
    a = call_args(unet, locals())
    check_int("num_input_channels", num_input_channels)
    check_int("num_output_channels", num_output_channels)
    check_int("feature_scale", feature_scale)
    check_int("more_layers", more_layers, 0)
    check_choice("upsample_mode", upsample_mode, UNET_UPSAMPLE)
    check_choice("pad", pad, PADS)
    a["norm_layer"] = _norm_name(norm_layer)
    a["concat_x"], a["need_sigmoid"], a["need_bias"] = (
        bool(concat_x), bool(need_sigmoid), bool(need_bias))
    if 64 // feature_scale - (num_input_channels if concat_x else 0) < 1:
        raise ValueError(
            f"feature_scale={feature_scale} leaves {64 // feature_scale} channels at the first "
            f"scale, too few for concat_x with {num_input_channels} input channels; "
            "use a smaller feature_scale"
        )
    return UNet(a)


__all__ = ["unet", "UNet"]
