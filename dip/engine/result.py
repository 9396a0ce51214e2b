"""What a fit hands back: the event its callbacks see and its result."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dip.engine.config import FitConfig
from dip.engine.state import FitState


@dataclass
class StepEvent:
    """What a callback sees. ``loss`` is a 0-dim tensor (call ``.item()`` only when needed: it
    syncs); ``output`` is the cropped current output (1, C, H, W), detached, fp32; ``output_avg``
    the averaged output or None; ``psnr`` the latest PSNR against the ground truth (or None);
    ``steps`` the planned number of steps. A fit replayed as a CUDA graph
    (``dip.engine.captured_step``) hands out its graph's buffers as ``loss`` and ``output``:
    they hold this step's values until the next step (clone them to keep them)."""

    step: int
    steps: int
    loss: torch.Tensor
    output: torch.Tensor
    output_avg: torch.Tensor | None
    psnr: float | None


@dataclass
class FitResult:
    """Outcome of ``fit``.

    Attributes:
        image: the returned image (1, C, H, W) float32 in [0, 1]: the averaged output when
            averaging is on and the fit ran at least 100 steps, else ``image_plain``; with
            automatic stopping, the image at the detected step.
        image_plain: G(z) on the clean code after the last step (BatchNorm in training mode).
        generator, z: the fitted network and its (padded) input code; physics: the operator
            it was fitted through; recipe: the ``dip.recipes.Recipe`` when one was run.
        stop_reason: "steps" (ran all steps), "auto" (automatic stopping), "interrupted" (the
            ``stop_event`` was set; ``resume_state()`` continues it), "diverged" (the
            ``max_recoveries``-th failure), or "running" (a mid-fit checkpoint);
            ``stop_detail`` says it in words.
        crop: (top, left, H, W) of the image inside the generator's output.
        psnr, ssim: of ``image`` against the ground truth, when one was given.
        state: the engine's :class:`~dip.engine.state.FitState` after the last step (its owner);
            the properties below read it.

    Properties: ``image_avg`` (the averaged output after the last step, or None); ``history``
    (``step`` and ``loss`` every step, ``psnr_step``/``psnr``/``psnr_avg`` every ``psnr_every``
    steps when a ground truth was given); ``returned_state`` (generator state_dict at the step
    whose image is returned) and ``returned_step``; ``steps_run``; ``seconds``; ``backtracks``
    (how many times the fit PSNR fell by more than the threshold) and ``recoveries`` (all
    restorations, non-finite losses included); ``optimizer_state``, ``stopper_state``,
    ``rng_state``, ``backtrack_state`` (for resuming and checkpoints).
    """

    image: torch.Tensor
    image_plain: torch.Tensor
    generator: nn.Module
    z: torch.Tensor
    stop_reason: str
    crop: tuple[int, int, int, int]
    config: FitConfig
    state: FitState
    psnr: float | None = None
    ssim: float | None = None
    recipe: object | None = None
    physics: nn.Module | None = None
    stop_detail: str = ""

    def scored(self, gt: torch.Tensor | None) -> FitResult:
        """Set ``psnr`` and ``ssim`` of ``image`` against ``gt`` (1, C, H, W) (SSIM None where
        the image is too small for it); nothing without a ground truth. Returns self."""
        if gt is None:
            return self
        from dip.metrics import psnr, ssim
        self.psnr = psnr(self.image, gt.cpu())
        try:
            self.ssim = ssim(self.image, gt.cpu())
        except ValueError:
            self.ssim = None
        return self

    def resume_state(self) -> dict[str, Any]:
        """What ``fit(..., resume=...)`` needs to continue this fit where it ended (with
        ``generator`` in its current state and the same ``z``): ``self.state.to_dict()``."""
        return self.state.to_dict()

    @property
    def image_avg(self) -> torch.Tensor | None:
        return self.state.member.image_avg

    @property
    def history(self) -> dict[str, list[float]]:
        return self.state.member.history

    @property
    def returned_state(self) -> dict[str, torch.Tensor] | None:
        return self.state.member.returned_state

    @property
    def returned_step(self) -> int:
        step = self.state.member.returned_step
        return self.state.step if step is None else step

    @property
    def steps_run(self) -> int:
        return self.state.step

    @property
    def seconds(self) -> float:
        return self.state.seconds

    @property
    def backtracks(self) -> int:
        return self.state.member.backtracks

    @property
    def recoveries(self) -> int:
        return self.state.member.recoveries

    @property
    def optimizer_state(self) -> dict | None:
        return self.state.optimizer_state

    @property
    def stopper_state(self) -> dict | None:
        return self.state.member.stopper_state

    @property
    def rng_state(self) -> torch.Tensor | None:
        return self.state.member.rng_state

    @property
    def backtrack_state(self) -> dict | None:
        snapshot = self.state.member.snapshot
        return None if snapshot is None else snapshot.to_dict()

    @property
    def ms_per_step(self) -> float:
        return 1000.0 * self.seconds / max(self.steps_run, 1)
