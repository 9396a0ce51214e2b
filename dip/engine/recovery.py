"""Divergence recovery: keep the state of the last good check, detect a failed step, restore.

A step fails when its loss is not finite (checked every step) or, with backtracking, when the
fit PSNR at a check (every ``check_every`` steps) fell by more than ``backtrack_threshold_db``
since the last good check. Restoring loads that check's parameters, optimiser state (in each
parameter's own layout) and, when it is optimised, z, and multiplies the learning rate by
``recovery_lr_factor``. The original code restores parameters only and keeps the rate. An
operator that is fitted too (a blind blur) is restored with the generator; a recovery while
its rate is held (the warm-up, ``FitConfig.physics_warmup_steps``) lowers the rate it gets when
released too (``dip.engine.operator_state.release``).
"""
from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable

import torch
from torch import nn

from dip.engine import operator_state
from dip.engine.config import FitConfig
from dip.engine.state import Snapshot
from dip.engine.step import load_optimizer_state

log = logging.getLogger("dip.fit")


def clone_state(module: nn.Module) -> dict:
    """Detached copies of ``module``'s state_dict tensors."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class Recovery:
    """The recovery of one fit.

    Args:
        generator: the network being fitted (restored in place).
        optimizer: callable returning the optimiser in use (it may be replaced, e.g. by LBFGS).
        z: the input code (1, D, Hz, Wz); restored too when it requires grad.
        config: the fit's settings (``backtrack``, ``check_every``, thresholds, factors).
        snapshot, backtracks, recoveries: state of a resumed fit; without a snapshot one is
            taken now (the state to fall back to before the first check).
        physics: the operator, kept and restored with the generator when it has trainable
            parameters (``dip.engine.operator_state``).
    """

    def __init__(self, generator: nn.Module, optimizer: Callable[[], torch.optim.Optimizer],
                 z: torch.Tensor, config: FitConfig, snapshot: Snapshot | None = None,
                 backtracks: int = 0, recoveries: int = 0, physics: nn.Module | None = None) -> None:
        self.generator, self.optimizer, self.z, self.config = generator, optimizer, z, config
        self.physics = physics
        self.backtracks, self.recoveries = int(backtracks), int(recoveries)
        self.snapshot = snapshot if snapshot is not None else self.take(psnr=None)

    def take(self, psnr: float | None) -> Snapshot:
        """Make the current state the last good one (``psnr``: the fit PSNR now, dB)."""
        self.snapshot = self._capture(psnr)
        return self.snapshot

    def _capture(self, psnr: float | None) -> Snapshot:
        return Snapshot(clone_state(self.generator), copy.deepcopy(self.optimizer().state_dict()),
                        self.z.detach().clone() if self.z.requires_grad else None, psnr,
                        None if self.physics is None else operator_state.state_of(self.physics))

    def _load(self, snapshot: Snapshot) -> float:
        """Load ``snapshot`` and lower the learning rate; returns the new rate."""
        optimizer = self.optimizer()
        lrs = [group["lr"] for group in optimizer.param_groups]
        self.generator.load_state_dict(snapshot.generator_state)
        load_optimizer_state(optimizer, snapshot.optimizer_state)
        for group, lr in zip(optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr * self.config.recovery_lr_factor
        if self.physics is not None:
            operator_state.load_state(self.physics, snapshot.physics_state)
        if snapshot.z is not None:
            with torch.no_grad():
                self.z.copy_(snapshot.z)
        return float(optimizer.param_groups[0]["lr"])

    def check(self, step: int, loss: float) -> str | None:
        """Judge the step just taken (``loss``: its data loss). Returns why it failed, or None;
        a good check becomes the new snapshot."""
        if not math.isfinite(loss):
            return f"the loss is {loss}"
        if step % self.config.check_every:
            return None
        fit_psnr = -10.0 * math.log10(max(loss, 1e-20))
        good_psnr = self.snapshot.psnr
        if (self.config.backtrack and good_psnr is not None
                and fit_psnr < good_psnr - self.config.backtrack_threshold_db):
            self.backtracks += 1
            return f"the fit PSNR fell {good_psnr - fit_psnr:.1f} dB since the last check"
        self.take(fit_psnr)
        return None

    @property
    def exhausted(self) -> bool:
        """Whether the failures reached ``max_recoveries`` (the fit should stop)."""
        return self.recoveries >= self.config.max_recoveries

    def restore(self, step: int, why: str) -> None:
        """Load the last good state and lower the learning rate; ``why`` goes to the log."""
        lr = self._load(self.snapshot)
        self.recoveries += 1
        log.info("step %d: %s; restored the state of the last good check, learning rate now %.3g "
                 "(recovery %d of at most %d)", step, why, lr, self.recoveries, self.config.max_recoveries)
