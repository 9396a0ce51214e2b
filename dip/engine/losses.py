"""The fit's objective: the data term through the operator, and the original's total variation."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import dip.ops
from dip.physics import Mask


def tv_loss(x: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """The original's total variation: sum((dx^2 + dy^2 + eps)^beta) over the image."""
    dh = (x[:, :, :-1, 1:] - x[:, :, :-1, :-1]) ** 2
    dw = (x[:, :, 1:, :-1] - x[:, :, :-1, :-1]) ** 2
    return torch.sum((dh + dw + 1e-8) ** beta)


def data_loss(physics: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error between A(x) and y; for a Mask, mean(((x - y) * m)^2) (the original's
    mse(x*m, y*m)), fused where ``dip.ops.native_pays_off`` says the native kernel is faster."""
    if isinstance(physics, Mask):
        mask = physics.mask.to(dtype=x.dtype, device=x.device)
        if dip.ops.native_pays_off("masked_mse", x.device):
            return dip.ops.masked_mse(x, y, mask)
        return dip.ops.masked_mse_reference(x, y, mask)
    return F.mse_loss(physics(x), y)
