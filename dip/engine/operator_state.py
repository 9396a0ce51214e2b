"""The operator's own trainable state (a blind blur's kernel generator) inside a fit.

Most operators are fixed; one with parameters that require grad (``dip.physics.BlindBlur``)
is fitted jointly with the image generator. These helpers give the fit what it needs of it,
the same way for every such operator: its parameters as the optimiser's second group (own
learning rate), and copies of its state_dict for recovery, resume and the returned step.
An operator without trainable parameters has no state here (None), so fits through fixed
operators store and do nothing new.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

Tensors = dict[str, torch.Tensor]


def trainable(physics: nn.Module) -> list[nn.Parameter]:
    """The operator's parameters that require grad (empty for fixed operators)."""
    return [p for p in physics.parameters() if p.requires_grad]


def param_groups(params: list[torch.Tensor], physics: nn.Module, lr: float, physics_lr: float | None,
                 held: bool = False) -> list:
    """Adam's parameter groups: ``params`` at ``lr``, then the operator's trainable parameters
    at ``physics_lr`` (default ``lr``; 0 while ``held``) when it has any; a plain list otherwise."""
    extra = trainable(physics)
    if not extra:
        return list(params)
    rate = 0.0 if held else (lr if physics_lr is None else physics_lr)
    return [{"params": list(params), "lr": lr}, {"params": extra, "lr": rate}]


def release(optimizer: torch.optim.Optimizer, lr: float, physics_lr: float | None, recoveries: int = 0,
            factor: float = 1.0) -> None:
    """End the operator's warm-up: its group (the second, ``param_groups``') gets ``physics_lr``
    (default ``lr``), multiplied by ``factor`` once per recovery so far (``recoveries``; the
    recovery's ``recovery_lr_factor``): a recovery during the warm-up lowered every group's rate,
    the held group's 0 included, and the released rate keeps that reduction, as the generator's
    does. An optimiser with one group (LBFGS, or a fixed operator) is left as it is."""
    if len(optimizer.param_groups) == 2:
        rate = lr if physics_lr is None else physics_lr
        for _ in range(int(recoveries)):  # one multiplication per recovery, as Recovery lowers a rate
            rate *= factor
        optimizer.param_groups[1]["lr"] = rate


def hold(optimizer: torch.optim.Optimizer) -> None:
    """Stop fitting the operator (``FitConfig.physics_steps`` done): its group's rate becomes 0
    (Adam then leaves its parameters as they are). An optimiser with one group is left as it is."""
    if len(optimizer.param_groups) == 2:
        optimizer.param_groups[1]["lr"] = 0.0


def state_of(physics: nn.Module) -> Tensors | None:
    """Detached copies of the operator's state_dict when it has trainable parameters, else None."""
    if not trainable(physics):
        return None
    return {k: v.detach().clone() for k, v in physics.state_dict().items()}


def load_state(physics: nn.Module, state: Tensors | None) -> None:
    """Load ``state`` (``state_of``'s copies, e.g. from a checkpoint) into the operator in place;
    None leaves it as it is. The operator's tensors keep their own storage."""
    if state is not None:
        physics.load_state_dict(state)


def with_state(physics: nn.Module, state: Tensors | None) -> nn.Module:
    """The operator itself when ``state`` is None, else a copy holding ``state`` (the operator
    of an earlier step: the returned image's)."""
    if state is None:
        return physics
    other = copy.deepcopy(physics)
    other.load_state_dict(state)
    return other
