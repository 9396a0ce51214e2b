"""Export of degradation operators (``dip.physics.Downsample``, ``Mask``, ``Identity``, ``Blur``)."""
from __future__ import annotations

import copy
import os

import torch
from torch import nn

from dip.export import metadata as meta
from dip.export.generator import ExportReport
from dip.export.write import TOLERANCE, _targets, _write_and_verify


class DownsampleGraph(nn.Module):
    """``dip.physics.Downsample`` with standard operators only (padding + two depthwise
    convolutions with fixed taps, the pure-PyTorch reference): (N, C, H, W) -> (N, C, h, w)."""

    def __init__(self, op: nn.Module):
        super().__init__()
        self.op = copy.deepcopy(op).float().cpu()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op.forward_standard(x)  # type: ignore[operator]


def _standard_operator(op: nn.Module) -> nn.Module:
    from dip import physics

    if isinstance(op, physics.Downsample):
        return DownsampleGraph(op)
    if isinstance(op, physics.Blur):
        return op.direct().float().cpu().eval()  # conv2d: what every export format holds
    if isinstance(op, (physics.Identity, physics.Mask)):  # standard operators already
        return copy.deepcopy(op).float().cpu().eval()
    raise TypeError(f"cannot export operator {type(op).__name__}; supported: Downsample, Mask, Identity, Blur")


def export_operator(op: nn.Module, example: torch.Tensor, *, onnx: str | os.PathLike | None = None,
                    torchscript: str | os.PathLike | None = None, pt2: str | os.PathLike | None = None,
                    tolerance: float = TOLERANCE) -> ExportReport:
    """Export a degradation operator (``dip.physics.Downsample``, ``Mask``, ``Identity``, ``Blur``) for
    inputs of ``example``'s shape (N, C, H, W), verified against the eager operator.

    The model's input is named ``x`` and its output ``y``; Downsample becomes padding plus
    depthwise convolutions with fixed weights.
    """
    targets = _targets(onnx, torchscript, pt2)
    if not isinstance(example, torch.Tensor) or example.dim() != 4:
        raise ValueError(f"example must be an (N, C, H, W) tensor, got "
                         f"{tuple(example.shape) if isinstance(example, torch.Tensor) else type(example).__name__}")
    example = example.detach().to(device="cpu", dtype=torch.float32).contiguous()
    module = _standard_operator(op)
    with torch.no_grad():
        reference = op.to("cpu")(example).float()
        other = torch.rand(example.shape, generator=torch.Generator().manual_seed(0))
        reference_other = op(other).float()
    record = meta.build(kind="operator", inputs=[("x", tuple(example.shape))], output=("y", tuple(reference.shape)),
                        z_shape=None, crop=None, input_z=False, value_range=None)
    diffs, extra = _write_and_verify(module, (example,), targets,
                                     [((example,), reference), ((other,), reference_other)], tolerance,
                                     (["x"], "y"), record)
    return ExportReport(paths=targets, max_abs_diff=diffs, image_diff=None, input_z=True,
                        output_shape=tuple(reference.shape), tolerance=tolerance, extra_files=extra,
                        metadata=record)
