"""Rendering the fitted image: G(z) in training mode, without side effects on the network."""
from __future__ import annotations

import torch
from torch import nn

from dip.runtime import autocast_context


def render(generator: nn.Module, z: torch.Tensor, crop, precision: str = "fp32") -> torch.Tensor:
    """G(z) cropped to the image, BatchNorm in training mode, fp32, without touching the
    generator's running statistics. Returns (1, C, H, W)."""
    bns = [m for m in generator.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
             for m in bns if m.running_mean is not None]
    try:
        with torch.no_grad(), autocast_context(precision, z.device):
            out = generator(z)
    finally:
        for m, (rm, rv, nb) in zip([m for m in bns if m.running_mean is not None], saved, strict=True):
            m.running_mean.copy_(rm)
            m.running_var.copy_(rv)
            m.num_batches_tracked.copy_(nb)
    top, left, h, w = crop
    return out.float()[:, :, top:top + h, left:left + w].contiguous()
