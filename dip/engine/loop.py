"""The optimisation loop: ``fit`` and the run it orchestrates.

``fit`` runs the loop of the original notebooks — Adam (or LBFGS), reg-noise on the input,
output averaging, backtracking — plus what they lack: any image size (the code z is sized
to the network's multiple and the output cropped back), automatic stopping, callbacks that do
not force a host sync, bf16 autocast, exact resume, and a result object.

Differences from the original, on purpose:

- The returned plain image is G(z) on the clean code z (BatchNorm in training mode), rendered
  after the last step; the original shows the output of the last *perturbed* input
  z + reg-noise.  The averaged image (``exp_weight``) averages the perturbed outputs, as the
  original does.
- Backtracking checks the fit every ``check_every`` steps (default 10): when the PSNR of the
  fit to the observation has dropped by more than ``backtrack_threshold_db`` since the last
  check, parameters *and optimiser state* are restored from that check (the original restores
  parameters only, and because of its ``if i % show_every`` test checks at almost every step).
  See :mod:`dip.engine.recovery`.
- LBFGS runs one function evaluation per step (``max_iter=1`` per call, state carried
  across calls) after the original's 100 Adam steps at lr 1e-3.

On a CUDA device an Adam fit replays its step as a CUDA graph (:mod:`dip.engine.captured_step`,
where :func:`~dip.engine.captured_step.capture_plan` allows it; the log says which way a fit
runs and why) and judges its losses a window of steps at a time (:mod:`dip.engine.deferred`,
``_FitRun._settle``) instead of reading every step's loss; on the CPU every step is eager.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import torch
from torch import nn

from dip.engine import operator_state
from dip.engine.captured_step import CapturedStep, capture_plan, is_fused
from dip.engine.config import FitConfig
from dip.engine.deferred import DeferredCheck
from dip.engine.geometry import fit_layout
from dip.engine.held_state import HeldState
from dip.engine.losses import data_loss, tv_loss
from dip.engine.recovery import Recovery, clone_state
from dip.engine.rendering import render
from dip.engine.result import FitResult, StepEvent
from dip.engine.state import FitState
from dip.engine.step import FastStep, load_optimizer_state, make_adam, working_dtype
from dip.engine.tracking import Tracker
from dip.runtime import choose_precision, use_channels_last
from dip.stopping import branch_free

log = logging.getLogger("dip.fit")

Callback = Callable[[StepEvent], None]

def _check_observation(y: torch.Tensor) -> torch.Tensor:
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"observation y must be a torch.Tensor, got {type(y).__name__}")
    if y.dim() == 3:
        y = y[None]
    if y.dim() != 4 or y.shape[0] != 1:
        raise ValueError(f"observation y must have shape (C, H, W) or (1, C, H, W), got {tuple(y.shape)}")
    if y.numel() == 0:
        raise ValueError(f"observation y is empty (shape {tuple(y.shape)})")
    if not y.is_floating_point():
        raise TypeError(f"observation y must be a float tensor in [0, 1], got dtype {y.dtype}")
    if not bool(torch.isfinite(y).all()):
        bad = int((~torch.isfinite(y)).sum())
        raise ValueError(f"observation y has {bad} non-finite value(s) (NaN or inf); replace them "
                         "(e.g. mark them missing with a mask and inpaint)")
    return y


def place_ground_truth(gt: torch.Tensor | None, hw: tuple[int, int], device: torch.device,
                       dtype: torch.dtype) -> torch.Tensor | None:
    """The ground truth (C, H, W) or (1, C, H, W) as (1, C, H, W) on ``device`` in ``dtype``,
    checked to have the restored image's size ``hw``; None stays None."""
    if gt is None:
        return None
    gt = gt[None] if gt.dim() == 3 else gt
    if tuple(gt.shape[-2:]) != tuple(hw):
        raise ValueError(f"ground truth must have size {tuple(hw)}, got {tuple(gt.shape[-2:])}")
    return gt.to(device=device, dtype=dtype)


