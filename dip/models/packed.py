"""Packed generators: K generators of one architecture run as one network.

:func:`pack` turns K generators of ``dip.models`` built with the same configuration (they
differ only in their weights) into a :class:`PackedGenerator`, in which

- every convolution (``nn.Conv2d``, ``nn.ConvTranspose2d``) is grouped: groups = K × the
  member's groups, member k owns output channels [k·C_out, (k+1)·C_out) and reads input
  channels [k·C_in, (k+1)·C_in);
- every normalisation (``BNAct``, ``BatchNormAct``, ``nn.BatchNorm2d``, ``nn.InstanceNorm2d``)
  has K·C channels; it is per channel, hence per member (BatchNorm's batch statistics over
  N, H, W of each channel are the member's own; the fused native BN + LeakyReLU of
  :class:`dip.models.common.BNAct` runs on the K·C channels unchanged);
- padding, resampling (upsampling, pooling, the Lanczos downsampler), activations and
  residual additions act per channel and are kept as they are;
- concatenations (:class:`dip.models.common.ChannelCat`) interleave per member: member k's
  block is [its a channels, its b channels].

Each member's parameters keep their names and registration order: packed entry
``net.<name>`` holds the K members' ``<name>`` tensors concatenated on dim 0 (convolution
weights, biases, normalisation weights and running statistics), or one tensor that all
members share (``num_batches_tracked``, the downsampler's fixed taps). :func:`member_tensors`
maps any dict of packed tensors (state_dict, gradients, optimiser moments) to member k's;
:func:`unpack` rebuilds member k as a standard generator of the members' class and config.

Input (N, K·C_in, h, w): member k's code in channels [k·C_in, (k+1)·C_in).
Output (N, K·C_out, H, W): member k's image in channels [k·C_out, (k+1)·C_out).
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from dip.models.common import BatchNormAct, Bilinear2x, BNAct, ChannelCat, Conv, StandardDownsample, check_int
from dip.models.decoder import Decoder
from dip.models.resnet import ResidualBlock, ResNet
from dip.models.skip import Skip, SkipLevel
from dip.models.unet import UNet, UNetConv2, UNetDown, UNetUp

__all__ = ["PackedGenerator", "pack", "unpack", "member_tensors"]

_GENERATORS = (Skip, UNet, ResNet, Decoder)
# modules whose own forward only routes through their children (no channel mixing of their own)
_CONTAINERS = (nn.Sequential, nn.ModuleList, SkipLevel, Conv, UNetConv2, UNetDown, UNetUp,
               ResidualBlock, *_GENERATORS)
# parameter-free modules that act on every channel alone
_PER_CHANNEL = (nn.LeakyReLU, nn.ReLU, nn.SiLU, nn.ELU, nn.Sigmoid, nn.Identity, nn.Upsample, Bilinear2x,
                nn.MaxPool2d, nn.AvgPool2d, nn.ReflectionPad2d, StandardDownsample)
_NORMS = (BNAct, BatchNormAct, nn.BatchNorm2d, nn.InstanceNorm2d)
_SHARED = ("num_batches_tracked",)  # tensors of the packed layers that every member shares


class PackedGenerator(nn.Module):
    """K generators of one class and config as one module (see the module docstring).

    Attributes: ``members`` (K), ``config`` (the members' config: ``dip.models.build(**config)``
    builds one member), ``member_type`` (the members' class), ``size_multiple``,
    ``min_input_size``, ``input_scale`` (the members'), ``in_channels`` / ``out_channels``
    (one member's), ``net`` (the packed network; its tensors are ``net.<member name>``).
    Forward: (N, K·in_channels, h, w) float → (N, K·out_channels, H, W), member k in the
    k-th block of channels.
    """

    def __init__(self, net: Any, members: int, member_type: type) -> None:
        super().__init__()
        self.net = net
        self.members = check_int("members", members)
        self.member_type = member_type
        self.config = copy.deepcopy(net.config)
        self.in_channels = int(self.config["in_channels"])
        self.out_channels = int(self.config["out_channels"])
        self.size_multiple = net.size_multiple
        self.min_input_size = net.min_input_size
        self.input_scale = net.input_scale

    def extra_repr(self) -> str:
        return f"members={self.members}, member_type={self.member_type.__name__}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        want = self.members * self.in_channels
        if x.dim() != 4 or x.shape[1] != want:
            raise ValueError(
                f"a pack of {self.members} {self.config['name']} generators expects input "
                f"(N, {want}, H, W) (member k's {self.in_channels} channels in block k), got "
                f"shape {list(x.shape)}; concatenate the members' codes with torch.cat(zs, dim=1)"
            )
        return self.net(x)


# --------------------------------------------------------------------------- checks
def _check_members(generators: Sequence[nn.Module]) -> list[nn.Module]:
    if isinstance(generators, nn.Module) or not isinstance(generators, Sequence):
        raise TypeError(f"generators must be a list of generators, got {type(generators).__name__}")
    gens: list[Any] = list(generators)
    if not gens:
        raise ValueError("generators is empty: pack needs at least one generator")
    for i, g in enumerate(gens):
        if not isinstance(g, _GENERATORS):
            raise TypeError(f"generators[{i}] is a {type(g).__name__}, not a dip.models generator "
                            f"({', '.join(t.__name__ for t in _GENERATORS)})")
    first = gens[0]
    for i, g in enumerate(gens[1:], 1):
        if type(g) is not type(first):
            raise ValueError(f"generators[{i}] is a {type(g).__name__} but generators[0] is a "
                             f"{type(first).__name__}: pack generators of one class")
        differ = sorted(k for k in set(g.config) | set(first.config)
                        if g.config.get(k) != first.config.get(k))
        if differ:
            k = differ[0]
            raise ValueError(
                f"generators[{i}] has config {k}={g.config.get(k)!r} but generators[0] has "
                f"{k}={first.config.get(k)!r} (differing: {differ}): pack generators built with "
                "the same configuration")
        if g.training != first.training:
            raise ValueError(f"generators[{i}] is in {'training' if g.training else 'eval'} mode, "
                             "generators[0] is not: put all members in the same mode")
    return gens


def _same(name: str, tensors: Sequence[torch.Tensor]) -> None:
    t0 = tensors[0]
    for i, t in enumerate(tensors[1:], 1):
        if t.dtype != t0.dtype or t.device != t0.device or t.shape != t0.shape:
            raise ValueError(f"{name}: member {i} has a {t.dtype} tensor of shape {list(t.shape)} "
                             f"on {t.device}, member 0 {t0.dtype} {list(t0.shape)} on {t0.device}: "
                             "move all members to one dtype and device before packing")


def _check_shared(name: str, tensors: Sequence[torch.Tensor]) -> None:
    _same(name, tensors)
    for i, t in enumerate(tensors[1:], 1):
        if not torch.equal(t, tensors[0]):
            raise ValueError(f"{name} is shared by the members of a pack but member {i}'s differs "
                             "from member 0's (members fitted for different numbers of steps?)")


# --------------------------------------------------------------------------- layers
def _like(m: Any, members: int, scale: Callable[[int], int]) -> nn.Module:
    """A module of ``m``'s type and options on the meta device whose channel counts (and
    groups / members) are ``scale``d; its tensors are to be filled in."""
    meta = torch.device("meta")
    if type(m) in (nn.Conv2d, nn.ConvTranspose2d):
        kw: dict[str, Any] = dict(kernel_size=m.kernel_size, stride=m.stride, padding=m.padding,
                                  dilation=m.dilation, groups=scale(m.groups),
                                  bias=m.bias is not None, padding_mode=m.padding_mode, device=meta)
        if type(m) is nn.ConvTranspose2d:
            kw["output_padding"] = m.output_padding
        return type(m)(scale(m.in_channels), scale(m.out_channels), **kw)
    if type(m) is ChannelCat:
        return ChannelCat(scale(m.members))
    kw = dict(eps=m.eps, momentum=m.momentum, affine=m.affine,
              track_running_stats=m.track_running_stats, device=meta)
    if isinstance(m, BatchNormAct):
        _check_per_channel(m.act, "act")
        if type(m) is BNAct:
            kw["fused"] = m.fused
        new: nn.Module = type(m)(scale(m.num_features), copy.deepcopy(m.act), **kw)
    else:
        new = type(m)(scale(m.num_features), **kw)
    new.train(m.training)
    return new


def _fill(new: nn.Module, make: Callable[[str, bool], torch.Tensor | None], params: Any) -> None:
    """Give ``new`` (a module from :func:`_like`) real tensors: ``make(name, shared)``."""
    for name, p in list(new._parameters.items()):
        if p is not None:
            value = make(name, False)
            new._parameters[name] = nn.Parameter(value, requires_grad=params[name].requires_grad)
    for name, b in list(new._buffers.items()):
        if b is not None:
            new._buffers[name] = make(name, name in _SHARED)


def _check_per_channel(m: nn.Module, where: str) -> None:
    if type(m) not in _PER_CHANNEL or any(True for _ in m.parameters()):
        raise ValueError(f"{where}: cannot pack a {type(m).__name__} module: it is not known to act "
                         "on each channel alone (packing supports the modules dip.models builds)")


def _pack_layer(where: str, ms: list[nn.Module]) -> nn.Module:
    k = len(ms)
    new = _like(ms[0], k, lambda c: c * k)

    def make(name: str, shared: bool) -> torch.Tensor:
        ts = [getattr(m, name).detach() for m in ms]
        if shared:
            _check_shared(f"{where}.{name}", ts)
            return ts[0].clone()
        _same(f"{where}.{name}", ts)
        for i, m in enumerate(ms[1:], 1):
            if isinstance(getattr(m, name), nn.Parameter) and (
                    getattr(m, name).requires_grad != getattr(ms[0], name).requires_grad):
                raise ValueError(f"{where}.{name}: member {i}'s requires_grad differs from "
                                 "member 0's: give all members the same trainable parameters")
        return torch.cat(ts, dim=0)

    _fill(new, make, ms[0]._parameters)
    return new


def _split_layer(m: nn.Module, k: int, members: int) -> nn.Module:
    new = _like(m, members, lambda c: c // members)

    def make(name: str, shared: bool) -> torch.Tensor:
        t = getattr(m, name).detach()
        return t.clone() if shared else t.chunk(members, dim=0)[k].clone()

    _fill(new, make, m._parameters)
    return new


def _is_layer(m: nn.Module) -> bool:
    return type(m) in (nn.Conv2d, nn.ConvTranspose2d, ChannelCat, *_NORMS)


def _is_per_channel(m: nn.Module) -> bool:
    if type(m) in _PER_CHANNEL:
        return True
    from dip.physics import Downsample  # lazy: models import cheaply

    return type(m) is Downsample


def _walk(target: nn.Module, groups: list[nn.Module], where: str,
          layer: Callable[[str, list[nn.Module]], nn.Module]) -> None:
    """Replace every packable layer below ``target`` (a copy of ``groups[0]``) by
    ``layer(path, [the members' modules at that path])``; check everything else."""
    if type(target) not in _CONTAINERS:
        raise ValueError(f"{where or 'generator'}: cannot pack a {type(target).__name__} module "
                         "(packing supports the modules dip.models builds)")
    if next(target.named_parameters(recurse=False), None) or next(
            target.named_buffers(recurse=False), None):
        raise ValueError(f"{where or 'generator'}: a {type(target).__name__} with tensors of "
                         "its own cannot be packed")
    for name, child in list(target.named_children()):
        path = f"{where}.{name}" if where else name
        members = [getattr(g, name) for g in groups]
        if _is_layer(child):
            setattr(target, name, layer(path, members))
        elif _is_per_channel(child):
            if any(True for _ in child.parameters()):
                raise ValueError(f"{path}: a {type(child).__name__} with parameters cannot be packed")
            for bname, _ in child.named_buffers():
                _check_shared(f"{path}.{bname}", [m.get_buffer(bname) for m in members])
        else:
            _walk(child, members, path, layer)


# --------------------------------------------------------------------------- public
def pack(generators: Sequence[nn.Module]) -> PackedGenerator:
    """Pack K generators of one class and config into one :class:`PackedGenerator`.

    ``generators``: K >= 1 ``dip.models`` generators (``Skip``, ``UNet``, ``ResNet``,
    ``Decoder``) with equal ``config``, training mode, dtype and device; their shared
    tensors (``num_batches_tracked``, fixed downsampler taps) must be equal. The packed
    tensors are copies (the members are not changed or shared); they keep the members'
    dtype, device, memory format and ``requires_grad``.

    Raises:
        TypeError: not a list of generators.
        ValueError: empty, different classes, configs, modes, dtypes, devices, or unequal
            shared tensors; a module that is not known to act per channel.
    """
    gens = _check_members(generators)
    k = len(gens)
    net: Any = copy.deepcopy(gens[0])
    _walk(net, gens, "", _pack_layer)
    net.num_input_channels = k * net.num_input_channels
    return PackedGenerator(net, k, type(gens[0])).train(gens[0].training)


def _check_packed(packed: Any, k: Any) -> int:
    if not isinstance(packed, PackedGenerator):
        raise TypeError(f"packed must be a PackedGenerator from dip.models.packed.pack, got "
                        f"{type(packed).__name__}")
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < packed.members:
        raise ValueError(f"k must be a member index in [0, {packed.members}), got {k!r}")
    return k


def unpack(packed: PackedGenerator, k: int) -> nn.Module:
    """Member ``k`` of ``packed`` as a standalone generator of the members' class and config.

    Its state_dict equals member k's slice of the packed one (same names, order, values,
    dtype, device, memory format, ``requires_grad``, training mode), so its output equals
    channels [k·out_channels, (k+1)·out_channels) of the packed output for member k's input.
    The tensors are copies (gradients are not carried: use :func:`member_tensors`).
    """
    k = _check_packed(packed, k)
    members = packed.members
    member: Any = copy.deepcopy(packed.net)
    for p in member.parameters():
        p.grad = None
    _walk(member, [packed.net], "", lambda path, ms: _split_layer(ms[0], k, members))
    member.num_input_channels = packed.in_channels
    return member


def member_tensors(packed: PackedGenerator, k: int,
                   tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Member ``k``'s views of packed tensors keyed by the packed module's names.

    ``tensors``: e.g. ``packed.state_dict()``, ``{n: p.grad for n, p in
    packed.named_parameters()}`` or Adam moments by parameter name; keys ``net.<name>``.
    Returns ``{<name>: view}``, ``<name>`` being the member generator's name: a per-member
    tensor's dim-0 slice of length 1/K (a view, no copy), a shared one as it is. ``None``
    values stay ``None``.
    """
    k = _check_packed(packed, k)
    per_member = set()
    for mname, m in packed.net.named_modules():
        if _is_layer(m):
            for tname, _ in m.named_parameters(recurse=False):
                per_member.add(f"{mname}.{tname}")
            for tname, _ in m.named_buffers(recurse=False):
                if tname not in _SHARED:
                    per_member.add(f"{mname}.{tname}")
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if not name.startswith("net."):
            raise ValueError(f"tensor name {name!r} is not a packed generator's (net.<name>)")
        inner = name[len("net."):]
        out[inner] = t.chunk(packed.members, dim=0)[k] if (
            t is not None and inner in per_member) else t
    return out
