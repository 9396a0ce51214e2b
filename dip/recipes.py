"""Named presets reproducing the original notebooks' settings (see RECIPES.md).

A ``Recipe`` says which generator to build, what it is fed, which degradation operator
applies, and how to fit. ``get(name, **overrides)`` returns a recipe with any field changed;
``run(recipe, observation, ...)`` builds everything and fits. The generator's output channels
always follow the image (grey or colour).
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

from dip import models
from dip.engine import FitResult, fit, generator_geometry, pad_to
from dip.engine.packed_result import EnsembleResult
from dip.inputs import INPUT_KINDS, make_input
from dip.physics import from_config as physics_from_config
from dip.recipe_table import DEFAULT_FOR_TASK, Recipe, _table, names
from dip.runtime import choose_precision

log = logging.getLogger("dip.recipes")

__all__ = ["DEFAULT_FOR_TASK", "Recipe", "build", "get", "names", "run"]

def get(name: str, *, net: str | None = None, input_kind: str | None = None,
        input_depth: int | None = None, factor: int | None = None,
        net_options: dict | None = None, physics_options: dict | None = None, **fit_overrides) -> Recipe:
    """Recipe ``name`` with overrides.

    Args:
        net: replace the generator by another of ``dip.models.names()`` with its defaults
            (the recipe's own generator keeps its settings when ``net`` names it).
        net_options: generator keyword arguments merged into the recipe's (e.g.
            ``{"num_channels_down": [64] * 5}``), checked when the generator is built.
        physics_options: operator settings merged into the recipe's ``physics`` dict (e.g.
            ``{"padding": "reflect"}``, or a blind blur's ``{"kernel_size": 11, "init_sigma": 1.5}``),
            checked when the operator is built.
        input_kind, input_depth: change the code z.
        factor: super-resolution factor (sr recipes only).
        **fit_overrides: any ``FitConfig`` field (steps, lr, reg_noise_std, seed, stop, ...).
    """
    table = _table()
    if name not in table:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(table)}")
    r = table[name]
    if net is not None:
        if net not in models.names():
            raise ValueError(f"unknown net {net!r}; choose one of {', '.join(models.names())}")
        if net != r.net["name"]:
            r.net = {"name": net}
    if net_options:
        if not isinstance(net_options, dict) or "name" in net_options:
            raise ValueError("net_options must be a dict of generator keyword arguments "
                             "(use net= to change the generator)")
        r.net = {**r.net, **net_options}
    if physics_options:
        if not isinstance(physics_options, dict) or "name" in physics_options:
            raise ValueError("physics_options must be a dict of operator settings (the operator's name is the "
                             "recipe's)")
        r.physics = {**r.physics, **physics_options}
    if input_kind is not None:
        if input_kind not in INPUT_KINDS:
            raise ValueError(f"unknown input kind {input_kind!r}; choose one of {', '.join(INPUT_KINDS)}")
        r.input_kind = input_kind
        if input_kind == "meshgrid":
            r.input_depth = 2
    if input_depth is not None:
        r.input_depth = int(input_depth)
    if factor is not None:
        if r.physics["name"] != "downsample":
            raise ValueError(f"factor applies to super-resolution recipes only, not {name!r}")
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 2:
            raise ValueError(f"factor must be an integer >= 2, got {factor!r}")
        r.physics = {**r.physics, "factor": factor}
    if fit_overrides:
        r.fit = r.fit.updated(**fit_overrides)
    return r


def _as_batch(img: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(img, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(img).__name__}")
    if img.dim() == 2:
        img = img[None]
    if img.dim() == 3:
        img = img[None]
    if img.dim() != 4 or img.shape[0] != 1:
        raise ValueError(f"{what} must have shape (C, H, W) or (1, C, H, W), got {tuple(img.shape)}")
    return img.float()


def build(recipe: Recipe, observation: torch.Tensor, *, mask: torch.Tensor | None = None,
          flash: torch.Tensor | None = None, kernel: Any = None):
    """Build (y, physics, generator, z) for ``recipe`` and an observation (C, h, w) in [0, 1].

    ``mask`` is an inpainting recipe's mask, ``kernel`` a deblurring recipe's point-spread
    function (tensor or array (Kh, Kw) or (C, Kh, Kw), or a spec such as ``"gaussian:1.6"``).

    The generator's weights and z (and a blind blur's kernel generator) are drawn from
    ``recipe.fit.seed`` without touching the global random state.
    """
    y = _as_batch(observation, "observation")
    settings = dict(recipe.physics)
    if settings.get("name") == "blind_blur":  # its kernel generator is drawn from the fit's seed too
        settings.setdefault("seed", recipe.fit.seed)
    physics = physics_from_config(settings, mask=mask, kernel=kernel)
    x_hw = physics.x_size(tuple(y.shape[-2:]))
    if recipe.input_kind == "image":
        if flash is None:
            raise ValueError(f"recipe {recipe.name!r} feeds the network an image: pass flash=...")
        flash = _as_batch(flash, "flash image")
        if tuple(flash.shape[-2:]) != tuple(x_hw):
            raise ValueError(f"the flash image must have the size of the no-flash image {x_hw}, "
                             f"got {tuple(flash.shape[-2:])}")
        in_channels = flash.shape[1]
    else:
        in_channels = recipe.input_depth
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.fit.seed)
        kwargs = {k: v for k, v in recipe.net.items() if k != "name"}
        generator = models.build(recipe.net["name"], in_channels, y.shape[1], **kwargs)
    _, z_hw = generator_geometry(generator, x_hw)
    if recipe.input_kind == "image":
        z = pad_to(flash, z_hw)
    else:
        rng = torch.Generator().manual_seed(recipe.fit.seed)
        z = make_input(recipe.input_kind, in_channels, z_hw, generator=rng)
    return y, physics, generator, z


def run(recipe: Recipe, observation: torch.Tensor, *, mask: torch.Tensor | None = None,
        flash: torch.Tensor | None = None, kernel: Any = None, gt: torch.Tensor | None = None,
        callbacks: Sequence[Callable] = (), ensemble: int = 1, **fit_kwargs) -> FitResult | EnsembleResult:
    """Build and fit ``recipe`` on ``observation``; see ``build`` and ``dip.fit.fit`` (which
    takes ``fit_kwargs``: ``stop_event``, ``checkpoint_every``, ``on_checkpoint``).

    ``ensemble=K`` (K >= 2) fits K members with the seeds ``seed .. seed + K - 1`` at once in
    one packed network (``dip.engine.packed_loop.fit_packed``), each stopping on its own, and
    returns an ``EnsembleResult`` whose image is the mean of theirs."""
    config = recipe.fit
    if config.precision == "auto":  # the task's own choice (some tasks keep fp32)
        precision, why = choose_precision("auto", config.device, recipe.task)
        log.info("%s: precision %s (%s)", recipe.name, precision, why)
        config = config.updated(precision=precision)
    if isinstance(ensemble, bool) or not isinstance(ensemble, int) or ensemble < 1:
        raise ValueError(f"ensemble must be an integer >= 1 (the number of fits averaged), got {ensemble!r}")
    if ensemble > 1:
        return _run_ensemble(recipe, config, observation, ensemble, mask=mask, flash=flash, kernel=kernel, gt=gt,
                             callbacks=callbacks, **fit_kwargs)
    y, physics, generator, z = build(recipe, observation, mask=mask, flash=flash, kernel=kernel)
    result = fit(y, physics, generator, z, config, gt=gt, callbacks=callbacks, **fit_kwargs)
    result.recipe = recipe
    return result


def _run_ensemble(recipe: Recipe, config: Any, observation: torch.Tensor, members: int, *, gt: torch.Tensor | None,
                  callbacks: Sequence[Callable], **kwargs) -> EnsembleResult:
    from dip.engine.packed_loop import fit_packed

    inputs = {key: kwargs.pop(key) for key in ("mask", "flash", "kernel")}
    built = [build(dataclasses.replace(recipe, fit=config.updated(seed=config.seed + k)), observation, **inputs)
             for k in range(members)]
    y, physics = built[0][0], built[0][1]
    kwargs["on_checkpoint"] = EnsembleResult.checkpoints(kwargs.get("on_checkpoint"), gt)
    packed = fit_packed(y, physics, [b[2] for b in built], [b[3] for b in built], config, gt=gt,
                        callbacks=callbacks, **kwargs)
    result = EnsembleResult.of(packed, gt)
    result.recipe = recipe
    for member in result.members:
        member.recipe = recipe
    return result