def _check_checkpoint_every(checkpoint_every: int | None) -> None:
    if checkpoint_every is not None and (isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int)
                                         or checkpoint_every < 1):
        raise ValueError(f"checkpoint_every must be an integer >= 1 or None, got {checkpoint_every!r}")


def resolve_auto_precision(config: FitConfig, device: torch.device) -> FitConfig:
    """``config`` with ``precision="auto"`` replaced by what this device runs (logged with why), so
    that the result's config records the precision that ran; other precisions unchanged."""
    if config.precision != "auto":
        return config
    precision, why = choose_precision("auto", device)
    log.info("precision %s (%s)", precision, why)
    return config.updated(precision=precision)


def _device(config: FitConfig) -> torch.device:
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but CUDA is not available; use device='cpu'")
    return device


class _FitRun:
    """One fit in progress: the generator placed on its device, the step, the member's state
    (average, stopping rule, recovery, history) and the loop over steps."""

    def __init__(self, y: torch.Tensor, physics: nn.Module, generator: nn.Module, z: torch.Tensor,
                 config: FitConfig, gt: torch.Tensor | None) -> None:
        self.device = _device(config)
        config = resolve_auto_precision(config, self.device)
        self.config, self.physics, self.generator = config, physics, generator
        self.dtype = working_dtype(generator, config.precision)
        y = _check_observation(y)
        layout = fit_layout(physics, generator, (int(y.shape[-2]), int(y.shape[-1])))
        layout.check_code(z)
        # the operator's input inside the generator's output; the restored image inside the
        # operator's input (all of it, but for a "valid" blur's margin) and inside the output
        self.crop, self.box, self.image_crop = layout.crop, layout.box, layout.image_crop
        self.gt = place_ground_truth(gt, layout.image_hw, self.device, self.dtype)
        self._place(y, z)
        self.fast = self._build_step()
        self.track = Tracker(config, self.gt, self.device)
        # the operator's state at the returned step (beside the tracker's best_state), if it is fitted
        self.held_physics = HeldState(branch_free(self.device)) if operator_state.trainable(physics) else None
        self.first_step = 1
        self.prior_seconds = 0.0
        self.recovery: Recovery | None = None
        # the captured step and the checks it defers (restore() decides; None: every step eager)
        self.captured: CapturedStep | None = None
        self.deferred: DeferredCheck | None = None
        self.mark: dict | None = None  # the record at the last judged step (rolled back to on a failure)
        self.start = time.perf_counter()

    # ------------------------------------------------------------------ set-up

    def _place(self, y: torch.Tensor, z: torch.Tensor) -> None:
        """Generator, operator, y and z on the device, in the layout the hardware prefers."""
        config = self.config
        # LBFGS flattens gradients with view(), which needs contiguous (NCHW) parameters
        self.channels_last = config.channels_last and use_channels_last(self.generator, config.precision,
                                                                        self.device, config.optimizer)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.generator.to(device=self.device, memory_format=memory_format).train()  # type: ignore[call-overload]
        self.physics.to(self.device)
        self.y = y.to(device=self.device, dtype=self.dtype)
        self.z = z.to(device=self.device, dtype=self.dtype).contiguous(memory_format=memory_format)
        self.rng = torch.Generator(device=self.device)
        self.rng.manual_seed(int(config.seed) + 1)

    def _build_step(self) -> FastStep:
        config = self.config
        self.params: list[torch.Tensor] = []
        if config.optimize in ("net", "both"):
            self.params += [p for p in self.generator.parameters() if p.requires_grad]
        if config.optimize in ("input", "both"):
            self.z.requires_grad_(True)
            self.params.append(self.z)
        use_lbfgs = config.optimizer == "lbfgs"
        self.lbfgs_from = min(config.lbfgs_warmup_steps, config.steps) if use_lbfgs else None
        lr = 0.001 if use_lbfgs else config.lr
        # a trainable operator (blind blur) is fitted too, in its own Adam group; LBFGS: one rate
        groups = operator_state.param_groups(self.params, self.physics, lr, config.physics_lr,
                                             held=config.physics_warmup_steps > 0)
        self.params += operator_state.trainable(self.physics)
        regularizer = (lambda out: config.tv_weight * tv_loss(out)) if config.tv_weight else None
        network = cast(nn.Module, torch.compile(self.generator)) if config.compile else self.generator
        return FastStep(network, self.z, lambda out: data_loss(self.physics, out, self.y),
                        reg_noise_std=config.reg_noise_std, precision=config.precision,
                        channels_last=self.channels_last, params=self.params, generator_rng=self.rng,
                        crop=self.crop, optimizer=make_adam(groups, lr), regularizer=regularizer)

    def _switch_to_lbfgs(self) -> None:
        """One function evaluation per step, history carried across steps (see the module doc).
        The rate is ``config.lr`` lowered once per recovery so far, so that a recovery during the
        Adam warm-up keeps its reduction (on resume the checkpoint's LBFGS state sets the rate)."""
        recoveries = self.recovery.recoveries if self.recovery is not None else 0
        lr = self.config.lr * self.config.recovery_lr_factor ** recoveries
        self.fast.optimizer = torch.optim.LBFGS(self.params, lr=lr, max_iter=1, tolerance_grad=-1,
                                                tolerance_change=-1, history_size=100)

    def restore(self, resume: Mapping[str, Any] | FitState | None) -> None:
        """Continue from ``resume`` (a ``FitState`` or its dict), or start afresh when None; then
        decide whether the steps are captured as a CUDA graph (:meth:`_plan_capture`)."""
        if resume is None:
            self.recovery = Recovery(self.generator, lambda: self.fast.optimizer, self.z, self.config,
                                     physics=self.physics)
        else:
            self._resume(resume)
        self._plan_capture()

    def _plan_capture(self) -> None:
        """The captured step where :func:`capture_plan` allows it, logged with its reason on
        CUDA (on the CPU nothing is logged and every step stays eager)."""
        config = self.config
        ok, reason = capture_plan(config, self.device, operator_trainable=bool(operator_state.trainable(self.physics)),
                                  fused=is_fused(self.fast.optimizer), steps_left=config.steps - self.first_step + 1)
        if not ok:
            if self.device.type == "cuda":
                log.info("CUDA graph not used: %s; every step runs eagerly", reason)
            return
        self.deferred = DeferredCheck(config.check_every, judged=self.first_step - 1)
        log.info("CUDA graph: %s; the losses are checked every %d steps (at most) instead of every step",
                 reason, self.deferred.longest)
        self.captured = CapturedStep(self.fast)
        self.mark = self.track.mark(self.deferred.longest)

    def _resume(self, resume: Mapping[str, Any] | FitState) -> None:
        state = FitState.from_dict(resume)
        member = state.member
        config = self.config
        self.first_step = state.step + 1
        if self.first_step > config.steps + 1:
            raise ValueError(f"cannot resume: the fit already ran {state.step} steps and config.steps is "
                             f"{config.steps}; ask for more steps")
        if self.lbfgs_from is not None and self.first_step > self.lbfgs_from + 1:
            self._switch_to_lbfgs()
        if state.optimizer_state is not None:
            load_optimizer_state(self.fast.optimizer, state.optimizer_state)
        operator_state.load_state(self.physics, member.physics_state)
        if member.rng_state is not None:
            self.rng.set_state(member.rng_state.cpu() if self.device.type == "cpu" else member.rng_state)
        self.track.load(member, self.dtype)
        if self.held_physics is not None:
            self.held_physics.load(member.returned_physics_state)
        self.recovery = Recovery(self.generator, lambda: self.fast.optimizer, self.z, config, member.snapshot,
                                 member.backtracks, member.recoveries, physics=self.physics)
        self.prior_seconds = state.seconds

    # ------------------------------------------------------------------ one step
    def step(self, step: int) -> tuple[str | None, str, StepEvent | None]:
        """Take step ``step``. Returns (stop reason or None, detail, the event for callbacks —
        None when the step's output is not an image)."""
        if self.captured is not None:
            return self._captured_step(step)
        return self._eager_step(step)

    def _eager_step(self, step: int) -> tuple[str | None, str, StepEvent | None]:
        """One step judged at once (one host read of its loss)."""
        if self.lbfgs_from is not None and step == self.lbfgs_from + 1:
            self._switch_to_lbfgs()
            self.recovery.take(self.recovery.snapshot.psnr)  # earlier Adam snapshots do not fit LBFGS
        if step == self.config.physics_warmup_steps + 1 > 1:  # the operator's warm-up ends
            # keeping the rate reduction of any recovery during the warm-up (its count is in checkpoints)
            operator_state.release(self.fast.optimizer, self.config.lr, self.config.physics_lr,
                                   self.recovery.recoveries, self.config.recovery_lr_factor)
        if self.config.physics_steps is not None and step == self.config.physics_warmup_steps \
                + self.config.physics_steps + 1:  # the operator has been fitted for its steps: held again
            operator_state.hold(self.fast.optimizer)
        loss, out = self.fast()
        self.track.losses[step - 1] = loss
        loss_value = float(loss)  # one host sync per step: a non-finite loss must not spread
        failure = self.recovery.check(step, loss_value)
        if failure is not None:
            self.recovery.restore(step, failure)
            if self.recovery.exhausted:
                detail = (f"stopped at step {step}: {failure}, the {self.recovery.recoveries}th failure "
                          f"(max_recoveries {self.config.max_recoveries}); kept the last good state")
                log.warning("%s", detail)
                return "diverged", detail, None
            if not math.isfinite(loss_value):
                return None, "", None  # this step's output is not an image: keep it out of averages
        out = self._image(out)
        stop = self.track.observe(step, out, self.generator.state_dict)
        if self.held_physics is not None:
            self.held_physics.offer(self.track.held_now(step), self.physics.state_dict)
        if stop:
            return "auto", self.track.stopper.reason, None
        track = self.track
        return None, "", StepEvent(step, self.config.steps, loss, out, track.out_avg, track.last_psnr)

    def _image(self, out: torch.Tensor) -> torch.Tensor:
        """The restored image in the step's output: the operator's input less its margin (a view)."""
        if self.box is None:
            return out
        top, left, h, w = self.box
        return out[:, :, top:top + h, left:left + w]

    def _captured_step(self, step: int) -> tuple[str | None, str, StepEvent | None]:
        """One step of the captured path: the graph's step (or a warm-up step), its loss kept on
        the device, the output observed at once, and the window judged when it is due, when the
        stopping rule fires and at the last step (``_settle``)."""
        captured, deferred = self.captured, self.deferred
        assert captured is not None and deferred is not None
        if captured.needs_capture and not captured.capture():
            self.rng = self.fast.rngs[0]  # the failed capture left fresh generators (same state)
            settled = self._settle(step - 1)
            self.captured = self.deferred = None  # eager from here on, every step judged at once
            if settled is not None and settled[0] is not None:
                return settled
            return self._eager_step(step)
        loss, out = captured()
        self.track.losses[step - 1] = loss
        out = self._image(out)
        stop = self.track.observe(step, out, self.generator.state_dict)
        if stop or deferred.due(step) or step == self.config.steps:
            settled = self._settle(step)
            if settled is not None:
                return settled
        if stop:
            return "auto", self.track.stopper.reason, None
        track = self.track
        return None, "", StepEvent(step, self.config.steps, loss, out, track.out_avg, track.last_psnr)

    def settle(self, step: int) -> tuple[str | None, str, None] | None:
        """Judge the steps not yet judged, up to ``step`` (the last step taken), before the fit
        is handed out (a checkpoint, an interruption). None when the fit goes on from ``step``
        as it is (its steps were good, or a backtrack was recovered, or every step is judged at
        once); else what :meth:`step` returns for a failed step (its output is not an image)."""
        return None if self.deferred is None else self._settle(step)

    def _settle(self, step: int) -> tuple[str | None, str, None] | None:
        """Judge the window that ends at ``step`` (one host read, ``DeferredCheck.judge``).

        Good: the record is marked here (the next rollback point). A failure at step f (the
        first of the window; the steps after it ran from the failed state and are not judged)
        is recovered as the eager fit recovers it at f: the same snapshot (the last good check
        step, never inside the window) is loaded and the learning rate lowered; the graph is
        captured anew after a warm-up. A non-finite loss also rolls the record (average, PSNR
        history, stopping rule, held state) back to the window's start: the outputs from f on
        are not images, and the window's good steps before f go with them (at most
        ``longest - 1``). A backtracking failure (finite loss, fit PSNR fell; only at a check
        step, the window's end) keeps the window's outputs, as the eager fit does, and returns
        None: the step's event goes out as the eager fit's does."""
        assert self.deferred is not None and self.recovery is not None
        failure = self.deferred.judge(step, self.track.losses, self.recovery)  # the window's one host read
        if failure is None:
            self.mark = self.track.mark(self.deferred.longest)
            return None
        recovery = self.recovery
        recovery.restore(failure.step, failure.why)
        if self.captured is not None:
            self.captured.invalidate()
        if failure.finite:
            self.mark = self.track.mark(self.deferred.longest)
        else:
            assert self.mark is not None
            self.track.rollback(self.mark)
            log.info("step %d's loss was read at step %d: the outputs of steps %d-%d are dropped from the "
                     "average and the stopping rule", failure.step, step, self.deferred.window_start, step)
        if recovery.exhausted:
            detail = (f"stopped at step {step}: {failure.why} at step {failure.step}, the {recovery.recoveries}th "
                      f"failure (max_recoveries {self.config.max_recoveries}); kept the last good state")
            log.warning("%s", detail)
            return "diverged", detail, None
        return None if failure.finite else (None, "", None)

    @property
    def best_physics(self) -> dict[str, torch.Tensor] | None:
        """The operator's state at the returned step (copies), None for a fixed operator."""
        return None if self.held_physics is None else self.held_physics.value

    # ------------------------------------------------------------------ result
    def result(self, stop_reason: str, steps_run: int, detail: str) -> FitResult:
        """The fit as it stands after ``steps_run`` steps (no state of the run is changed)."""
        image_plain = render(self.generator, self.z.detach(), self.image_crop, "fp32")  # always rendered in fp32
        track = self.track
        image, returned_step, returned_state = track.returned(stop_reason, steps_run, image_plain,
                                                              lambda: clone_state(self.generator))
        held = track.holds(stop_reason)
        returned_physics = (self.best_physics if held and track.held.has_value
                            else operator_state.state_of(self.physics))
        member = track.member_state(steps_run, self.rng, returned_state, returned_step, self.recovery)
        member.physics_state = operator_state.state_of(self.physics)
        member.returned_physics_state = returned_physics
        state = FitState(step=steps_run, seconds=self.prior_seconds + time.perf_counter() - self.start,
                         optimizer_state=copy.deepcopy(self.fast.optimizer.state_dict()), members=[member])
        res = FitResult(image=image.cpu(), image_plain=image_plain.cpu(), generator=self.generator,
                        z=self.z.detach(), stop_reason=stop_reason, crop=self.image_crop, config=self.config,
                        state=state, stop_detail=detail,
                        physics=operator_state.with_state(self.physics, returned_physics if held else None))
        return res.scored(self.gt)


