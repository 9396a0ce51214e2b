"""Sizes: the generator renders a padded image whose centre is the result; z is sized to it."""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn


def padded_size(hw: tuple[int, int], multiple: int, minimum: int = 1) -> tuple[int, int]:
    """Smallest size >= max(hw, minimum) per side that is a multiple of ``multiple``."""
    height, width = (int(math.ceil(max(s, minimum) / multiple) * multiple) for s in hw)
    return height, width


def center_crop_box(padded_hw, hw) -> tuple[int, int, int, int]:
    """(top, left, H, W) of a centred H x W window inside ``padded_hw``."""
    return ((padded_hw[0] - hw[0]) // 2, (padded_hw[1] - hw[1]) // 2, int(hw[0]), int(hw[1]))


def pad_to(img: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """Pad (1, C, H, W) centrally to ``size_hw``: reflection where the image is large enough,
    else edge replication (used when the generator's input is an image, e.g. flash/no-flash)."""
    h, w = img.shape[-2:]
    top, left = (size_hw[0] - h) // 2, (size_hw[1] - w) // 2
    pads = (left, size_hw[1] - w - left, top, size_hw[0] - h - top)
    if pads == (0, 0, 0, 0):
        return img
    mode = "reflect" if max(pads[0], pads[1]) < w and max(pads[2], pads[3]) < h else "replicate"
    return F.pad(img, pads, mode=mode)


def generator_geometry(generator: nn.Module, x_hw: tuple[int, int]):
    """Padded output size and input-code size that ``generator`` needs for an image of ``x_hw``.

    Returns ((Hp, Wp), (Hz, Wz)): the network renders Hp x Wp, which is cropped back to x_hw.
    """
    multiple = int(getattr(generator, "size_multiple", 1))
    minimum = int(getattr(generator, "min_input_size", 1))
    scale = int(getattr(generator, "input_scale", 1))
    out_hw = padded_size(x_hw, multiple * scale, minimum * scale)
    return out_hw, (out_hw[0] // scale, out_hw[1] // scale)


def image_box(physics: nn.Module, y_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, H, W) of the restored image inside the operator's image ``physics.x_size(y_hw)``:
    the operator's ``crop_box(y_hw)`` where it has one (a "valid" blur fits a margin around the
    observation's own pixels), else the whole image."""
    crop_box = getattr(physics, "crop_box", None)
    if crop_box is not None:
        return tuple(int(v) for v in crop_box(tuple(y_hw)))  # type: ignore[return-value]
    x_hw = physics.x_size(tuple(y_hw))  # type: ignore[operator]  # an operator's method
    return (0, 0, int(x_hw[0]), int(x_hw[1]))


@dataclasses.dataclass(frozen=True)
class FitLayout:
    """Where a fit's pieces lie, for an observation of ``y_hw`` (all boxes (top, left, H, W)).

    ``x_hw``: the operator's input (the image the fit renders, a "valid" blur's margin included);
    ``out_hw``: the generator's padded output; ``z_hw``: its input code; ``crop``: the operator's
    input inside the output; ``box``: the restored image inside the operator's input, None when it
    is all of it; ``image_hw``: the restored image's size; ``image_crop``: the restored image
    inside the output.
    """

    x_hw: tuple[int, int]
    out_hw: tuple[int, int]
    z_hw: tuple[int, int]
    crop: tuple[int, int, int, int]
    box: tuple[int, int, int, int] | None
    image_hw: tuple[int, int]
    image_crop: tuple[int, int, int, int]

    def check_code(self, z: torch.Tensor, name: str = "z") -> None:
        """ValueError unless ``z`` (..., Hz, Wz) has the spatial size the generator needs."""
        if tuple(z.shape[-2:]) != tuple(self.z_hw):
            raise ValueError(f"{name} must have spatial size {self.z_hw} for an image of {self.x_hw} with this "
                             f"generator, got {tuple(z.shape[-2:])}; build it with dip.fit.generator_geometry")


def fit_layout(physics: nn.Module, generator: nn.Module, y_hw: tuple[int, int]) -> FitLayout:
    """The :class:`FitLayout` of fitting ``generator`` through ``physics`` to an observation of
    ``y_hw`` (H, W)."""
    y_hw = (int(y_hw[0]), int(y_hw[1]))
    x_hw = physics.x_size(y_hw)  # type: ignore[operator]  # an operator's method
    x_hw = (int(x_hw[0]), int(x_hw[1]))
    out_hw, z_hw = generator_geometry(generator, x_hw)
    crop = center_crop_box(out_hw, x_hw)
    box = image_box(physics, y_hw)
    return FitLayout(x_hw=x_hw, out_hw=out_hw, z_hw=z_hw, crop=crop, box=None if box == (0, 0, *x_hw) else box,
                     image_hw=(box[2], box[3]), image_crop=(crop[0] + box[0], crop[1] + box[1], box[2], box[3]))
