"""Degradation (forward) operators A with adjoints: Identity, Mask, Downsample, Blur."""
from dip.physics.blur import PADDINGS as BLUR_PADDINGS
from dip.physics.blur import Blur
from dip.physics.blur_kernels import parse_kernel
from dip.physics.kernels import KERNELS, downsampler_taps, original_kernel_2d, preserve_size_padding
from dip.physics.operators import Downsample, Identity, Mask


def from_config(config: dict, *, mask=None, kernel=None):
    """Build an operator from a recipe's ``physics`` dict: ``{"name": "identity"|"mask"|"downsample"|"blur", ...}``.

    ``mask`` is the Mask's mask; ``kernel`` the Blur's point-spread function (a tensor or array
    (Kh, Kw) or (C, Kh, Kw), or a spec for ``parse_kernel`` such as ``"gaussian:1.6"``), unless
    the dict holds one (``"kernel"``, as a checkpoint records it)."""
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
    if name == "blur":
        k = kw.pop("kernel", None) if kernel is None else kernel
        kw.pop("kernel", None)
        if k is None:
            raise ValueError("this task needs a blur kernel: pass kernel=... (e.g. 'gaussian:1.6' or an array)")
        if isinstance(k, str):
            k = parse_kernel(k)
        return Blur(k, **kw)
    raise ValueError(f"unknown operator {name!r}; choose identity, mask, downsample or blur")


__all__ = ["Identity", "Mask", "Downsample", "Blur", "BLUR_PADDINGS", "KERNELS", "downsampler_taps",
           "original_kernel_2d", "parse_kernel", "preserve_size_padding", "from_config"]
