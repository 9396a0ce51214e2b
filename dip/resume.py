"""Continue a fit from its checkpoint: rebuild observation, operator, generator, code and the
engine's state (optimiser, reg-noise RNG, averaged output, stopping and recovery state, history).

    fit_state = dip.resume.load("photo.png.ckpt")
    result = dip.resume.run(fit_state, steps=3000)

An ensemble's checkpoint loads as a :class:`ResumableEnsemble`; ``run`` continues its members
still fitting as one pack (``dip.engine.packed_loop.fit_packed``) and returns an
``EnsembleResult``.

On the CPU with the same number of threads, a fit resumed from a checkpoint of step k gives the
same bits as the uninterrupted fit (tests/test_long_runs.py).
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from dip import checkpoint as ckpt
from dip.engine import FitConfig, FitResult, FitState, fit
from dip.engine.packed_result import EnsembleResult


@dataclasses.dataclass
class ResumableFit:
    """A fit read back from a checkpoint, ready for :func:`run`.

    Attributes:
        y: observation (1, C, h, w) float32; physics: the operator; generator: the network with
            the weights of the last step run; z: its input code (1, D, Hz, Wz).
        config: the ``FitConfig`` the fit ran with; steps_run: steps already taken.
        state: the engine's ``dip.engine.FitState`` (``resume`` of :func:`dip.fit.fit`).
        recipe: the ``dip.recipes.Recipe`` or None; task: its task ("denoise", ...) or "";
        options: the options recorded with the checkpoint (e.g. the command line's);
        image_info: ``dip.images.ImageInfo`` dict of the input image (may be empty).
    """

    y: torch.Tensor
    physics: nn.Module
    generator: nn.Module
    z: torch.Tensor
    config: FitConfig
    steps_run: int
    state: FitState
    recipe: Any
    task: str
    options: dict[str, Any]
    image_info: dict[str, Any]


@dataclasses.dataclass
class ResumableEnsemble:
    """An ensemble read back from its checkpoint: one :class:`ResumableFit` per member and how
    each ended (a member stopped by its rule or diverged stays finished). The attributes of a
    ``ResumableFit`` (``y``, ``physics``, ``config``, ``recipe``, ``task``, ``options``,
    ``image_info``, ``generator``, ``z``) are member 0's; ``steps_run`` is the members' still
    fitting (all members' largest when none is)."""

    members: list[ResumableFit]
    stop_reasons: list[str]
    stop_details: list[str]

    def __getattr__(self, name: str) -> Any:
        if name in ("y", "physics", "generator", "z", "config", "recipe", "task", "options", "image_info"):
            return getattr(self.members[0], name)
        raise AttributeError(name)

    @property
    def steps_run(self) -> int:
        running = [m.steps_run for m, why in zip(self.members, self.stop_reasons, strict=True)
                   if why not in ("auto", "diverged")]
        return max(running or [m.steps_run for m in self.members])


def load(path: str | os.PathLike) -> ResumableFit | ResumableEnsemble:
    """Read a fit checkpoint (``dip.checkpoint`` format) for resuming; an ensemble's
    checkpoint gives a :class:`ResumableEnsemble`.

    Raises:
        dip.checkpoint.CheckpointError: not a fit checkpoint, or it lacks what resuming needs
            (e.g. a checkpoint written without the observation).
    """
    payload = ckpt.load(path)
    if payload.get("kind") == "ensemble":
        members = [_resumable(ckpt.member_payload(payload, k, path), path) for k in range(len(payload["members"]))]
        return ResumableEnsemble(members, [str(r) for r in payload.get("stop_reasons") or ["running"] * len(members)],
                                 [str(d) for d in payload.get("stop_details") or [""] * len(members)])
    return _resumable(payload, path)


def _resumable(payload: dict[str, Any], path: str | os.PathLike) -> ResumableFit:
    ckpt.require(payload, "generator.config", "generator.state", "z", "observation", "physics",
                 "fit.config", "fit.steps_run", "fit.optimizer_state", path=path)
    from dip import models, recipes
    from dip import physics as physics_mod

    fit_section = payload["fit"]
    try:
        config = FitConfig.from_dict(dict(fit_section["config"]))
    except (TypeError, ValueError) as exc:
        raise ckpt.CheckpointError(f"{path}: the recorded fit settings are not valid here: {exc}") from None
    gen_config = dict(payload["generator"]["config"])
    try:
        generator = models.build(**gen_config)
        generator.load_state_dict(payload["generator"]["state"])
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ckpt.CheckpointError(f"{path}: cannot rebuild the generator {gen_config}: {exc}") from None
    settings = dict(payload["physics"])
    try:
        physics = physics_mod.from_config(settings, mask=settings.pop("mask", None))
    except (TypeError, ValueError) as exc:
        raise ckpt.CheckpointError(f"{path}: cannot rebuild the operator {settings}: {exc}") from None
    recipe = None
    if payload.get("recipe"):
        try:
            recipe = recipes.Recipe.from_dict(dict(payload["recipe"]))
        except (TypeError, ValueError, KeyError):
            recipe = None  # informative only: the fit runs from the recorded FitConfig
    state = ckpt.fit_state_from_payload(payload)
    steps_run = state.step
    options = dict(payload.get("options") or {})
    task = str(options.get("task") or (recipe.task if recipe is not None else ""))
    return ResumableFit(y=payload["observation"].float(), physics=physics, generator=generator,
                        z=payload["z"].float(), config=config, steps_run=steps_run, state=state,
                        recipe=recipe, task=task, options=options,
                        image_info=dict(payload.get("image_info") or {}))


def run(loaded: ResumableFit | ResumableEnsemble, *, steps: int | None = None, device: str | None = None,
        gt: torch.Tensor | None = None, callbacks: Sequence[Callable] = (),
        **fit_kwargs) -> FitResult | EnsembleResult:
    """Continue ``loaded`` up to ``steps`` in total (default: the steps it was planned with).

    ``device`` moves the fit (exactness holds on the device it started on); ``fit_kwargs``
    go to :func:`dip.fit.fit` (``stop_event``, ``checkpoint_every``, ``on_checkpoint``).
    Raises ValueError when ``steps`` is not more than the steps already run.
    """
    total = loaded.config.steps if steps is None else int(steps)
    if total <= loaded.steps_run:
        raise ValueError(f"the fit already ran {loaded.steps_run} steps; ask for more than that "
                         f"(steps={total})")
    changes: dict[str, Any] = {"steps": total}
    if device is not None:
        changes["device"] = device
    config = loaded.config.updated(**changes)
    if isinstance(loaded, ResumableEnsemble):
        return _run_ensemble(loaded, config, gt, callbacks, **fit_kwargs)
    result = fit(loaded.y, loaded.physics, loaded.generator, loaded.z, config, gt=gt,
                 callbacks=callbacks, resume=loaded.state, **fit_kwargs)
    result.recipe = loaded.recipe
    return result


def _run_ensemble(loaded: ResumableEnsemble, config: FitConfig, gt: torch.Tensor | None,
                  callbacks: Sequence[Callable], **fit_kwargs) -> EnsembleResult:
    from dip.engine.packed_loop import fit_packed

    members = loaded.members
    fit_kwargs["on_checkpoint"] = EnsembleResult.checkpoints(fit_kwargs.get("on_checkpoint"), gt)
    resume = {"members": [m.state for m in members], "stop_reasons": loaded.stop_reasons,
              "stop_details": loaded.stop_details}
    packed = fit_packed(loaded.y, loaded.physics, [m.generator for m in members], [m.z for m in members], config,
                        seeds=[m.config.seed for m in members], gt=gt, callbacks=callbacks, resume=resume,
                        **fit_kwargs)
    result = EnsembleResult.of(packed, gt)
    result.recipe = loaded.recipe
    for member in result.members:
        member.recipe = loaded.recipe
    return result


__all__ = ["ResumableEnsemble", "ResumableFit", "load", "run"]
