"""The generator state at the stopping rule's returned step, kept without a host read per step.

When a step becomes the stopping rule's returned step (``held_now``, a device flag of
:mod:`dip.stopping`), the fit keeps its generator's state, so that the returned image comes
with its network.  Two ways, one result (:func:`dip.stopping.branch_free` chooses):

- on CPU the flag is read (free there) and the state copied only when it is set: no cost on
  the steps that are not kept;
- on accelerators a host read would wait for the step's queued work, so every observed step
  writes ``torch.where(flag, current, held)`` into preallocated buffers (one kernel per state
  tensor, no synchronisation); the flag of "anything held" is read only when the held state
  is asked for (at a checkpoint or the end of the fit).  The current tensors are looked up
  once, when the buffers are allocated (the module's own tensors, which the optimiser and
  the recovery update in place; a ``state_dict()`` per step cost 1.3-1.8 ms of host time for
  the standard skip net, Intel Xeon, one thread).

:class:`HeldState` keeps one fit's state; :class:`PackedHeldState` the K members of a packed
generator at once (one ``torch.where`` per packed tensor for all K, with a (K,) flag), each
member's state in its single generator's names (:func:`dip.engine.packed_state.member_state`).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from dip.engine.packed_state import member_state
from dip.models.packed import PackedGenerator, member_tensors

Tensors = dict[str, torch.Tensor]
LiveFn = Callable[[], Tensors]


class HeldState:
    """One fit's state at the returned step.

    Args:
        branch_free: keep it with ``torch.where`` (accelerators) instead of copying it when the
            read flag says so (CPU).
    """

    def __init__(self, branch_free: bool) -> None:
        self.branch_free = branch_free
        self._value: Tensors | None = None     # CPU path: the copies; branch-free: a loaded value
        self._buf: Tensors | None = None       # branch-free: preallocated buffers
        self._any: torch.Tensor | None = None  # () bool: the buffers hold a state
        self._live: Tensors | None = None      # branch-free: the current tensors, looked up once

    def offer(self, flag: torch.Tensor | None, live: LiveFn) -> None:
        """Keep ``live()`` (the current tensors, detached, not copies; the same tensors at every
        call, updated in place) when ``flag`` (a () bool tensor, or None for no) is set."""
        if flag is None:
            return
        if not self.branch_free:
            if bool(flag):
                self._value = {k: v.detach().clone() for k, v in live().items()}
            return
        if self._buf is None:
            current = self._live = live()
            self._buf = {k: torch.empty_like(v) for k, v in current.items()}
            held = self._value is not None
            if held:
                for k, v in self._value.items():
                    self._buf[k].copy_(v)
            self._any = torch.tensor(held, device=flag.device)
            self._value = None
        for k, v in self._live.items():
            torch.where(flag, v, self._buf[k], out=self._buf[k])
        self._any |= flag

    @property
    def has_value(self) -> bool:
        """Whether a state is held (one host read on the branch-free path, no copies)."""
        return self._value is not None if self._buf is None else bool(self._any)

    @property
    def value(self) -> Tensors | None:
        """The held state (a dict the caller may keep; None when no step was held); on the
        branch-free path one host read and copies of the buffers."""
        if self._buf is None:
            return self._value
        if not bool(self._any):
            return None
        return {k: v.clone() for k, v in self._buf.items()}

    def load(self, value: Tensors | None) -> None:
        """Hold ``value`` (e.g. a resumed fit's returned state), replacing what is held."""
        self._value, self._buf, self._any, self._live = value, None, None, None

    def mark(self) -> dict:
        """What is held now, for :meth:`rollback` (copies of the buffers on the branch-free
        path, no host read)."""
        if self._buf is None or self._any is None:
            return {"value": self._value}  # a held dict is replaced, never changed in place
        return {"buf": {k: v.clone() for k, v in self._buf.items()}, "any": self._any.clone()}

    def rollback(self, mark: dict) -> None:
        """Hold again what was held at ``mark`` (the mark stays valid for another rollback)."""
        if "buf" not in mark:
            self.load(mark["value"])
            return
        if self._buf is None or self._any is None:
            raise ValueError("the held state was reloaded since the mark")
        for k, v in mark["buf"].items():
            self._buf[k].copy_(v)
        self._any.copy_(mark["any"])


class PackedHeldState:
    """The members' states at their returned steps, for a packed generator of K members.

    Args:
        members: K.
        branch_free: as for :class:`HeldState`.
    """

    def __init__(self, members: int, branch_free: bool) -> None:
        self.branch_free = branch_free
        self._values: list[Tensors | None] = [None] * members  # CPU path, or loaded values
        self._buf: Tensors | None = None        # branch-free: buffers by packed name
        self._shared: set[str] = set()          # names of tensors the members share
        self._any: torch.Tensor | None = None   # (K,) bool
        self._live: Tensors | None = None       # branch-free: the packed state's tensors, looked up once

    @property
    def members(self) -> int:
        return len(self._values)

    def offer(self, flags: torch.Tensor | None, packed: PackedGenerator) -> None:
        """Keep member k's state of ``packed`` (now) where ``flags[k]`` ((K,) bool, or None for
        none) is set.  ``packed`` is the same generator at every call until :meth:`load` or
        :meth:`subset` (a repacked fit starts afresh)."""
        if flags is None:
            return
        if not self.branch_free:
            for k, flag in enumerate(flags.tolist()):  # one read of K flags
                if flag:
                    self._values[k] = member_state(packed, k)
            return
        if self._buf is None:
            self._live = packed.state_dict()
            self._allocate(packed, self._live, flags.device)
        k = self.members
        for name, t in self._live.items():
            buf, cond = self._buf[name], flags.view((k,) + (1,) * t.dim())
            if name in self._shared:
                torch.where(cond, t.unsqueeze(0).expand_as(buf), buf, out=buf)
            else:
                view = buf.unflatten(0, (k, -1))
                torch.where(cond, t.unflatten(0, (k, -1)), view, out=view)
        self._any |= flags

    def _allocate(self, packed: PackedGenerator, live: Tensors, device: torch.device) -> None:
        """Buffers like ``live`` (shared tensors once per member), holding the loaded values."""
        k = self.members
        views = member_tensors(packed, 0, live)
        self._shared = {name for name, t in live.items() if views[name[len("net."):]] is t}
        self._buf = {name: (t.new_empty((k,) + tuple(t.shape)) if name in self._shared else torch.empty_like(t))
                     for name, t in live.items()}
        for j, value in enumerate(self._values):
            if value is not None:
                for inner, target in self._member_views(j).items():
                    target.copy_(value[inner])
        self._any = torch.tensor([v is not None for v in self._values], device=device)
        self._values = [None] * k

    def _member_views(self, j: int) -> Tensors:
        """Member ``j``'s views of the buffers, by its own names."""
        k = self.members
        return {name[len("net."):]: (buf[j] if name in self._shared else buf.unflatten(0, (k, -1))[j])
                for name, buf in self._buf.items()}

    def member(self, j: int) -> Tensors | None:
        """Member ``j``'s held state (copies, its generator's names), None when none was held."""
        if self._buf is None:
            return self._values[j]
        if not bool(self._any[j]):
            return None
        return {name: v.clone() for name, v in self._member_views(j).items()}

    def load(self, values: Sequence[Tensors | None]) -> None:
        """Hold ``values[k]`` for member k (K entries), replacing what is held."""
        self._values, self._buf, self._any, self._live = list(values), None, None, None

    def subset(self, keep: Sequence[int]) -> None:
        """Keep members ``keep`` (positions, in the new order); their held states are kept."""
        self.load([self.member(j) for j in keep])
