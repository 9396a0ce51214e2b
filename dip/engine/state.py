"""The engine's state between two steps, as types with one dictionary schema.

A fit can be continued exactly from a :class:`FitState`: ``FitResult.resume_state()`` writes
it with :meth:`FitState.to_dict`, ``fit(resume=...)`` reads it with :meth:`FitState.from_dict`,
and ``dip.checkpoint`` stores the same dictionary in a file. State shared by the whole network
(step, optimiser, time) sits in :class:`FitState`; what belongs to one fitted image (reg-noise
generator, averaged output, stopping rule, recovery, history) sits in a :class:`MemberState`,
one per member, so that K fits packed into one network can each keep their own. Today the
engine fits one member.

Dictionary schema (one member; the keys of checkpoint format 1)::

    step             int, steps run
    seconds          float, wall-clock seconds of those steps
    optimizer_state  torch.optim.Optimizer.state_dict() or None
    rng_state        uint8 tensor of the reg-noise torch.Generator, or None
    image_avg        (1, C, H, W) float32 averaged output, or None
    stopper_state    dip.stopping state_dict, or None
    returned_state   generator state_dict at the step whose image is returned, or None
    returned_step    int or None
    backtrack_state  {"good_psnr", "good_state", "good_optimizer", "good_z", "good_physics"} or None
    backtracks, recoveries   ints
    history          {"step", "loss", "psnr_step", "psnr", "psnr_avg": lists}
    physics_state    the operator's state_dict after ``step`` steps when it is fitted too (a blind
                     blur's kernel generator, ``dip.engine.operator_state``), else None
    returned_physics_state   the operator's state_dict at ``returned_step``, or None

States written before the operator could be fitted lack the last two keys (and
``good_physics``): they read as None, which is what they were.

With K > 1 members the shared keys stay at the top and ``members`` holds K dictionaries of the
member keys.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

Tensors = dict[str, torch.Tensor]

_SHARED_KEYS = ("step", "seconds", "optimizer_state")


@dataclass(frozen=True)
class Snapshot:
    """The state of the last good check, which recovery restores.

    Attributes:
        generator_state: the generator's state_dict (its own copies).
        optimizer_state: the optimiser's state_dict (deep copy).
        z: the input code (1, D, Hz, Wz) when it is optimised too, else None.
        psnr: the fit PSNR (dB, of A(G(z)) against y) at that check; None before the first.
        physics_state: the operator's state_dict when it is fitted too, else None.
    """

    generator_state: Tensors
    optimizer_state: dict[str, Any]
    z: torch.Tensor | None = None
    psnr: float | None = None
    physics_state: Tensors | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"good_psnr": self.psnr, "good_state": self.generator_state,
                "good_optimizer": self.optimizer_state, "good_z": self.z, "good_physics": self.physics_state}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> Snapshot | None:
        """The snapshot of ``to_dict()``; None for None or a dict without a generator state."""
        if not d or d.get("good_state") is None:
            return None
        psnr = d.get("good_psnr")
        return cls(generator_state=dict(d["good_state"]), optimizer_state=d["good_optimizer"],
                   z=d.get("good_z"), psnr=None if psnr is None else float(psnr),
                   physics_state=d.get("good_physics"))


def _empty_history() -> dict[str, list[float]]:
    return {"step": [], "loss": [], "psnr_step": [], "psnr": [], "psnr_avg": []}


@dataclass
class MemberState:
    """What one fitted image owns; see the module docstring for the meaning of each field."""

    rng_state: torch.Tensor | None = None
    image_avg: torch.Tensor | None = None
    stopper_state: Tensors | None = None
    returned_state: Tensors | None = None
    returned_step: int | None = None
    snapshot: Snapshot | None = None
    backtracks: int = 0
    recoveries: int = 0
    history: dict[str, list[float]] = field(default_factory=_empty_history)
    physics_state: Tensors | None = None
    returned_physics_state: Tensors | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"rng_state": self.rng_state, "image_avg": self.image_avg,
                "stopper_state": self.stopper_state, "returned_state": self.returned_state,
                "returned_step": self.returned_step,
                "backtrack_state": None if self.snapshot is None else self.snapshot.to_dict(),
                "backtracks": self.backtracks, "recoveries": self.recoveries, "history": self.history,
                "physics_state": self.physics_state, "returned_physics_state": self.returned_physics_state}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MemberState:
        backtracks = int(d.get("backtracks") or 0)
        recoveries = d.get("recoveries")
        history = _empty_history()
        history.update({k: list(v) for k, v in (d.get("history") or {}).items()})
        returned_step = d.get("returned_step")
        return cls(rng_state=d.get("rng_state"), image_avg=d.get("image_avg"),
                   stopper_state=d.get("stopper_state"), returned_state=d.get("returned_state"),
                   returned_step=None if returned_step is None else int(returned_step),
                   snapshot=Snapshot.from_dict(d.get("backtrack_state")), backtracks=backtracks,
                   recoveries=backtracks if recoveries is None else int(recoveries), history=history,
                   physics_state=d.get("physics_state"), returned_physics_state=d.get("returned_physics_state"))


@dataclass
class FitState:
    """The engine's state after ``step`` steps: shared parts and one :class:`MemberState` per
    fitted image."""

    step: int = 0
    seconds: float = 0.0
    optimizer_state: dict[str, Any] | None = None
    members: list[MemberState] = field(default_factory=lambda: [MemberState()])

    @property
    def member(self) -> MemberState:
        """The only member of a single fit (ValueError for a packed state)."""
        if len(self.members) != 1:
            raise ValueError(f"this state holds {len(self.members)} members; pick one from .members")
        return self.members[0]

    def to_dict(self) -> dict[str, Any]:
        shared = {"step": self.step, "seconds": self.seconds, "optimizer_state": self.optimizer_state}
        if len(self.members) == 1:
            return {**shared, **self.members[0].to_dict()}
        return {**shared, "members": [m.to_dict() for m in self.members]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | FitState) -> FitState:
        """Read ``to_dict()``'s schema; a ``FitState`` is returned as it is."""
        if isinstance(d, FitState):
            return d
        if not isinstance(d, Mapping) or "step" not in d:
            raise ValueError("a resume state must be FitResult.resume_state() (a dict with 'step', "
                             f"'optimizer_state', ...), got {type(d).__name__}")
        step = d["step"]
        if isinstance(step, bool) or int(step) != step or step < 0:
            raise ValueError(f"resume state 'step' must be an integer >= 0, got {step!r}")
        if "members" in d:
            members = [MemberState.from_dict(m) for m in d["members"]]
        else:
            members = [MemberState.from_dict({k: v for k, v in d.items() if k not in _SHARED_KEYS})]
        return cls(step=int(step), seconds=float(d.get("seconds") or 0.0),
                   optimizer_state=d.get("optimizer_state"), members=members)
