"""What a packed fit hands back: one :class:`~dip.engine.result.FitResult` per member, and
the ensemble of them.

Each member's result is a complete single-fit result: its generator is a standard generator
(``dip.models.packed.unpack``), its state a single fit's (its slice of the packed Adam, its
own learning rate), so export, rendering, checkpoints and ``fit(resume=...)`` work on a
member as on any fit.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from dip.engine.result import FitResult

ENSEMBLE_MODES = ("mean", "median")


def combine(images: list[torch.Tensor], how: str = "mean") -> torch.Tensor:
    """The ensemble of member images (each (1, C, H, W) float32): their pixelwise mean or
    median. The mean is the default: for members whose errors are partly independent and of
    zero mean it is the estimate of least squared error, which PSNR measures; the median
    (the lower middle value for an even count) only pays against outlying members."""
    if how not in ENSEMBLE_MODES:
        raise ValueError(f"ensemble mode must be one of {', '.join(ENSEMBLE_MODES)}, got {how!r}")
    if not images:
        raise ValueError("no member images to combine")
    stack = torch.stack([img.float() for img in images])
    return stack.mean(0) if how == "mean" else stack.median(0).values


@dataclass
class PackedFitResult:
    """Outcome of ``fit_packed``: ``members[k]`` is member k's :class:`FitResult` (its own
    ``stop_reason``: a member stopped by its rule or diverged left the pack at that step)."""

    members: list[FitResult]

    @property
    def steps_run(self) -> int:
        """Steps the pack ran (the longest member's)."""
        return max(m.steps_run for m in self.members)

    @property
    def seconds(self) -> float:
        """Wall-clock seconds of the pack (the last member to finish)."""
        return max(m.seconds for m in self.members)

    def resume_state(self) -> dict[str, Any]:
        """What ``fit_packed(..., resume=...)`` needs to continue this pack (with the members'
        generators ``[m.generator for m in members]`` and codes): each member's single-fit state
        and how it ended."""
        return {"members": [m.resume_state() for m in self.members],
                "stop_reasons": [m.stop_reason for m in self.members],
                "stop_details": [m.stop_detail for m in self.members]}

    def ensemble(self, how: str = "mean") -> torch.Tensor:
        """The members' images combined (:func:`combine`), (1, C, H, W) float32."""
        return combine([m.image for m in self.members], how)
