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
    median (for an even count the mean of the two middle values). The mean is the default: for
    members whose errors are partly independent and of zero mean it is the estimate of least
    squared error, which PSNR measures (and its squared error is never above the members'
    mean squared error); the median only pays against outlying members."""
    if how not in ENSEMBLE_MODES:
        raise ValueError(f"ensemble mode must be one of {', '.join(ENSEMBLE_MODES)}, got {how!r}")
    if not images:
        raise ValueError("no member images to combine")
    stack = torch.stack([img.float() for img in images])
    if how == "mean":
        return stack.mean(0)
    ordered, n = stack.sort(0).values, len(images)
    return (ordered[(n - 1) // 2] + ordered[n // 2]) / 2


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


# how an ensemble as a whole ended: the first of these that any member has
_ENDINGS = ("interrupted", "running", "steps", "auto", "diverged")


@dataclass
class EnsembleResult(PackedFitResult):
    """K members fitted to one observation, combined.

    Attributes: ``members`` (each member's ``FitResult``), ``image`` (the mean of the members'
    returned images, (1, C, H, W) float32), ``image_median``, ``psnr`` / ``ssim`` /
    ``psnr_median`` against the ground truth when one was given, ``recipe``.

    Read like a ``FitResult``: ``stop_reason`` (``interrupted`` or ``running`` if any member
    is, else ``steps`` if any ran all steps, else ``auto``, else ``diverged``), ``steps_run``,
    ``seconds``, ``ms_per_step`` (per step of the pack), ``returned_step`` (the last member's),
    ``recoveries`` and ``backtracks`` (summed), ``config``, ``history`` and ``generator``
    (member 0's: an ensemble is not one network), ``stop_detail``.
    """

    image: torch.Tensor | None = None
    image_median: torch.Tensor | None = None
    psnr: float | None = None
    ssim: float | None = None
    psnr_median: float | None = None
    recipe: object | None = None

    @classmethod
    def of(cls, packed: PackedFitResult, gt: torch.Tensor | None = None) -> EnsembleResult:
        """The ensemble of ``packed``'s members, scored against ``gt`` (C, H, W) or (1, C, H, W)."""
        result = cls(packed.members, image=packed.ensemble("mean"), image_median=packed.ensemble("median"))
        if gt is not None:
            from dip.metrics import psnr, ssim
            gt = (gt[None] if gt.dim() == 3 else gt).float().cpu()
            result.psnr, result.psnr_median = psnr(result.image, gt), psnr(result.image_median, gt)
            try:
                result.ssim = ssim(result.image, gt)
            except ValueError:
                result.ssim = None
        return result

    @classmethod
    def checkpoints(cls, on_checkpoint: Any, gt: torch.Tensor | None = None) -> Any:
        """``on_checkpoint`` for ``fit_packed``: it gets each mid-fit ``PackedFitResult`` as an
        ensemble (None stays None)."""
        if on_checkpoint is None:
            return None
        return lambda partial: on_checkpoint(cls.of(partial, gt))

    @property
    def stop_reason(self) -> str:
        reasons = {m.stop_reason for m in self.members}
        return next((r for r in _ENDINGS if r in reasons), self.members[0].stop_reason)

    @property
    def stop_detail(self) -> str:
        return "; ".join(f"member {k}: {m.stop_detail}" for k, m in enumerate(self.members))

    @property
    def ms_per_step(self) -> float:
        return 1000.0 * self.seconds / max(self.steps_run, 1)

    @property
    def returned_step(self) -> int:
        return max(m.returned_step for m in self.members)

    @property
    def recoveries(self) -> int:
        return sum(m.recoveries for m in self.members)

    @property
    def backtracks(self) -> int:
        return sum(m.backtracks for m in self.members)

    @property
    def config(self) -> Any:
        return self.members[0].config

    @property
    def history(self) -> dict[str, list[float]]:
        return self.members[0].history

    @property
    def generator(self) -> Any:
        return self.members[0].generator
