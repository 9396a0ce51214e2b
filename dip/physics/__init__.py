"""Degradation (forward) operators A with adjoints: Identity, Mask, Downsample, Blur, BlindBlur."""
from dip.physics.blind_blur import BlindBlur
from dip.physics.blur import PADDINGS as BLUR_PADDINGS
from dip.physics.blur import Blur
from dip.physics.blur_kernels import parse_kernel
from dip.physics.kernels import KERNELS, downsampler_taps, original_kernel_2d, preserve_size_padding
from dip.physics.operators import Downsample, Identity, Mask


def from_config(config: dict, *, mask=None, kernel=None):
    """Build an operator from a recipe's ``physics`` dict: ``{"name": "identity"|"mask"|"downsample"|"blur"|
    "blind_blur", ...}``.

    ``mask`` is the Mask's mask; ``kernel`` the Blur's point-spread function (a tensor or array
    (Kh, Kw) or (C, Kh, Kw), or a spec for ``parse_kernel`` such as ``"gaussian:1.6"``), unless
    the dict holds one (``"kernel"``, as a checkpoint records it). A ``"blind_blur"`` dict holds
    ``BlindBlur``'s arguments (``kernel_size`` at least) and optionally its trained ``"state"``
    (a state_dict, as a checkpoint records it)."""
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
    if name == "blind_blur":
        state = kw.pop("state", None)
        if kw.get("kernel_size") is None:
            raise ValueError("this task needs the size of the unknown blur: pass kernel_size=... (e.g. 11)")
        op = BlindBlur(**kw)
        if state is not None:
            op.load_state_dict(state)
        return op
    raise ValueError(f"unknown operator {name!r}; choose identity, mask, downsample, blur or blind_blur")


__all__ = ["Identity", "Mask", "Downsample", "Blur", "BlindBlur", "BLUR_PADDINGS", "KERNELS", "downsampler_taps",
           "original_kernel_2d", "parse_kernel", "preserve_size_padding", "from_config"]
