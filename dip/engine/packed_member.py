"""One member of a packed fit: what it owns, and its recovery acting on its slices alone.

A member has its own observation and operator (the same ones for every member of an
ensemble, different ones for a batch of images), ground truth, reg-noise generator seeded like
a single fit with its seed, :class:`~dip.engine.tracking.Tracker` (average, PSNR history;
its stopping rule and held state run in the pack's vectorised ones,
:mod:`dip.stopping_packed`, and come back to the tracker with the member's result), recovery
record and learning-rate scale. A member that diverges is restored
alone: its slices of the packed parameters and Adam moments are loaded from its last good
check, and its own learning rate is lowered (:class:`MemberRecovery`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from dip.engine.config import FitConfig
from dip.engine.packed_state import load_member_optimizer_state, load_member_state, member_optimizer_state, member_state
from dip.engine.recovery import Recovery
from dip.engine.state import Snapshot
from dip.engine.tracking import Tracker

if TYPE_CHECKING:
    from dip.engine.packed_loop import PackedRun
    from dip.engine.result import FitResult


class Member:
    """Member ``index`` (its place among the fit's members, fixed) of a packed fit.

    Attributes: ``config`` (the fit's config with the member's ``seed``), ``y`` (1, C, h, w),
    ``physics``, ``gt`` (1, C, H, W) or None, ``z`` (1, D, Hz, Wz), ``rng`` (reg-noise
    generator seeded ``seed + 1``, as a single fit's), ``track``, ``recovery`` (a
    :class:`MemberRecovery`, set by the run), ``lr_scale`` (its rate ÷ the packed optimiser's),
    ``result`` (its :class:`~dip.engine.result.FitResult` once it has finished, else None).
    """

    def __init__(self, index: int, config: FitConfig, y: torch.Tensor, physics: nn.Module,
                 gt: torch.Tensor | None, z: torch.Tensor, device: torch.device) -> None:
        self.index, self.config, self.y, self.physics, self.gt, self.z = index, config, y, physics, gt, z
        self.rng = torch.Generator(device=device)
        self.rng.manual_seed(int(config.seed) + 1)
        self.track = Tracker(config, gt, device)
        self.recovery: MemberRecovery | None = None
        self.lr_scale = 1.0
        self.result: FitResult | None = None


class MemberRecovery(Recovery):
    """:class:`~dip.engine.recovery.Recovery` of one member: snapshots are the member's own
    generator and Adam states (as a single fit of it would hold them), restoring loads them into
    its slices and multiplies its ``lr_scale`` by ``recovery_lr_factor``. Other members are not
    touched. One difference from a single fit: Adam's step count (its bias correction) is the
    pack's and is not set back, so after a recovery the member's steps differ slightly from
    its single fit's (by at most ``check_every`` steps of bias correction, which fades as
    the fit goes on). ``position()`` gives the member's current place in the pack (it changes when
    finished members leave)."""

    def __init__(self, run: PackedRun, member: Member, snapshot: Snapshot | None = None,
                 backtracks: int = 0, recoveries: int = 0) -> None:
        self.run, self.member = run, member
        super().__init__(run.packed, lambda: run.fast.optimizer, member.z, member.config, snapshot,
                         backtracks, recoveries)

    def _capture(self, psnr: float | None) -> Snapshot:
        k, run = self.run.position(self.member), self.run
        return Snapshot(member_state(run.packed, k),
                        member_optimizer_state(run.fast.optimizer, run.packed.members, k, self.member.lr_scale),
                        None, psnr)

    def _load(self, snapshot: Snapshot) -> float:
        k, run = self.run.position(self.member), self.run
        load_member_state(run.packed, k, snapshot.generator_state)
        load_member_optimizer_state(run.fast.optimizer, run.packed.members, k, snapshot.optimizer_state)
        self.member.lr_scale *= self.config.recovery_lr_factor
        return float(run.fast.optimizer.param_groups[0]["lr"]) * self.member.lr_scale
