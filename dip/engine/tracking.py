"""What one fitted image keeps along its fit: the averaged output, the PSNR history against a
ground truth, the automatic stopping rule and the image (and generator state) it returns.

A single fit (:mod:`dip.engine.loop`) has one :class:`Tracker` and feeds it with
:meth:`Tracker.observe`. A packed fit (:mod:`dip.engine.packed_loop`) has one per member for
the average and the PSNR history (:meth:`Tracker.record`); the members' stopping rules run
vectorised in the pack (:mod:`dip.stopping_packed`), and a member's tracker receives its rule
and held state when the member's result is taken.

Observing a step issues no host read on accelerators: the rule's minimum is read every
``sync_every`` steps, and whether this step became the returned step is a device flag
(``held_now``) that the generator state is kept by (:mod:`dip.engine.held_state`).
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from dip.engine.config import FitConfig
from dip.engine.held_state import HeldState
from dip.engine.state import MemberState
from dip.stopping import branch_free
from dip.stopping import from_config as stopper_from_config

# The averaged output's memory grows with the run: at step t its weight is at most
# (t - 1) / (t + AVERAGE_WARMUP - 1), so early, grey outputs leave the average quickly.
AVERAGE_WARMUP = 8

# A fit that ends before this step returns its plain output even when averaging is on: the
# average of the perturbed outputs lags the fast early progress of the fit. Measured on a 64²
# crop of the bundled photograph at sigma 25 (denoise recipe, the warmed-up average against
# G(z) on the clean code): -0.50 dB at step 25, -0.83 at 50, -0.19 at 100, +0.04 at 125, +0.43
# at 300, +1.69 at 500.
AVERAGE_MIN_STEPS = 100

# the generator's state: its current tensors (detached views, not copies) where the tracker
# keeps the state of the returned step; copies where a state is returned as it is now
StateFn = Callable[[], dict[str, torch.Tensor]]


def average_weight(exp_weight: float, step: int) -> float:
    """The weight of the running average at ``step`` (1-based): ``min(exp_weight, (step - 1) /
    (step + AVERAGE_WARMUP - 1))``. Measured on a 64² crop of the bundled photograph, sigma 25,
    the denoise recipe: after 30 steps the plain output has 16.81 dB, the original's average
    (weight 0.99 from the start) 12.65 dB, this one 16.40 dB; after 100 steps 21.01 / 16.83 /
    22.28 dB. The original's weight 0.99 is reached at step 793; from there the two averages
    converge by a factor 0.99 per step."""
    return min(exp_weight, (step - 1) / (step + AVERAGE_WARMUP - 1))


class Tracker:
    """One image's running record of a fit.

    Args:
        config: the fit's settings (``exp_weight``, ``psnr_every``, ``stop``, ``steps``, ...).
        gt: ground truth (1, C, H, W) on the fit's device, or None.
        device: where the loss record lives.

    Attributes: ``losses`` ((steps,) float32, the data loss of every step), ``history``
    (``psnr_step``/``psnr``/``psnr_avg`` lists), ``out_avg`` (the averaged output (1, C, H, W)
    or None), ``last_psnr``, ``stopper`` (``dip.stopping`` rule or None), ``best_state`` (the
    generator state at the stopping rule's returned step, or None), ``held`` (the
    :class:`~dip.engine.held_state.HeldState` that keeps it, branch-free on accelerators).
    """

    def __init__(self, config: FitConfig, gt: torch.Tensor | None, device: torch.device) -> None:
        self.config, self.gt = config, gt
        self.losses = torch.zeros(config.steps, device=device)
        self.history: dict[str, list[float]] = {"psnr_step": [], "psnr": [], "psnr_avg": []}
        self.out_avg: torch.Tensor | None = None
        self.last_psnr: float | None = None
        self.stopper = stopper_from_config(config) if config.stop == "auto" else None
        self.held = HeldState(branch_free(device))

    @property
    def best_state(self) -> dict[str, torch.Tensor] | None:
        """The generator state at the rule's returned step (copies), or None."""
        return self.held.value

    def load(self, member: MemberState, dtype: torch.dtype) -> None:
        """Continue from a resumed member's state (average, stopping rule, losses, history)."""
        if member.image_avg is not None:
            self.out_avg = member.image_avg.to(device=self.losses.device, dtype=dtype).clone()
        if self.stopper is not None and member.stopper_state is not None:
            self.stopper.load_state_dict(member.stopper_state)
            self.held.load(member.returned_state)
        old_losses = member.history.get("loss", [])[:self.config.steps]
        self.losses[:len(old_losses)] = torch.tensor(old_losses, dtype=self.losses.dtype)
        for key in ("psnr_step", "psnr", "psnr_avg"):
            self.history[key] = list(member.history.get(key, []))

    def observe(self, step: int, out: torch.Tensor, live: StateFn) -> bool:
        """Average ``out`` (the step's restored image (1, C, H, W)), record its PSNR on PSNR
        steps and feed the stopping rule; ``live()`` gives the generator's current tensors,
        kept (copied) when this step becomes the returned one. Returns whether the rule says
        stop. No host read on accelerators (see the module doc)."""
        self.record(step, out)
        if self.stopper is None:
            return False
        should_stop = self.stopper.update(step, out, returned=self.out_avg if self.out_avg is not None else out)
        self.held.offer(self.stopper.held_now(step), live)
        return should_stop

    def mark(self, updates: int) -> dict:
        """The record as it is now (average, PSNR history, stopping rule, held state), for
        :meth:`rollback` after at most ``updates`` more observed steps; device copies, no host
        read. The loss record is not part of it: every step's loss stays recorded."""
        return {"out_avg": None if self.out_avg is None else self.out_avg.clone(),
                "history": {key: len(value) for key, value in self.history.items()}, "last_psnr": self.last_psnr,
                "stopper": None if self.stopper is None else self.stopper.mark(updates), "held": self.held.mark()}

    def rollback(self, mark: dict) -> None:
        """Forget the steps observed since ``mark`` (from :meth:`mark`; it stays valid)."""
        if mark["out_avg"] is None or self.out_avg is None:
            self.out_avg = None if mark["out_avg"] is None else mark["out_avg"].clone()
        else:
            self.out_avg.copy_(mark["out_avg"])
        for key, length in mark["history"].items():
            del self.history[key][length:]
        self.last_psnr = mark["last_psnr"]
        if self.stopper is not None:
            self.stopper.rollback(mark["stopper"])
        self.held.rollback(mark["held"])

    def held_now(self, step: int) -> torch.Tensor | None:
        """The rule's device flag: did ``step`` become the returned step (None: no)."""
        return None if self.stopper is None else self.stopper.held_now(step)

    def record(self, step: int, out: torch.Tensor) -> None:
        """Average ``out`` and record its PSNR on PSNR steps (what ``observe`` does besides
        the stopping rule)."""
        self._average(step, out)
        self._record_psnr(step, out)

    def _average(self, step: int, out: torch.Tensor) -> None:
        if self.config.exp_weight is None:
            return
        if self.out_avg is None:
            self.out_avg = out.clone()
        else:
            self.out_avg.lerp_(out, 1.0 - average_weight(self.config.exp_weight, step))

    def _record_psnr(self, step: int, out: torch.Tensor) -> None:
        if self.gt is None or (step % self.config.psnr_every and step != self.config.steps):
            return
        from dip.metrics import psnr
        self.last_psnr = psnr(out, self.gt)
        self.history["psnr_step"].append(step)
        self.history["psnr"].append(self.last_psnr)
        self.history["psnr_avg"].append(psnr(self.out_avg, self.gt) if self.out_avg is not None else self.last_psnr)

    def holds(self, stop_reason: str) -> bool:
        """Whether a fit that ended with ``stop_reason`` returns the stopping rule's image: when
        the rule fired, or holds one at an interruption."""
        stopper = self.stopper
        if stopper is None:
            return False
        stopper.finalize()
        return stop_reason == "auto" or (stop_reason == "interrupted" and stopper.best_output is not None)

    def returned(self, stop_reason: str, steps_run: int, image_plain: torch.Tensor,
                 state: StateFn) -> tuple[torch.Tensor, int, dict[str, torch.Tensor]]:
        """(image, its step, the generator state at that step) the fit returns after
        ``steps_run`` steps: the stopping rule's image when it fired (or holds one at an
        interruption), else the average (from ``AVERAGE_MIN_STEPS`` steps on) or
        ``image_plain``; ``state()`` is the generator's state now."""
        stopper = self.stopper
        if self.holds(stop_reason):  # the image at the variance minimum: the best guess so far
            image = stopper.best_output.detach().float().clone()
            best = self.best_state
            return image, int(stopper.returned_step), (best if best is not None else state())
        averaged = self.out_avg is not None and steps_run >= AVERAGE_MIN_STEPS
        return (self.out_avg.clone() if averaged else image_plain), steps_run, state()

    def member_state(self, steps_run: int, rng: torch.Generator, returned_state: dict[str, torch.Tensor],
                     returned_step: int, recovery) -> MemberState:
        """This image's :class:`MemberState` after ``steps_run`` steps (``recovery``: its
        :class:`~dip.engine.recovery.Recovery` or anything with ``snapshot``, ``backtracks``
        and ``recoveries``)."""
        history = {key: list(value) for key, value in self.history.items()}
        history["step"] = list(range(1, steps_run + 1))
        history["loss"] = self.losses[:steps_run].cpu().tolist()
        return MemberState(
            rng_state=rng.get_state(), image_avg=self.out_avg.cpu().clone() if self.out_avg is not None else None,
            stopper_state=self.stopper.state_dict() if self.stopper is not None else None,
            returned_state=returned_state, returned_step=returned_step, snapshot=recovery.snapshot,
            backtracks=recovery.backtracks, recoveries=recovery.recoveries, history=history)
