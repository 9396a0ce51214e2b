"""Degradation (forward) operators A with adjoints: Identity, Mask, Downsample."""
from dip.physics.kernels import KERNELS, downsampler_taps, original_kernel_2d, preserve_size_padding
from dip.physics.operators import Downsample, Identity, Mask


def from_config(config: dict, *, mask=None):
    """Build an operator from a recipe's ``physics`` dict: ``{"name": "identity"|"mask"|"downsample", ...}``."""
    kw = dict(config)
    name = kw.pop("name")
    if name == "identity":
        return Identity()
    if name == "mask":
        if mask is None:
            raise ValueError("this task needs a mask: pass mask=... (non-zero = known pixel)")
        return Mask(mask)
    if name == "downsample":
        return Downsample(**kw)
    raise ValueError(f"unknown operator {name!r}; choose identity, mask or downsample")


__all__ = ["Identity", "Mask", "Downsample", "KERNELS", "downsampler_taps", "original_kernel_2d",
           "preserve_size_padding", "from_config"]
