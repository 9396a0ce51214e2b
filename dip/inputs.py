"""The fixed random code z that the generator is fed.

Kinds (as in the original's ``get_noise``):

- ``"noise"``: uniform U(0, 1) scaled by ``scale`` (0.1 by default);
- ``"noise_normal"``: standard normal scaled by ``scale``;
- ``"meshgrid"``: two channels, x and y coordinates in [0, 1].
"""
from __future__ import annotations

import torch

INPUT_KINDS = ("noise", "noise_normal", "meshgrid")


def make_input(kind: str, channels: int, size_hw: tuple[int, int], *, scale: float = 0.1,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Return z of shape (1, channels, H, W), float32, on the CPU.

    Args:
        kind: one of ``INPUT_KINDS``.
        channels: number of channels (must be 2 for ``"meshgrid"``).
        size_hw: spatial size (H, W) in pixels.
        scale: multiplier of the noise kinds.
        generator: a seeded ``torch.Generator`` for reproducible codes.
    """
    if kind not in INPUT_KINDS:
        raise ValueError(f"unknown input kind {kind!r}; choose one of {', '.join(INPUT_KINDS)}")
    h, w = (int(s) for s in size_hw)
    if h < 1 or w < 1:
        raise ValueError(f"input size must be positive, got {size_hw}")
    if channels < 1:
        raise ValueError(f"input channels must be >= 1, got {channels}")
    if kind == "meshgrid":
        if channels != 2:
            raise ValueError(f"a meshgrid input has 2 channels (x, y), got channels={channels}")
        ys = torch.linspace(0.0, 1.0, h) if h > 1 else torch.zeros(1)
        xs = torch.linspace(0.0, 1.0, w) if w > 1 else torch.zeros(1)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack([grid_x, grid_y])[None].contiguous()
    z = torch.empty(1, channels, h, w)
    if kind == "noise":
        z.uniform_(generator=generator)
    else:
        z.normal_(generator=generator)
    return z.mul_(scale)
