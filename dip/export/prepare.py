"""The module an export writes: a standard-op copy of the generator with z and BatchNorm
statistics handled (see the package docstring), and the crop."""
from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

Crop = tuple[int, int, int, int]


class ExportError(RuntimeError):
    """An exported artefact failed verification (output differs from the eager output, or the
    graph contains non-standard operators)."""



def _is_bn(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.batchnorm._BatchNorm)


def _standard_copy(generator: nn.Module) -> nn.Module:
    """A CPU float32 copy of ``generator`` built from standard torch modules only."""
    if any(type(m).__module__.split(".")[0] == "dip" for m in generator.modules()):
        from dip.models import to_standard

        net = to_standard(generator)
    else:
        net = copy.deepcopy(generator)
    return net.to(device="cpu", dtype=torch.float32, memory_format=torch.contiguous_format)  # type: ignore[call-overload]


def train_mode_output(generator: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """G(z) with BatchNorm in training mode, on a copy (the generator's running statistics are
    not touched).  Returns (N, C, H, W) float32 on the CPU."""
    net = copy.deepcopy(generator).to(device="cpu", dtype=torch.float32).train()
    with torch.no_grad():
        return net(z.to(device="cpu", dtype=torch.float32)).float()


def freeze_batch_statistics(net: nn.Module, z: torch.Tensor) -> nn.Module:
    """Replace every BatchNorm's running statistics by the batch statistics of ``net(z)`` in
    training mode (mean and biased variance over N, H, W), then switch ``net`` to eval mode.

    Afterwards ``net(z)`` in eval mode equals the training-mode output on ``z`` (to rounding).
    Modifies and returns ``net``.

    Raises:
        ExportError: a BatchNorm module runs more than once per forward pass (shared module),
            so no single set of statistics reproduces it; export with ``input_z=True``.
    """
    stats: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}
    shared: list[str] = []
    names = {m: n for n, m in net.named_modules()}

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        if module in stats:
            shared.append(names[module])
        x = inputs[0].detach().double()
        dims = [0] + list(range(2, x.dim()))
        stats[module] = (x.mean(dim=dims), x.var(dim=dims, unbiased=False))

    bns = [m for m in net.modules() if _is_bn(m)]
    handles = [m.register_forward_pre_hook(hook) for m in bns]
    try:
        net.train()
        with torch.no_grad():
            net(z)
    finally:
        for h in handles:
            h.remove()
    if shared:
        raise ExportError(f"BatchNorm module(s) {sorted(set(shared))} run more than once per forward pass; "
                          "their statistics cannot be frozen: export with input_z=True")
    for m in bns:
        if m not in stats:
            continue
        mean, var = stats[m]
        m.running_mean = mean.to(torch.float32)
        m.running_var = var.to(torch.float32)
        m.track_running_stats = True  # type: ignore[assignment]
    return net.eval()


def use_batch_statistics(net: nn.Module) -> nn.Module:
    """Make every BatchNorm normalise with the statistics of its input batch in any mode
    (``track_running_stats=False``, no running buffers), then switch to eval mode.
    Modifies and returns ``net``."""
    for m in net.modules():
        if _is_bn(m):
            m.track_running_stats = False  # type: ignore[assignment]
            m.running_mean = None
            m.running_var = None
            m.num_batches_tracked = None
    return net.eval()


class _Crop(nn.Module):
    def __init__(self, crop: Crop | None):
        super().__init__()
        self.box = crop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.box is None:
            return x
        top, left, h, w = self.box
        return x[:, :, top:top + h, left:left + w]


class RenderImage(nn.Module):
    """No inputs: returns ``crop(net(z))`` with z stored as a buffer. Output (1, C, H, W)."""

    def __init__(self, net: nn.Module, z: torch.Tensor, crop: Crop | None):
        super().__init__()
        self.net = net
        self.register_buffer("z", z.detach().clone())
        self.crop = _Crop(crop)

    def forward(self) -> torch.Tensor:
        return self.crop(self.net(self.z))


class RenderFromCode(nn.Module):
    """Input z (the shape of the fit's code): returns ``crop(net(z))``. Output (1, C, H, W)."""

    def __init__(self, net: nn.Module, crop: Crop | None):
        super().__init__()
        self.net = net
        self.crop = _Crop(crop)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.crop(self.net(z))


def _check_z(z: torch.Tensor) -> torch.Tensor:
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"z must be a torch.Tensor, got {type(z).__name__}")
    if z.dim() != 4 or z.numel() == 0:
        raise ValueError(f"z must have shape (1, D, H, W), got {tuple(z.shape)}")
    if not z.is_floating_point():
        raise TypeError(f"z must be a float tensor, got dtype {z.dtype}")
    return z.detach().to(device="cpu", dtype=torch.float32).contiguous()


def _check_crop(crop, out_shape: Sequence[int]) -> Crop | None:
    if crop is None:
        return None
    try:
        box = tuple(int(c) for c in crop)
    except (TypeError, ValueError):
        raise TypeError(f"crop must be (top, left, height, width) integers, got {crop!r}") from None
    if len(box) != 4:
        raise ValueError(f"crop must be (top, left, height, width), got {crop!r}")
    top, left, h, w = box
    H, W = int(out_shape[-2]), int(out_shape[-1])
    if top < 0 or left < 0 or h < 1 or w < 1 or top + h > H or left + w > W:
        raise ValueError(f"crop {box} (top, left, height, width) does not fit the generator's "
                         f"{H}x{W} output")
    return box


def prepare(generator: nn.Module, z: torch.Tensor, *, input_z: bool = False,
            crop: Crop | None = None) -> nn.Module:
    """The standard-op module that :func:`export` writes: :class:`RenderImage` (no inputs, BN
    statistics of z frozen) or, with ``input_z``, :class:`RenderFromCode` (BN batch statistics).

    Args:
        generator: a fitted ``dip.models`` generator (or any ``nn.Module`` image generator).
        z: its code, (1, D, h, w) float.
        input_z: make z the model's input.
        crop: (top, left, height, width) of the image in the generator's output, or None.
    """
    z = _check_z(z)
    net = _standard_copy(generator)
    with torch.no_grad():
        out_shape = net.train()(z).shape if crop is not None else None
    box = _check_crop(crop, out_shape) if crop is not None else None
    for p in net.parameters():
        p.requires_grad_(False)
    if input_z:
        return RenderFromCode(use_batch_statistics(net), box).eval()
    return RenderImage(freeze_batch_statistics(net, z), z, box).eval()
