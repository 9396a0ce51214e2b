"""Generators for Deep Image Prior: ``skip`` (the paper's), ``unet``, ``resnet``, ``decoder``.

Every generator is an ``nn.Module`` with the attributes

- ``size_multiple`` (int): the input's H and W must be multiples of it;
- ``min_input_size`` (int): the input's H and W must be at least this (a multiple of
  ``size_multiple``); the fitting engine pads images to max(multiple, minimum);
- ``input_scale`` (int): input size = output size // input_scale (1 except for the decoder);
- ``config`` (dict): ``{"name", "in_channels", "out_channels", **kwargs}`` such that
  ``build(**config)`` rebuilds the same architecture.

``to_standard(net)`` returns an equivalent copy made of standard torch modules only (no
``dip.ops`` calls), for export. ``pack(generators)`` runs K generators of one config as one
grouped network and ``unpack(packed, k)`` gives member k back (:mod:`dip.models.packed`).
"""
from __future__ import annotations

import copy
from collections.abc import Callable

from torch import nn

from dip.models.common import BatchNormAct, Bilinear2x, BNAct, StandardDownsample
from dip.models.decoder import Decoder, decoder
from dip.models.packed import PackedGenerator, member_tensors, pack, unpack
from dip.models.resnet import ResNet, resnet
from dip.models.skip import Skip, load_original_state_dict, skip
from dip.models.unet import UNet, unet

_FACTORIES: dict[str, Callable[..., nn.Module]] = {
    "skip": skip, "unet": unet, "resnet": resnet, "decoder": decoder,
}


def names() -> list[str]:
    """Names accepted by :func:`build`."""
    return list(_FACTORIES)


def build(name: str, in_channels: int, out_channels: int, **kwargs) -> nn.Module:
    """Build generator ``name`` mapping ``in_channels`` to ``out_channels``.

    ``kwargs`` are the generator's own keyword arguments (e.g. ``num_channels_down`` for
    "skip"); ``num_input_channels`` / ``num_output_channels`` are given by ``in_channels`` /
    ``out_channels``. ``build(**net.config)`` rebuilds ``net``'s architecture.
    """
    if name not in _FACTORIES:
        raise ValueError(f"unknown generator {name!r}; choose one of {names()}")
    for key in ("num_input_channels", "num_output_channels"):
        if key in kwargs:
            raise ValueError(
                f"pass {key} as {'in_channels' if 'input' in key else 'out_channels'} to build()"
            )
    return _FACTORIES[name](num_input_channels=in_channels, num_output_channels=out_channels,
                            **kwargs)


def _standardize(module: nn.Module) -> None:
    from dip.physics import Downsample

    for name, child in module.named_children():
        if isinstance(child, (BNAct, Bilinear2x)):
            setattr(module, name, child.standard())
        elif isinstance(child, Downsample):
            taps = child.taps
            persistent = "taps" in child.state_dict()
            setattr(module, name, StandardDownsample(taps, child.factor, child.padding,
                                                     persistent=persistent))
        else:
            _standardize(child)


def to_standard(net: nn.Module) -> nn.Module:
    """A deep copy of ``net`` computing the same function with standard torch ops only.

    :class:`BNAct` modules become :class:`BatchNormAct` (``nn.BatchNorm2d`` + activation),
    :class:`Bilinear2x` modules ``nn.Upsample``, and
    ``dip.physics.Downsample`` modules become :class:`StandardDownsample`; parameters,
    buffers, state_dict keys, training mode and generator attributes are kept.
    """
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be an nn.Module, got {type(net).__name__}")
    out = copy.deepcopy(net)
    if isinstance(out, BNAct):
        return out.standard()
    _standardize(out)
    return out


__all__ = [
    "skip", "unet", "resnet", "decoder", "build", "names", "to_standard",
    "load_original_state_dict", "Skip", "UNet", "ResNet", "Decoder", "BNAct", "BatchNormAct",
    "pack", "unpack", "member_tensors", "PackedGenerator",
]
