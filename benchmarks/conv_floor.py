"""The machine's convolution floor for a generator: what its convolutions alone cost a step.

Used by ``benchmarks/test_bench_step.py`` (a step's efficiency: its GFLOP/s over the floor's)
and ``benchmarks/test_bench_packed.py`` (the ceiling of packing: the floor of a packed
generator's grouped convolutions against K separate steps).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class ConvFloor:
    """Each ``nn.Conv2d`` of ``generator`` alone, forward and backward (input, weight and bias
    gradients), on inputs of the shapes the generator gives them for ``code``, in ``precision``
    (``"fp32"`` or ``"bf16"``) and ``layout`` (``"cl"``: channels_last, ``"nchw"``); nothing
    else of a step. The floor counts the same FLOPs as the step's convolutions; grouped
    convolutions (a packed generator's) keep their groups.

    ``generator``: a float32 generator; ``code``: its input (N, C, H, W) float32. Calling the
    object runs the convolutions once.
    """

    def __init__(self, generator: torch.nn.Module, code: torch.Tensor, precision: str, layout: str) -> None:
        shapes = []
        hooks = [m.register_forward_hook(lambda m, inputs, out: shapes.append((m, inputs[0].shape)))
                 for m in generator.modules() if isinstance(m, torch.nn.Conv2d)]
        try:
            with torch.no_grad():
                generator(code)
        finally:
            for h in hooks:
                h.remove()
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        fmt = torch.channels_last if layout == "cl" else torch.contiguous_format
        self.items = []
        for conv, shape in shapes:
            # the step needs no gradient of the code z, the first convolution's input
            x = torch.randn(shape).to(dtype).contiguous(memory_format=fmt).requires_grad_(bool(self.items))
            w = conv.weight.detach().to(dtype).contiguous(memory_format=fmt).requires_grad_(True)
            b = conv.bias.detach().to(dtype).requires_grad_(True) if conv.bias is not None else None
            self.items.append((x, w, b, conv.stride, conv.padding, conv.groups))

    def __call__(self) -> None:
        for x, w, b, stride, padding, groups in self.items:
            y = F.conv2d(x, w, b, stride, padding, 1, groups)
            y.backward(torch.ones_like(y))
            x.grad = w.grad = None
            if b is not None:
                b.grad = None
