"""Continue a fit from its checkpoint: rebuild observation, operator, generator, code and the
engine's state (optimiser, reg-noise RNG, averaged output, stopping and recovery state, history).

    fit_state = dip.resume.load("photo.png.ckpt")
    result = dip.resume.run(fit_state, steps=3000)

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


def load(path: str | os.PathLike) -> ResumableFit:
    """Read a fit checkpoint (``dip.checkpoint`` format) for resuming.

    Raises:
        dip.checkpoint.CheckpointError: not a fit checkpoint, or it lacks what resuming needs
            (e.g. a checkpoint written without the observation).
    """
    payload = ckpt.load(path)
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


def run(loaded: ResumableFit, *, steps: int | None = None, device: str | None = None,
        gt: torch.Tensor | None = None, callbacks: Sequence[Callable] = (),
        **fit_kwargs) -> FitResult:
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
    result = fit(loaded.y, loaded.physics, loaded.generator, loaded.z, config, gt=gt,
                 callbacks=callbacks, resume=loaded.state, **fit_kwargs)
    result.recipe = loaded.recipe
    return result


__all__ = ["ResumableFit", "load", "run"]
