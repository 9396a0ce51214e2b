"""The loss checks of a fit whose steps are judged after the fact, a window of steps at a time.

The eager fit reads every step's loss to the host (``float(loss)``) and judges it at once
(:meth:`dip.engine.recovery.Recovery.check`). A fit replayed as a CUDA graph
(:mod:`dip.engine.captured_step`) keeps the losses on the device (``Tracker.losses``) and reads
the window of steps since the last check in one transfer, at the steps :meth:`DeferredCheck.due`
names and wherever the fit must stand on judged ground (its last step, a stop of the stopping
rule, a checkpoint, an interruption). The window's steps are then judged in order by the same
``Recovery.check``, with the same values (the float32 losses as Python floats), so a check
step's snapshot, its fit PSNR and its backtracking verdict are the eager fit's.

Windows end at every check step (``step % check_every == 0``), where the recovery takes its
snapshot of the state *at that step*: only there can the state of the step be kept, so a window
never spans one. They also end every :data:`CHECK_EVERY` steps, which bounds how long a
non-finite loss goes unnoticed when ``check_every`` is larger. With the defaults
(``check_every`` 10) that is one host read every 10 steps instead of every step.

What the fit does with a failure found in a window (the first one; the steps after it ran on
the failed state and are not judged) is in :mod:`dip.engine.loop`'s ``_FitRun._settle``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch

# k: the most steps between two reads of the losses (besides the check steps, see the module doc)
CHECK_EVERY = 25


class Judge(Protocol):
    def check(self, step: int, loss: float) -> str | None: ...


@dataclass(frozen=True)
class Failure:
    """The first failed step of a window: ``step``, ``why`` (``Recovery.check``'s words) and
    whether its loss was finite (a backtracking verdict) or not."""

    step: int
    why: str
    finite: bool


class DeferredCheck:
    """Which steps end a window, and the judgement of a window.

    Args:
        check_every: the recovery's ``check_every`` (its snapshot steps).
        judged: the last step already judged (the step the fit starts after).
        every: k, the most steps between two reads (default :data:`CHECK_EVERY`).
    """

    def __init__(self, check_every: int, judged: int, every: int = CHECK_EVERY) -> None:
        for name, value in (("check_every", check_every), ("every", every)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if isinstance(judged, bool) or not isinstance(judged, int) or judged < 0:
            raise ValueError(f"judged must be an integer >= 0, got {judged!r}")
        self.check_every, self.every, self.judged = check_every, every, judged
        self.window_start = judged + 1  # the first step of the last window judged

    @property
    def longest(self) -> int:
        """The most steps a window holds (the gap between two due steps at most)."""
        return min(self.check_every, self.every)

    def due(self, step: int) -> bool:
        """Whether ``step`` ends a window by itself: a check step or a multiple of k."""
        return step % self.check_every == 0 or step % self.every == 0

    def judge(self, step: int, losses: torch.Tensor, recovery: Judge) -> Failure | None:
        """Judge the steps after the last judged one up to ``step`` (inclusive).

        Args:
            step: the last step taken.
            losses: (steps,) float32, the loss of step s at ``losses[s - 1]`` (any device; one
                host read of the window's part).
            recovery: what judges one step (``Recovery.check(step, loss)``: a good check step
                becomes its snapshot, so the state must be that of ``step`` when it is one).
        Returns:
            The first failed step, or None; either way the window is closed (``judged = step``).
        """
        first = self.judged + 1
        if step < first:
            return None
        for s in range(first, step):
            if s % self.check_every == 0:
                raise ValueError(f"step {s} is a check step inside the window {first}..{step}: "
                                 "its state is gone, the window should have ended there")
        values = losses[first - 1:step].tolist()  # the one host read
        self.judged, self.window_start = step, first
        for s, value in enumerate(values, start=first):
            why = recovery.check(s, value)
            if why is not None:
                return Failure(s, why, math.isfinite(value))
        return None
