"""bf16 working copies of a generator's convolution weights, for a bf16 step without autocast.

Under ``torch.autocast`` (CPU) every reflection pad and concatenation runs in fp32: autocast
casts their bf16 inputs up, and the next convolution casts its input back down, so a step of
the denoise generator cast about 330 activations (13 % of a 128² step on an AMX CPU, measured
with torch.profiler). Here the network runs in bf16 throughout instead: the input is cast
once, each convolution gets a bf16 copy of its weight and bias, and BatchNorm keeps its fp32
parameters (torch's CPU BatchNorm takes a bf16 input with fp32 parameters and statistics and
accumulates in fp32). The fp32 parameters stay the master weights that the optimiser updates:
the copies are refreshed from them before every forward pass, and their gradients are cast
into the masters' ``.grad`` after the backward pass — the same casts autocast makes, one each
way per weight, and the same bf16 convolutions.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call


class Bf16Weights:
    """bf16 copies of ``generator``'s convolution parameters (the weights and biases of every
    ``nn.Conv*`` and ``nn.ConvTranspose*`` and of ``nn.Linear``).

    Call ``refresh()`` before a forward pass (copies the fp32 masters into the copies and
    clears their gradients), ``forward(x)`` to run the generator on bf16 ``x`` with the
    copies, and ``to_master_grads()`` after ``backward()`` (each master's ``.grad`` becomes
    its copy's gradient in fp32, in the master's layout; None where no gradient arrived).
    """

    def __init__(self, generator: nn.Module) -> None:
        self.generator = generator
        self.masters: dict[str, nn.Parameter] = {}
        for module_name, module in generator.named_modules():
            if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
                for param_name, param in module.named_parameters(recurse=False):
                    if param.requires_grad and param.dtype == torch.float32:
                        self.masters[f"{module_name}.{param_name}" if module_name else param_name] = param
        # empty_like keeps each master's strides (channels_last weights stay channels_last)
        self.copies = {name: torch.empty_like(p, dtype=torch.bfloat16).requires_grad_(True)
                       for name, p in self.masters.items()}

    def refresh(self) -> None:
        """Copy the fp32 masters into the bf16 copies (rounding to nearest) and clear their grads."""
        with torch.no_grad():
            for name, copy in self.copies.items():
                copy.copy_(self.masters[name])
                copy.grad = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The generator on ``x`` (cast to bf16) with the bf16 copies; output bf16."""
        return functional_call(self.generator, self.copies, (x.to(torch.bfloat16),), strict=False)

    def to_master_grads(self) -> None:
        """Each master's ``.grad`` = its copy's gradient cast to fp32 (accumulated if set)."""
        for name, copy in self.copies.items():
            if copy.grad is None:
                continue
            master = self.masters[name]
            grad = copy.grad.to(torch.float32)  # keeps the copy's layout, which is the master's
            if master.grad is None:
                master.grad = grad
            else:
                master.grad.add_(grad)