def fit(y: torch.Tensor, physics: nn.Module, generator: nn.Module, z: torch.Tensor,
        config: FitConfig, *, gt: torch.Tensor | None = None, callbacks: Sequence[Callback] = (),
        resume: Mapping[str, Any] | FitState | None = None, stop_event: Any | None = None,
        checkpoint_every: int | None = None,
        on_checkpoint: Callable[[FitResult], None] | None = None) -> FitResult:
    """Fit ``generator`` so that ``physics(G(z))`` matches ``y``.

    Args:
        y: observation (C, h, w) or (1, C, h, w), float in [0, 1].
        physics: forward operator (``dip.physics``); the image it acts on has size
            ``physics.x_size(h, w)``; the restored image (outputs, averages, stopping, ``gt``,
            the result) is its ``crop_box((h, w))`` where the operator has one (a "valid"
            ``Blur``: the observation's own pixels, without the fitted margin), else all of it.
        generator: a ``dip.models`` network (its ``size_multiple``/``input_scale`` attributes are
            honoured); it is trained in place, in training mode, and returned in the result.
        z: the input code, (1, D, Hz, Wz) with the size given by ``generator_geometry``.
        config: ``FitConfig``.
        gt: optional ground truth (C, H, W) or (1, C, H, W) for PSNR every ``psnr_every`` steps.
        callbacks: callables taking a ``StepEvent``; a callback's ``every`` attribute (int,
            default 1) sets how often it is called. On the captured CUDA path the event's
            tensors are the graph's buffers (copy what must outlive the step) and its step is
            not yet judged: a later check may find its loss non-finite (see ``_FitRun._settle``).
        resume: ``FitResult.resume_state()`` of an earlier fit (a ``FitState`` or its dict, e.g.
            from a checkpoint) to continue it up to ``config.steps``; ``generator`` and ``z``
            must be that fit's. Same seed, CPU, same threads: a resumed fit equals an
            uninterrupted one bit for bit, in either memory layout. The state is copied, never
            updated in place. A captured CUDA fit's state is taken at a judged step; resumed, it
            warms up and captures anew and draws the same reg noise from its ``rng_state``.
        stop_event: anything with ``is_set() -> bool`` (e.g. ``threading.Event``), polled after
            every step; once set the fit ends with ``stop_reason == "interrupted"`` and a result
            that ``resume_state()`` continues exactly.
        checkpoint_every, on_checkpoint: every ``checkpoint_every`` steps ``on_checkpoint`` gets
            the result so far (``stop_reason == "running"``; resumable like a finished one).

    Returns:
        ``FitResult``.
    """
    config.validate()
    _check_checkpoint_every(checkpoint_every)
    run = _FitRun(y, physics, generator, z, config, gt)
    run.restore(resume)
    cb_every = [max(1, int(getattr(cb, "every", 1))) for cb in callbacks]
    run.start = time.perf_counter()
    step, stop_reason, detail = run.first_step - 1, None, ""
    for step in range(run.first_step, config.steps + 1):
        stop_reason, detail, event = run.step(step)
        if stop_reason is not None:
            break
        if event is None:
            continue
        for cb, every in zip(callbacks, cb_every, strict=True):
            if step % every == 0 or step == config.steps:
                cb(event)
        interrupted = stop_event is not None and stop_event.is_set() and step < config.steps
        checkpoint = (on_checkpoint is not None and checkpoint_every is not None and step % checkpoint_every == 0
                      and step < config.steps)
        if interrupted or checkpoint:
            settled = run.settle(step)  # a captured fit judges its pending steps before it is handed out
            if settled is not None:
                stop_reason, detail, _ = settled
                if stop_reason is not None:
                    break
                continue
        if interrupted:
            stop_reason, detail = "interrupted", f"interrupted after step {step} of {config.steps}"
            break
        if checkpoint:
            on_checkpoint(run.result("running", step, f"checkpoint at step {step} of {config.steps}"))
    if stop_reason is None:
        stop_reason, detail = "steps", f"ran all {step} steps"
    return run.result(stop_reason, step, detail)
