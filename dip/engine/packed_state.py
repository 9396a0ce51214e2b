"""Member k's share of a packed fit's tensors, in the form a single fit of member k has them.

In a :class:`~dip.models.packed.PackedGenerator` of K members every per-member tensor holds
the K members' tensors concatenated on dim 0 (:func:`dip.models.packed.member_tensors`). The
optimiser over the packed parameters is elementwise (Adam), so its moments split the same way
and its step count is shared. These functions cut a member out of a packed optimiser or
generator (as a single fit's ``state_dict``) and put members back:

- :func:`member_optimizer_state` / :func:`packed_optimizer_state` — the state_dict of the
  member's own Adam (its parameters in the member generator's order) and its inverse;
- :func:`load_member_optimizer_state` — copy a member's Adam state into its slices (recovery);
- :func:`member_state` / :func:`load_member_state` — the member generator's state_dict out of
  the packed one, and back into the member's slices.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch

from dip.models.packed import PackedGenerator, member_tensors

__all__ = ["load_member_optimizer_state", "load_member_state", "member_optimizer_state", "member_state",
           "packed_optimizer_state"]


def _per_member(value: Any, param: torch.Tensor) -> bool:
    return isinstance(value, torch.Tensor) and value.shape == param.shape


def member_optimizer_state(optimizer: torch.optim.Optimizer, members: int, k: int,
                           lr_scale: float = 1.0) -> dict[str, Any]:
    """Member ``k``'s share of ``optimizer`` (over a packed generator's parameters) as the
    ``state_dict`` of an optimiser of the same kind over member k's parameters: each moment's
    dim-0 slice k (copies), shared entries (the step count) copied, learning rates times
    ``lr_scale`` (the member's own rate after its recoveries)."""
    state: dict[int, dict[str, Any]] = {}
    groups = []
    index = 0
    for group in optimizer.param_groups:
        saved = {key: copy.deepcopy(value) for key, value in group.items() if key != "params"}
        saved["lr"] = group["lr"] * lr_scale
        ids = []
        for param in group["params"]:
            entry = optimizer.state.get(param)
            if entry:
                state[index] = {key: (value.chunk(members, dim=0)[k].clone() if _per_member(value, param)
                                      else value.clone() if isinstance(value, torch.Tensor) else value)
                                for key, value in entry.items()}
            ids.append(index)
            index += 1
        saved["params"] = ids
        groups.append(saved)
    return {"state": state, "param_groups": groups}


def packed_optimizer_state(states: Sequence[dict[str, Any]], lr: float) -> dict[str, Any]:
    """The packed optimiser's ``state_dict`` whose member k share is ``states[k]`` (the inverse
    of :func:`member_optimizer_state`): per-member tensors concatenated on dim 0, shared entries
    from member 0 (they must agree: members resumed together have taken the same steps), the
    learning rate ``lr`` (the members' own rates are the caller's to keep)."""
    first = states[0]
    packed: dict[int, dict[str, Any]] = {}
    for index, entry in first["state"].items():
        packed[index] = {}
        for key, value in entry.items():
            values = [s["state"][index][key] for s in states]
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                packed[index][key] = torch.cat(values, dim=0)
            else:
                if any(not _equal(v, value) for v in values[1:]):
                    raise ValueError(f"the members' optimiser states disagree on {key!r} ({values}): "
                                     "only members that have taken the same steps can be packed")
                packed[index][key] = value
    groups = copy.deepcopy(first["param_groups"])
    for group in groups:
        group["lr"] = lr
    return {"state": packed, "param_groups": groups}


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return bool(torch.equal(a, b))
    return bool(a == b)


def load_member_optimizer_state(optimizer: torch.optim.Optimizer, members: int, k: int,
                                state: dict[str, Any]) -> None:
    """Copy member ``k``'s optimiser ``state`` (from :func:`member_optimizer_state`) into its
    slices of ``optimizer``'s moments; the shared step count stays. A member state without
    moments (taken before the first step) zeroes the member's moments."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    with torch.no_grad():
        for index, param in enumerate(params):
            entry = optimizer.state.get(param)
            if not entry:
                continue
            saved = state["state"].get(index, {})
            for key, value in entry.items():
                if _per_member(value, param):
                    target = value.chunk(members, dim=0)[k]
                    if key in saved:
                        target.copy_(saved[key])
                    else:
                        target.zero_()


def member_state(packed: PackedGenerator, k: int) -> dict[str, torch.Tensor]:
    """Member ``k``'s generator ``state_dict`` (its own names, copies) out of ``packed``."""
    return {name: t.detach().clone() for name, t in member_tensors(packed, k, packed.state_dict()).items()}


def load_member_state(packed: PackedGenerator, k: int, state: dict[str, torch.Tensor]) -> None:
    """Copy member ``k``'s generator ``state`` (its own names) into its slices of ``packed``.
    Tensors all members share (``num_batches_tracked``) are left as they are."""
    packed_state = packed.state_dict()
    views = member_tensors(packed, k, packed_state)
    with torch.no_grad():
        for name, view in views.items():
            if view is not packed_state[f"net.{name}"]:  # a member's own slice, not a shared tensor
                view.copy_(state[name])
