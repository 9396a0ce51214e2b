"""Packed fits: K fits of one architecture advanced together, one step of one packed network.

``fit_packed`` packs K generators (``dip.models.pack``: grouped convolutions, per-channel
BatchNorm) and fits every member k so that ``physics_k(G_k(z_k))`` matches ``y_k``. The
objective is the sum of the members' own losses, so each member's gradient is exactly its
single fit's; Adam acts elementwise, so each member's update is its single fit's too. Every
member keeps its own z, reg-noise stream (seeded like a single fit with its seed), average,
stopping rule, recovery and learning rate: member k follows the single fit of its seed, up to
the rounding of the grouped convolutions (float64: within 1e-8 after 20 steps,
``tests/engine/test_packed_fit.py``).

The members' stopping rules run as one (:class:`~dip.stopping_packed.PackedWindowedVarianceStopper`:
one kernel sequence per step and, on accelerators, one host read every 25 steps for all
members, each member's rule equal to its single fit's), and the generator state of each
member's returned step is kept with one ``torch.where`` per packed tensor for all members on
accelerators (:class:`~dip.engine.held_state.PackedHeldState`). A member's result gets its own
single rule and state, so its checkpoint is a single fit's.

A member that stops (its rule fires, or it diverges past ``max_recoveries``) leaves the pack
at once: its result is taken and the remaining members are packed again, so it costs nothing
from then on. A member that fails a step is restored alone, with its own lower learning rate
(:mod:`dip.engine.packed_member`; Adam's step count stays the pack's).

Not packed: LBFGS (its line search couples the members), optimising z, ``torch.compile``,
operators with trainable parameters (blind deblurring).
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from dip.engine.config import FitConfig
from dip.engine.geometry import fit_layout
from dip.engine.held_state import PackedHeldState
from dip.engine.loop import (
    _check_checkpoint_every,
    _check_observation,
    _device,
    place_ground_truth,
    resolve_auto_precision,
)
from dip.engine.losses import data_loss, tv_loss
from dip.engine.packed_member import Member, MemberRecovery
from dip.engine.packed_result import PackedFitResult
from dip.engine.packed_state import member_optimizer_state, member_state, packed_optimizer_state
from dip.engine.rendering import render
from dip.engine.result import FitResult, StepEvent
from dip.engine.state import FitState
from dip.engine.step import FastStep, load_optimizer_state, make_adam, working_dtype
from dip.models.packed import PackedGenerator, pack, unpack
from dip.runtime import use_channels_last
from dip.stopping import branch_free
from dip.stopping_packed import PackedWindowedVarianceStopper

log = logging.getLogger("dip.fit")

__all__ = ["fit_packed"]


def _per_member(name: str, value: Any, k: int, allow_none: bool = False) -> list[Any]:
    """``value`` for each of ``k`` members: a list of k, or one value shared by all."""
    if isinstance(value, (list, tuple)):
        if len(value) != k:
            raise ValueError(f"{name} has {len(value)} entries for {k} generators: give one per member or one for all")
        return list(value)
    if value is None and not allow_none:
        raise ValueError(f"{name} is None")
    return [value] * k


def _check_operators(physics: Sequence[nn.Module]) -> None:
    for k, op in enumerate(physics):
        if any(p.requires_grad for p in op.parameters()):
            raise ValueError(f"physics[{k}] ({type(op).__name__}) has trainable parameters (e.g. blind deblurring's "
                             "kernel generator): a packed fit fits the networks only; fit it alone")


def _check_config(config: FitConfig) -> None:
    if config.optimizer != "adam":
        raise ValueError(f"a packed fit runs Adam only (LBFGS's line search would couple the members), "
                         f"got optimizer={config.optimizer!r}; fit these members one by one")
    if config.optimize != "net":
        raise ValueError(f"a packed fit optimises the networks only, got optimize={config.optimize!r}")
    if config.compile:
        raise ValueError("a packed fit does not run torch.compile (the pack is rebuilt when members stop); "
                         "set compile=False")


class PackedRun:
    """A packed fit in progress: the members, the pack of those still fitting, its step."""

    def __init__(self, ys: list[torch.Tensor], physics: list[nn.Module], generators: Sequence[nn.Module],
                 zs: Sequence[torch.Tensor], config: FitConfig, seeds: list[int],
                 gts: list[torch.Tensor | None], resume: Mapping[str, Any] | None = None) -> None:
        self.device = _device(config)
        self.config = config = resolve_auto_precision(config, self.device)
        ys = [_check_observation(y) for y in ys]
        if any(tuple(y.shape) != tuple(ys[0].shape) for y in ys):
            raise ValueError(f"the members' observations differ in shape ({[tuple(y.shape) for y in ys]}): "
                             "pack only images of one size")
        layout = fit_layout(physics[0], generators[0], (int(ys[0].shape[-2]), int(ys[0].shape[-1])))
        for k, z in enumerate(zs):
            layout.check_code(z, f"zs[{k}]")
        self.crop, self.box, self.image_crop = layout.crop, layout.box, layout.image_crop
        self.dtype = working_dtype(generators[0], config.precision)
        self.channels = int(generators[0].config["out_channels"])  # type: ignore[index]
        self.channels_last = config.channels_last and use_channels_last(generators[0], config.precision, self.device)
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.members = [
            Member(k, config.updated(seed=int(seeds[k])), y.to(device=self.device, dtype=self.dtype),
                   physics[k].to(self.device), place_ground_truth(gts[k], layout.image_hw, self.device, self.dtype),
                   zs[k].to(device=self.device, dtype=self.dtype).contiguous(), self.device)
            for k, y in enumerate(ys)]
        self.first_step, self.prior_seconds = 1, 0.0
        self.want_events = True  # build the callbacks' event every step (fit_packed: only with callbacks)
        self.stoppers: PackedWindowedVarianceStopper | None = None  # the active members' rules
        if resume is None:
            self.active = list(self.members)
            self._start_rules()
            self._build(pack(list(generators)), None)
            for m in self.active:
                m.recovery = MemberRecovery(self, m)
        else:
            self._restore(resume, generators)
        self.start = time.perf_counter()

    def _restore(self, resume: Mapping[str, Any], generators: Sequence[nn.Module]) -> None:
        """Continue from ``PackedFitResult.resume_state()``: finished members keep their
        results, the others are packed again with their own states."""
        states = [FitState.from_dict(s) for s in resume.get("members", [])]
        if len(states) != len(self.members):
            raise ValueError(f"the resume state holds {len(states)} members but {len(self.members)} generators "
                             "were given: resume a pack with its own members")
        reasons = list(resume.get("stop_reasons") or [None] * len(states))
        details = list(resume.get("stop_details") or [""] * len(states))
        running = [m for m, why in zip(self.members, reasons, strict=True) if why not in ("auto", "diverged")]
        steps = {states[m.index].step for m in running}
        if len(steps) > 1:
            raise ValueError(f"the running members of the resume state have run different numbers of steps "
                             f"({sorted(steps)}); it is not a packed fit's state")
        for m, state in zip(self.members, states, strict=True):
            m.track.load(state.member, self.dtype)
            if m not in running:
                m.result = self._finished_result(m, state, generators[m.index], reasons[m.index], details[m.index])
        self.active = running
        if not running:
            return
        self._start_rules()
        step = steps.pop()
        self.first_step = step + 1
        if self.first_step > self.config.steps + 1:
            raise ValueError(f"cannot resume: the pack already ran {step} steps and config.steps is "
                             f"{self.config.steps}; ask for more steps")
        self.prior_seconds = states[running[0].index].seconds
        optimizer_states = [states[m.index].optimizer_state for m in running]
        self._build(pack([generators[m.index] for m in running]),
                    None if any(s is None for s in optimizer_states) else
                    packed_optimizer_state(optimizer_states, self.config.lr))  # type: ignore[arg-type]
        for m, optimizer_state in zip(running, optimizer_states, strict=True):
            member = states[m.index].member
            if member.rng_state is not None:
                m.rng.set_state(member.rng_state.cpu() if self.device.type == "cpu" else member.rng_state)
            if optimizer_state is not None:
                m.lr_scale = float(optimizer_state["param_groups"][0]["lr"]) / self.config.lr
            m.recovery = MemberRecovery(self, m, member.snapshot, member.backtracks, member.recoveries)

    def _start_rules(self) -> None:
        """The active members' stopping rules and held states, packed (from their trackers')."""
        tracks = [m.track for m in self.active]
        self.held = PackedHeldState(len(tracks), branch_free(self.device))
        self.held.load([t.best_state for t in tracks])
        if self.config.stop == "auto":
            self.stoppers = PackedWindowedVarianceStopper(len(tracks), **tracks[0].stopper.settings)
            self.stoppers.load_state_dicts([t.stopper.state_dict() for t in tracks], self.device)

    def _finished_result(self, m: Member, state: FitState, generator: nn.Module, reason: str,
                         detail: str) -> FitResult:
        """A member that had finished before the resume, as it ended."""
        generator = generator.to(device=self.device).train()
        image_plain = render(generator, m.z, self.image_crop, "fp32")
        image, _, _ = m.track.returned(reason, state.step, image_plain, lambda: {})
        return FitResult(image=image.cpu(), image_plain=image_plain.cpu(), generator=generator, z=m.z,
                         stop_reason=reason, crop=self.image_crop, config=m.config, state=state,
                         physics=m.physics, stop_detail=detail).scored(m.gt)

    def position(self, member: Member) -> int:
        """The member's place in the current pack."""
        return self.active.index(member)

    # ------------------------------------------------------------------ the pack
    def _build(self, packed: PackedGenerator, optimizer_state: Mapping[str, Any] | None) -> None:
        """Fit ``packed`` (the active members, in order) from here on."""
        self.packed = packed.to(device=self.device, memory_format=self.memory_format).train()  # type: ignore[call-overload]
        z = torch.cat([m.z for m in self.active], dim=1).contiguous(memory_format=self.memory_format)
        self.z = z
        params = [p for p in packed.parameters() if p.requires_grad]
        config = self.config
        regularizer = self._tv if config.tv_weight else None
        self.fast = FastStep(self.packed, z, self._loss, reg_noise_std=config.reg_noise_std,
                             precision=config.precision, channels_last=self.channels_last, params=params,
                             generator_rng=[m.rng for m in self.active], crop=self.crop,
                             optimizer=make_adam(params, config.lr), regularizer=regularizer)
        if optimizer_state is not None:
            load_optimizer_state(self.fast.optimizer, optimizer_state)
        self.member_losses = torch.zeros(len(self.active), device=self.device)

    def _blocks(self, out: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return out.split(self.channels, dim=1)

    def _loss(self, out: torch.Tensor) -> torch.Tensor:
        """The sum of the members' data losses (each member's gradient is its own loss's)."""
        losses = torch.stack([data_loss(m.physics, block, m.y)
                              for m, block in zip(self.active, self._blocks(out), strict=True)])
        self.member_losses = losses.detach()
        return losses.sum()

    def _tv(self, out: torch.Tensor) -> torch.Tensor:
        return self.config.tv_weight * sum(tv_loss(block) for block in self._blocks(out))  # type: ignore[return-value]

    def _repack(self) -> None:
        """Drop finished members: pack the others again, with their Adam state."""
        keep = [k for k, m in enumerate(self.active) if m.result is None]
        if len(keep) == len(self.active):
            return
        optimizer, size = self.fast.optimizer, self.packed.members
        states = [member_optimizer_state(optimizer, size, k) for k in keep]
        generators = [unpack(self.packed, k) for k in keep]
        self.active = [self.active[k] for k in keep]
        if self.active:
            self.held.subset(keep)
            if self.stoppers is not None:
                self.stoppers.subset(keep)
            log.info("%d member(s) still fitting; the pack now has %d", len(keep), len(keep))
            self._build(pack(generators), packed_optimizer_state(states, self.config.lr))

    # ------------------------------------------------------------------ one step
    def step(self, step: int) -> StepEvent | None:
        """Take step ``step`` for every active member; finished members leave the pack. Returns
        the callbacks' event, None when no member's output of this step is an image."""
        slowed = [(k, m) for k, m in enumerate(self.active) if m.lr_scale != 1.0]
        before = [self._member_params(k, clone=True) for k, _ in slowed]
        _, out = self.fast()
        for (k, m), old in zip(slowed, before, strict=True):  # a restored member's own, lower rate
            with torch.no_grad():
                for new, prior in zip(self._member_params(k), old, strict=True):
                    new.copy_(torch.lerp(prior, new, m.lr_scale))
        losses = self.member_losses.tolist()  # the step's one host sync: no non-finite loss may spread
        finishing: list[tuple[Member, str, str]] = []
        images = self._member_images(out)  # (K, 1, C, H, W), row k member k's restored image
        observed = [False] * len(self.active)
        for k, (m, value) in enumerate(zip(list(self.active), losses, strict=True)):
            m.track.losses[step - 1] = self.member_losses[k]
            failure = m.recovery.check(step, value)
            if failure is not None:
                m.recovery.restore(step, failure)
                if m.recovery.exhausted:
                    detail = (f"stopped at step {step}: {failure}, the {m.recovery.recoveries}th failure "
                              f"(max_recoveries {self.config.max_recoveries}); kept the last good state")
                    log.warning("member %d %s", m.index, detail)
                    finishing.append((m, "diverged", detail))
                    continue
                if not math.isfinite(value):
                    continue  # this step's output is not an image: keep it out of the member's record
            m.track.record(step, images[k])
            observed[k] = True
        fired = self._stopping(step, images, observed)
        finishing += [(m, "auto", self.stoppers.reason(k)) for k, m in enumerate(self.active) if fired[k]]
        going_on = [(m, images[k]) for k, m in enumerate(self.active) if observed[k] and not fired[k]]
        event = self._event(step, going_on) if going_on and self.want_events else None
        self._finish(finishing, step)
        return event

    def _member_images(self, out: torch.Tensor) -> torch.Tensor:
        """The packed output (1, K*C, H', W') as the members' restored images (K, 1, C, H, W)
        (a view: the operator's input less its margin)."""
        images = out.unflatten(1, (len(self.active), self.channels)).transpose(0, 1)
        if self.box is not None:
            top, left, h, w = self.box
            images = images[..., top:top + h, left:left + w]
        return images

    def _stopping(self, step: int, images: torch.Tensor, observed: list[bool]) -> list[bool]:
        """Feed the members' rules (vectorised, no host read on accelerators but every
        ``sync_every`` steps) and keep the states of their returned steps; True for the
        observed members whose rule fired at this step."""
        if self.stoppers is None or not any(observed):
            return [False] * len(observed)
        stoppers, tracks = self.stoppers, [m.track for m in self.active]
        returned = None
        if not stoppers.return_mean and any(t.out_avg is not None for t in tracks):
            returned = torch.stack([t.out_avg if t.out_avg is not None else images[k] for k, t in enumerate(tracks)])
        fired = stoppers.update(step, images, returned=returned, observed=observed)
        self.held.offer(stoppers.held_now(step), self.packed)
        return [f and o for f, o in zip(fired, observed, strict=True)]

    def _hand_over(self, m: Member, k: int) -> None:
        """Give member ``m`` (at position ``k``) its own stopping rule and held state, as a
        single fit holds them (for its result)."""
        if self.stoppers is not None:
            m.track.stopper = self.stoppers.member(k)
        m.track.held.load(self.held.member(k))

    def _member_params(self, k: int, clone: bool = False) -> list[torch.Tensor]:
        size = self.packed.members
        views = [p.detach().chunk(size, dim=0)[k] for p in self.fast.params]
        return [v.clone() for v in views] if clone else views

    def _event(self, step: int, members: list[tuple[Member, torch.Tensor]]) -> StepEvent:
        """The callbacks' view of the pack: the mean loss, output and average of ``members``."""
        tracks = [m.track for m, _ in members]
        loss = torch.stack([t.losses[step - 1] for t in tracks]).mean()
        output = torch.stack([image for _, image in members]).mean(0)
        avgs = [t.out_avg for t in tracks]
        output_avg = torch.stack(avgs).mean(0) if all(a is not None for a in avgs) else None  # type: ignore[misc]
        psnrs = [t.last_psnr for t in tracks if t.last_psnr is not None]
        return StepEvent(step, self.config.steps, loss, output, output_avg, sum(psnrs) / len(psnrs) if psnrs else None)

    # ------------------------------------------------------------------ results
    def _finish(self, finishing: list[tuple[Member, str, str]], step: int) -> None:
        if not finishing:
            return
        plain = self._blocks(render(self.packed, self.z.detach(), self.image_crop, "fp32"))
        for m, reason, detail in finishing:
            k = self.position(m)
            m.result = self._member_result(m, k, reason, step, detail, plain[k])
        self._repack()

    def _member_result(self, m: Member, k: int, reason: str, steps_run: int, detail: str,
                       image_plain: torch.Tensor) -> FitResult:
        self._hand_over(m, k)
        image, returned_step, returned_state = m.track.returned(reason, steps_run, image_plain,
                                                                lambda: member_state(self.packed, k))
        member = m.track.member_state(steps_run, m.rng, returned_state, returned_step, m.recovery)
        state = FitState(step=steps_run, seconds=self.prior_seconds + time.perf_counter() - self.start,
                         optimizer_state=member_optimizer_state(self.fast.optimizer, self.packed.members, k,
                                                                m.lr_scale), members=[member])
        return FitResult(image=image.cpu(), image_plain=image_plain.cpu(), generator=unpack(self.packed, k),
                         z=m.z.detach(), stop_reason=reason, crop=self.image_crop, config=m.config, state=state,
                         physics=m.physics, stop_detail=detail).scored(m.gt)

    def result(self, stop_reason: str, steps_run: int, detail: str) -> PackedFitResult:
        """Every member's result after ``steps_run`` steps: a finished member's as it ended,
        the others' with ``stop_reason`` (no state of the run is changed)."""
        if self.active:
            plain = self._blocks(render(self.packed, self.z.detach(), self.image_crop, "fp32"))
            current = {m.index: self._member_result(m, k, stop_reason, steps_run, detail, plain[k])
                       for k, m in enumerate(self.active)}
        else:
            current = {}
        return PackedFitResult([m.result if m.result is not None else current[m.index] for m in self.members])


def fit_packed(y: torch.Tensor | Sequence[torch.Tensor], physics: nn.Module | Sequence[nn.Module],
               generators: Sequence[nn.Module], zs: Sequence[torch.Tensor], config: FitConfig, *,
               seeds: Sequence[int] | None = None, gt: torch.Tensor | Sequence[torch.Tensor | None] | None = None,
               callbacks: Sequence[Callable[[StepEvent], None]] = (), resume: Mapping[str, Any] | None = None,
               stop_event: Any | None = None, checkpoint_every: int | None = None,
               on_checkpoint: Callable[[PackedFitResult], None] | None = None) -> PackedFitResult:
    """Fit K members at once: member k so that ``physics_k(G_k(z_k))`` matches ``y_k``.

    Args:
        y: one observation (C, h, w) or (1, C, h, w) for every member (an ensemble), or K of
            them of one size (a batch of images).
        physics: one operator for all members, or K.
        generators: K ``dip.models`` generators of one class and config (e.g. built with
            different seeds); they are packed (copied) and not changed.
        zs: the K members' codes, each (1, D, Hz, Wz) (``generator_geometry``'s size).
        config: ``FitConfig`` shared by the members (Adam, ``optimize="net"``, no compile).
        seeds: member k's seed (default ``config.seed + k``): its reg-noise stream is that of a
            single fit with ``config.seed = seeds[k]``, and its result's config has that seed.
        gt: ground truth for every member, or K (entries may be None).
        callbacks: called like ``fit``'s with a ``StepEvent`` of the members still fitting: their
            mean loss, mean output, mean average and mean PSNR.
        resume: ``PackedFitResult.resume_state()`` of an earlier pack, with that pack's member
            generators (``[m.generator for m in result.members]``) and codes; finished members
            keep their results.
        stop_event, checkpoint_every, on_checkpoint: as for ``fit``; ``on_checkpoint`` gets the
            ``PackedFitResult`` so far.

    Returns:
        ``PackedFitResult``: member k's single-fit ``FitResult`` (a standard generator, its own
        optimiser state and learning rate: resumable alone with ``fit``).
    """
    config.validate()
    _check_config(config)
    _check_checkpoint_every(checkpoint_every)
    if isinstance(generators, nn.Module) or not generators:
        raise ValueError("generators must be a non-empty list of generators")
    k = len(generators)
    if len(zs) != k:
        raise ValueError(f"{len(zs)} codes for {k} generators: give one z per member")
    member_seeds = [int(config.seed) + i for i in range(k)] if seeds is None else [int(s) for s in seeds]
    if len(member_seeds) != k:
        raise ValueError(f"{len(member_seeds)} seeds for {k} generators: give one seed per member")
    operators = _per_member("physics", physics, k)
    _check_operators(operators)
    run = PackedRun(_per_member("y", y, k), operators, generators, zs, config,
                    member_seeds, _per_member("gt", gt, k, allow_none=True), resume)
    every = [max(1, int(getattr(cb, "every", 1))) for cb in callbacks]
    run.want_events = bool(callbacks)
    run.start = time.perf_counter()
    step, stop_reason, detail = run.first_step - 1, "steps", ""
    for step in range(run.first_step, config.steps + 1):
        if not run.active:
            step -= 1
            break
        event = run.step(step)
        if event is not None:
            for cb, n in zip(callbacks, every, strict=True):
                if step % n == 0 or step == config.steps:
                    cb(event)
        if not run.active:
            break
        if stop_event is not None and stop_event.is_set() and step < config.steps:
            stop_reason, detail = "interrupted", f"interrupted after step {step} of {config.steps}"
            break
        if (on_checkpoint is not None and checkpoint_every is not None and step % checkpoint_every == 0
                and step < config.steps):
            on_checkpoint(run.result("running", step, f"checkpoint at step {step} of {config.steps}"))
    if stop_reason == "steps":
        detail = f"ran all {step} steps"
    return run.result(stop_reason, step, detail)
