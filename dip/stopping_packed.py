"""ES-WMV for K members at once: one set of tensors, one host read per ``sync_every`` updates.

A packed fit (:mod:`dip.engine.packed_loop`) runs K fits of one output shape together; each
member has its own stopping rule.  K :class:`~dip.stopping.WindowedVarianceStopper` objects
cost K kernel sequences per step (about 25 small kernels each) and K host reads per sync.
:class:`PackedWindowedVarianceStopper` keeps the K rules in stacked tensors and advances them
with one sequence of kernels per update, whatever K is:

    buffer      (K, W, n)  ring buffers, the outputs' dtype (zeros where nothing was written)
    sqnorm      (K, W)     float64, ||slot||^2
    sum         (K, n)     float64, running sums S
    minimum, its step, the held-image step, observed count  (K,) each, on the device
    best_output (K, ...)   the held images

Memory is K single rules' (the ring buffers: K * W copies of one output).

Each member follows exactly the single rule on its own sequence: the same stop step, returned
step and returned image, the same reason text and history.  S is updated and recomputed in the
single rule's order, so it is equal bit for bit; so are the variances on the CPU path (each
member's norms are ``torch.dot`` products, as the single rule's), while the accelerators' path
takes the K norms in one batched product (one kernel instead of K), equal to float64 rounding.
Members may skip an update (``observed``: a member whose step failed is not fed that step's
output): its row is left exactly as it was, so members can have observed different numbers of
steps; each member's ring slot is then its own (``count % W``, counted on the device, so no
index crosses from the host per update).

Syncs: the host reads the K tracked minima together, at most once per update and usually once
every ``sync_every`` updates (1 for CPU outputs, 25 on accelerators), plus one read of the K
minima's values when a member stops (its reason text).  On accelerators the held images are
written branch-free (``torch.where`` over the K rows); on CPU the K flags are read (free
there) and only the held members' images copied (:func:`dip.stopping.branch_free` decides;
``branch_free=True`` forces the accelerators' path, which the tests run on CPU).

Cost on CPU (``benchmarks/test_bench_stopping_packed.py``, Intel Xeon AVX-512/AMX, one thread,
3x128x128 float32, W = 100, a machine shared with other jobs): one update of K = 4 or 16
members costs 0.83-1.07x the time of K single updates, i.e. the same: an update is
memory-bound, the passes over the K float64 rows are the work, and they run a few members at a
time so that the rows stay in cache (one pass of all 16 was 0.7x).  The gain is for
accelerators, where a single update is launch-bound: one kernel sequence and one read per
``sync_every`` steps instead of K (not measured: no accelerator here; the tests check that
path's results by forcing it on CPU).

Members leave (:meth:`subset`): the others keep their state exactly.  Each member's state is
the single rule's (:meth:`member_state_dict`, :meth:`member`), and K single states load into
one packed rule (:meth:`load_state_dicts`): checkpoints of packed members are single-fit
checkpoints.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from dip.stopping import WindowedVarianceStopper, branch_free, check_update_types, stop_reason

__all__ = ["PackedWindowedVarianceStopper"]


def _row_dot(a: torch.Tensor, batched: bool) -> torch.Tensor:
    """(K,) squared norms of the rows of a contiguous (K, n) float64 tensor: one batched
    product (one kernel: the accelerators' path), or K ``torch.dot`` (the CPU path: the single
    rule's own products, bit for bit, and faster there than the batched one, measured 0.7 vs
    2.6 ms for K = 16, n = 3*128*128, one thread)."""
    if batched:
        return torch.bmm(a.unsqueeze(1), a.unsqueeze(2)).view(-1)
    return torch.stack([torch.dot(row, row) for row in a])


class PackedWindowedVarianceStopper:
    """K ES-WMV rules of one setting over K output sequences of one shape.

    Args:
        members: K >= 1.
        window, patience, every, return_delay, return_mean, sync_every, recompute_every,
        branch_free: as for :class:`~dip.stopping.WindowedVarianceStopper` (shared by all).

    ``update(step, outputs)`` takes (K, ...) outputs (row k: member k's) and returns K host
    bools, True for the members whose rule has fired.  Per-member reads: ``best_step(k)``,
    ``returned_step(k)``, ``best_output(k)``, ``reason(k)``, ``stopped(k)``, ``history(k)``,
    or a single rule holding member k's state: ``member(k)``.
    """

    def __init__(self, members: int, window: int = 100, patience: int = 1000, *, every: int = 1,
                 return_delay: int = 0, return_mean: bool = False, sync_every: int | None = None,
                 recompute_every: int | None = None, branch_free: bool | None = None):
        if isinstance(members, bool) or not isinstance(members, (int, np.integer)) or members < 1:
            raise ValueError(f"members must be an int >= 1, got {members!r}")
        self._settings = dict(window=window, patience=patience, every=every, return_delay=return_delay,
                              return_mean=return_mean, sync_every=sync_every,
                              recompute_every=recompute_every, branch_free=branch_free)
        rule = WindowedVarianceStopper(**self._settings)  # type: ignore[arg-type]  # checks the settings
        self.window, self.patience, self.every = rule.window, rule.patience, rule.every
        self.return_delay, self.return_mean = rule.return_delay, rule.return_mean
        self.sync_every, self.recompute_every, self.branch_free = rule.sync_every, rule.recompute_every, branch_free
        self._reset(int(members))

    @property
    def members(self) -> int:
        """K, the number of member rules."""
        return len(self._count)

    def _reset(self, k: int) -> None:
        self._buf: torch.Tensor | None = None   # (K, W, n)
        self._sqnorm: torch.Tensor | None = None        # (K, W) float64
        self._sum: torch.Tensor | None = None           # (K, n) float64
        self._scratch: torch.Tensor | None = None       # (K, n) float64
        self._var: torch.Tensor | None = None           # (K,) float64, latest VAR
        self._best_var: torch.Tensor | None = None      # (K,) float64
        self._best_step_dev: torch.Tensor | None = None  # (K,) int64, -1 = none yet
        self._capture_dev: torch.Tensor | None = None   # (K,) int64, best_step + return_delay
        self._held_dev: torch.Tensor | None = None      # (K,) int64, step of the held image
        self._count_dev: torch.Tensor | None = None   # (K,) int64, observed updates
        self._best_out: torch.Tensor | None = None    # (K, ...)
        self._shape: tuple[int, ...] | None = None    # one member's output shape
        self._take: torch.Tensor | None = None
        self._take_step: int | None = None
        self._branch_free = False
        self._masks: dict[tuple[bool, ...], torch.Tensor] = {}
        self._count = [0] * k
        self._last_step: list[int | None] = [None] * k
        self._best_step_host: list[int | None] = [None] * k
        self._stopped = [False] * k
        self._reason = [""] * k
        self._hist: list[torch.Tensor] = []          # (K,) variances of each update with a full window
        self._hist_steps: list[list[int]] = [[] for _ in range(k)]
        self._hist_rows: list[list[int]] = [[] for _ in range(k)]  # member k's entries of _hist

    def _allocate(self, shape: tuple[int, ...], dtype: torch.dtype, returned: torch.Tensor,
                  device: torch.device) -> None:
        k, w, n = self.members, self.window, math.prod(shape)
        f64 = torch.float64
        self._shape = shape
        self._buf = torch.zeros((k, w, n), dtype=dtype, device=device)
        self._sqnorm = torch.zeros((k, w), dtype=f64, device=device)
        self._sum = torch.zeros((k, n), dtype=f64, device=device)
        self._scratch = torch.empty((k, n), dtype=f64, device=device)
        self._sdot = torch.empty(k, dtype=f64, device=device)  # ||S||^2 per member, after _push
        self._sdot_fresh = False
        self._var = torch.full((k,), math.nan, dtype=f64, device=device)
        self._best_var = torch.full((k,), math.inf, dtype=f64, device=device)
        self._best_step_dev, self._capture_dev, self._held_dev = (
            torch.full((k,), -1, dtype=torch.int64, device=device) for _ in range(3))
        self._count_dev = torch.tensor(self._count, dtype=torch.int64, device=device)
        self._best_out = torch.zeros_like(returned)
        self._branch_free = branch_free(device, self.branch_free)
        self._rows = torch.arange(k, device=device)
        # members per pass of the elementwise updates: all at once on the accelerators' path (one
        # kernel each); on CPU as many as keep a pass's float64 rows within ~1 MiB of cache, so
        # that the passes of one update reuse them (K = 16 at 3x128x128 in one pass: 0.7x the
        # speed of 16 single rules; in passes of 2: the same, benchmarks/test_bench_stopping_packed.py)
        self._chunk = k if self._branch_free else max(1, (1 << 20) // (8 * n))

    @property
    def _sync_every(self) -> int:
        if self.sync_every is not None:
            return self.sync_every
        return 25 if self._buf is not None and self._buf.device.type != "cpu" else 1

    def _mask(self, rows: Sequence[bool]) -> torch.Tensor:
        """(K,) bool on the device, cached per pattern: no host-to-device copy per update."""
        key = tuple(bool(r) for r in rows)
        if key not in self._masks:
            self._masks[key] = torch.tensor(key, dtype=torch.bool, device=self._buf.device)
        return self._masks[key]

    def should_check(self, step: int) -> bool:
        """True when ``update`` would observe this step (``step % every == 0``)."""
        return step % self.every == 0

    # ----------------------------------------------------------------- update
    def update(self, step: int, outputs: torch.Tensor, returned: torch.Tensor | None = None,
               observed: Sequence[bool] | None = None) -> list[bool]:
        """Observe one step of every member; returns K host bools, True where the rule fired.

        Args:
            step: the fit's step (int, increasing between calls).
            outputs: (K, ...) float tensor, row k member k's watched output (e.g. (K, C, H, W),
                any strides); same shape at every call; never modified.
            returned: (K, ...) the images to hold (default ``outputs``; unused with
                ``return_mean``).
            observed: K bools, False for members that skip this step (their state is left
                exactly as it is); default all.  Members whose rule has fired are skipped.
        """
        outputs, returned = self._check_inputs(step, outputs, returned)
        step, k = int(step), self.members
        obs = [True] * k if observed is None else [bool(o) for o in observed]
        if len(obs) != k:
            raise ValueError(f"observed has {len(obs)} entries for {k} members")
        obs = [o and not s for o, s in zip(obs, self._stopped, strict=True)]
        if not self.should_check(step) or not any(obs):
            return list(self._stopped)
        last = [t for t, o in zip(self._last_step, obs, strict=True) if o and t is not None]
        if last and step <= max(last):
            raise ValueError(f"step must increase between updates: got {step} after {max(last)}")
        if self._buf is None:
            self._allocate(tuple(outputs.shape[1:]), outputs.dtype,
                           (outputs if self.return_mean else returned).detach(), outputs.device)
        self._check_shapes(outputs, returned)
        mask = None if all(obs) else self._mask(obs)
        self._push(outputs.detach(), mask)
        for j in range(k):
            if obs[j]:
                self._count[j] += 1
                self._last_step[j] = step
        due = [j for j in range(k) if obs[j] and self._count[j] % self.recompute_every == 0]
        if due:
            self._recompute(due)
        full = [o and c >= self.window for o, c in zip(obs, self._count, strict=True)]
        if any(full):
            self._track(step, self._mask(full), full, returned.detach())
            sync = [j for j in range(k) if full[j] and (self._count[j] - self.window) % self._sync_every == 0]
            if sync:
                self._check(step, sync)
        return list(self._stopped)

    def _check_inputs(self, step: int, outputs: torch.Tensor,
                      returned: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        check_update_types(step, outputs, "outputs")
        if outputs.dim() < 1 or outputs.shape[0] != self.members:
            raise ValueError(f"outputs must have shape (K, ...) with K = {self.members} members, "
                             f"got {tuple(outputs.shape)}")
        if returned is None:
            return outputs, outputs
        if not isinstance(returned, torch.Tensor) or returned.dim() < 1 or returned.shape[0] != self.members:
            raise ValueError(f"returned must be a (K, ...) tensor with K = {self.members}, got "
                             f"{tuple(returned.shape) if isinstance(returned, torch.Tensor) else returned!r}")
        return outputs, returned

    def _check_shapes(self, outputs: torch.Tensor, returned: torch.Tensor) -> None:
        if tuple(outputs.shape[1:]) != self._shape:
            raise ValueError(f"output shape changed: the rules hold outputs of {self._shape}, "
                             f"got {tuple(outputs.shape[1:])} per member")
        if not self.return_mean and returned.shape != self._best_out.shape:
            raise ValueError(f"returned shape changed: expected {tuple(self._best_out.shape)}, "
                             f"got {tuple(returned.shape)}")
        if outputs.device != self._buf.device:
            raise ValueError(f"outputs are on {outputs.device} but earlier outputs were on {self._buf.device}")

    def _push(self, x: torch.Tensor, mask: torch.Tensor | None) -> None:
        """Write each observed member's output into its oldest slot; update S and the norms."""
        k, w = self.members, self.window
        x64 = self._scratch.view((k,) + self._shape)
        if mask is None and len(set(self._count)) == 1:  # the common case: one slot for all
            slot, full = self._count[0] % w, self._count[0] >= w
            for a in range(0, k, self._chunk):
                rows = slice(a, min(a + self._chunk, k))
                s64, total = self._scratch[rows], self._sum[rows]
                if full:  # the single rule's order: S - oldest + newest
                    total.sub_(s64.copy_(self._buf[rows, slot]))
                x64[rows].copy_(x[rows])
                self._buf[rows, slot].view(x[rows].shape).copy_(x[rows])
                self._sqnorm[rows, slot] = _row_dot(s64, self._branch_free)
                total.add_(s64)
                self._sdot[rows] = _row_dot(total, self._branch_free)  # ||S||^2 while S is in cache
            self._sdot_fresh = True
            self._count_dev.add_(1)
            return
        self._sdot_fresh = False
        # members at different counts, or some skipping: each its own slot, from the device
        slots = torch.remainder(self._count_dev, w)
        x64.copy_(x)
        flat = x.reshape(k, -1).to(self._buf.dtype)
        old = self._buf[self._rows, slots]                     # (K, n) a copy; zeros if unwritten
        norms = _row_dot(self._scratch, self._branch_free)
        m = (self._mask([True] * k) if mask is None else mask).view(k, 1)
        torch.where(m, (self._sum - old).add_(self._scratch), self._sum, out=self._sum)
        self._buf[self._rows, slots] = torch.where(m, flat, old)
        self._sqnorm[self._rows, slots] = torch.where(m.view(k), norms, self._sqnorm[self._rows, slots])
        self._count_dev.add_(m.view(k))

    def _recompute(self, due: list[int]) -> None:
        """Exact S of members ``due`` from their slots, in slot order (as the single rule)."""
        self._sdot_fresh = False
        if len(due) == self.members and all(c >= self.window for c in self._count):
            self._sum.zero_()
            for a in range(0, self.members, self._chunk):
                rows = slice(a, a + self._chunk)
                for w in range(self.window):
                    self._sum[rows].add_(self._buf[rows, w])
            return
        for j in due:
            self._sum[j].zero_()
            for row in self._buf[j, :min(self._count[j], self.window)]:
                self._sum[j].add_(row)

    def _track(self, step: int, valid: torch.Tensor, full: list[bool], returned: torch.Tensor) -> None:
        """Variance, minimum, held step and held image of the members with a full window."""
        w, n = self.window, self._buf.shape[2]
        sdot = self._sdot if self._sdot_fresh else _row_dot(self._sum, self._branch_free)
        var = ((self._sqnorm.sum(1) - sdot / w) / (w * n)).clamp_min(0.0)
        torch.where(valid, var, self._var, out=self._var)
        for j, f in enumerate(full):
            if f:
                self._hist_steps[j].append(step)
                self._hist_rows[j].append(len(self._hist))
        self._hist.append(var)
        improved = (var < self._best_var) & valid  # NaN never improves
        torch.where(improved, var, self._best_var, out=self._best_var)
        self._best_step_dev.masked_fill_(improved, step)
        self._capture_dev.masked_fill_(improved, step + self.return_delay)
        take = improved | ((self._capture_dev == step) & valid)
        self._held_dev.masked_fill_(take, step)
        self._take, self._take_step = take, step
        if self._branch_free:
            src = (self._sum / w).to(self._buf.dtype).view((self.members,) + self._shape) if self.return_mean \
                else returned.to(self._best_out.dtype)
            torch.where(take.view((-1,) + (1,) * (src.dim() - 1)), src, self._best_out, out=self._best_out)
            return
        for j, t in enumerate(take.tolist()):  # one read of K flags (free on CPU); copy only those held
            if t:
                self._best_out[j].copy_((self._sum[j] / w).to(self._buf.dtype).view(self._shape)
                                        if self.return_mean else returned[j])

    def _check(self, step: int, rows: list[int]) -> None:
        best = self._best_step_dev.tolist()  # the one host read, for all members due
        best_var = None
        for j in rows:
            self._best_step_host[j] = best[j] if best[j] >= 0 else None
            if best[j] >= 0 and step - best[j] >= self.patience:
                if best_var is None:
                    best_var = self._best_var.tolist()
                self._stopped[j] = True
                self._reason[j] = stop_reason(self.window, best_var[j], best[j], step, self.patience)

    def held_now(self, step: int) -> torch.Tensor | None:
        """(K,) bool on the device: True for the members whose returned step became ``step``
        at the update of ``step`` (None when that update computed none: no member did)."""
        return self._take if self._take_step == step else None

    def finalize(self) -> None:
        """Sync the tracked minima to the host (call when the fit ends for any reason)."""
        rows = [j for j in range(self.members) if self._count[j] >= self.window and not self._stopped[j]]
        if self._buf is not None and rows:
            best = self._best_step_dev.tolist()
            for j in rows:
                self._best_step_host[j] = best[j] if best[j] >= 0 else None

    # ------------------------------------------------------------- per member
    def stopped(self, k: int) -> bool:
        """True once member ``k``'s rule has fired."""
        return self._stopped[k]

    def reason(self, k: int) -> str:
        """Why member ``k``'s rule fired ("" while it has not)."""
        return self._reason[k]

    def steps_observed(self, k: int) -> int:
        """Number of updates member ``k`` observed."""
        return self._count[k]

    def best_step(self, k: int) -> int | None:
        """Step of member ``k``'s variance minimum (None before its window is full); syncs."""
        self.finalize()
        return self._best_step_host[k]

    def returned_step(self, k: int) -> int | None:
        """Step whose image ``best_output(k)`` holds (as the single rule's ``returned_step``)."""
        if self.best_step(k) is None:
            return None
        return int(self._held_dev[k])

    def best_output(self, k: int) -> torch.Tensor | None:
        """Member ``k``'s held image (a view of the rules' buffer: clone it to keep it), None
        before its window first fills."""
        if self.best_step(k) is None:
            return None
        return self._best_out[k]

    def history(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Member ``k``'s (steps int64 (t,), variances float64 (t,)), as the single rule's."""
        steps = np.asarray(self._hist_steps[k], dtype=np.int64)
        if not self._hist_rows[k]:
            return steps, np.zeros(0, dtype=np.float64)
        return steps, self._history_matrix()[self._hist_rows[k], k].numpy()

    def _history_matrix(self) -> torch.Tensor:
        """(updates, K) float64 on the CPU; NaN-free only where a member had a full window."""
        return torch.stack(self._hist).cpu() if self._hist else torch.zeros(0, self.members, dtype=torch.float64)

    def member(self, k: int) -> WindowedVarianceStopper:
        """A single rule holding member ``k``'s state (copies), on the rules' device."""
        rule = WindowedVarianceStopper(**self._settings)  # type: ignore[arg-type]
        rule.load_state_dict(self.member_state_dict(k, copy=False))  # the load copies
        return rule

    # ------------------------------------------------------------ checkpoints
    def member_state_dict(self, k: int, copy: bool = True) -> dict[str, torch.Tensor]:
        """Member ``k``'s state in the single rule's format
        (:meth:`dip.stopping.WindowedVarianceStopper.state_dict`: loadable by it); copies, or
        with ``copy=False`` views of the pack's tensors where it can (its ring buffer row: W
        images), valid until the next update."""
        own = torch.Tensor.clone if copy else torch.Tensor.detach
        count = self._count[k]
        meta = {"window": self.window, "patience": self.patience, "every": self.every,
                "return_delay": self.return_delay, "return_mean": int(self.return_mean), "count": count,
                "stopped": int(self._stopped[k]), "last_step": -1 if self._last_step[k] is None else self._last_step[k]}
        sd: dict[str, torch.Tensor] = {key: torch.tensor(v, dtype=torch.int64) for key, v in meta.items()}
        sd["history_step"] = torch.tensor(self._hist_steps[k], dtype=torch.int64)
        rows = self._hist_rows[k]
        sd["history_var"] = (torch.stack(self._hist)[rows, k] if rows
                             else torch.zeros(0, dtype=torch.float64))
        if self._buf is not None and count > 0:
            sd["buffer"] = own(self._buf[k])
            sd["shape"] = torch.tensor(self._shape, dtype=torch.int64)
            for key, t in (("best_var", self._best_var), ("best_step", self._best_step_dev),
                           ("capture_step", self._capture_dev), ("held_step", self._held_dev),
                           ("best_output", self._best_out), ("last_var", self._var)):
                sd[key] = own(t[k])
        sd["reason"] = torch.tensor(list(self._reason[k].encode("utf-8")), dtype=torch.uint8)
        return sd

    def load_state_dicts(self, states: Sequence[dict[str, torch.Tensor]],
                         device: torch.device | str | None = None) -> None:
        """Restore K members from K single rules' ``state_dict()`` (member k from ``states[k]``;
        members may have observed different numbers of steps); tensors go to ``device``
        (default: where they are).  Raises ValueError for a count other than K, settings that
        differ from these rules', or states of different output shapes."""
        if len(states) != self.members:
            raise ValueError(f"{len(states)} stopper states for {self.members} members: give one per member")
        rules = []
        for state in states:  # the single rule checks each state's keys and settings
            rule = WindowedVarianceStopper(**self._settings)  # type: ignore[arg-type]
            rule.load_state_dict(state, device)
            rules.append(rule)
        self._reset(self.members)
        held = [r for r in rules if r._buf is not None]
        if any(r._shape != held[0]._shape or r._best_out.shape != held[0]._best_out.shape for r in held):
            raise ValueError("the stopper states hold outputs of different shapes: pack members of one output "
                             "shape only")
        for j, r in enumerate(rules):
            self._count[j], self._last_step[j], self._stopped[j], self._reason[j] = (
                r._count, r._last_step, r._stopped, r._reason)
            self._best_step_host[j] = r._best_step_host
        if held:
            self._load_tensors(rules, held[0])
        self._load_history(rules)

    def _load_tensors(self, rules: list[WindowedVarianceStopper], first: WindowedVarianceStopper) -> None:
        dev = first._buf.device
        self._allocate(first._shape, first._buf.dtype, first._best_out.unsqueeze(0).expand(
            (self.members,) + tuple(first._best_out.shape)), dev)
        for j, r in enumerate(rules):
            if r._buf is None:
                continue
            written = min(r._count, self.window)  # slots never written stay zero (see _push)
            self._buf[j, :written] = r._buf[:written]
            self._sqnorm[j] = r._sqnorm
            self._sum[j] = r._sum
            for mine, theirs in ((self._best_var, r._best_var), (self._best_step_dev, r._best_step_dev),
                                 (self._capture_dev, r._capture_dev), (self._held_dev, r._held_dev),
                                 (self._best_out, r._best_out), (self._var, r._var)):
                mine[j] = theirs

    def _load_history(self, rules: list[WindowedVarianceStopper]) -> None:
        """One (K,) row per distinct step of the members' histories (NaN where a member has none)."""
        steps = sorted({s for r in rules for s in r._hist_steps})
        at = {s: i for i, s in enumerate(steps)}
        device = self._buf.device if self._buf is not None else torch.device("cpu")
        matrix = torch.full((len(steps), self.members), math.nan, dtype=torch.float64)
        for j, r in enumerate(rules):
            rows = [at[s] for s in r._hist_steps]
            self._hist_steps[j] = list(r._hist_steps)
            self._hist_rows[j] = rows
            if rows:
                matrix[rows, j] = torch.stack(r._hist_vars).cpu()
        self._hist = list(matrix.to(device).unbind(0))

    def subset(self, keep: Sequence[int]) -> None:
        """Keep members ``keep`` (positions, in the new order) and drop the others; the kept
        members' state is unchanged (their rows are copied)."""
        keep = [int(j) for j in keep]
        if not keep or any(not 0 <= j < self.members for j in keep):
            raise ValueError(f"keep must list member positions in [0, {self.members}), got {keep}")
        history = self._history_matrix()[:, keep] if self._hist else None
        self._count = [self._count[j] for j in keep]
        self._last_step = [self._last_step[j] for j in keep]
        self._best_step_host = [self._best_step_host[j] for j in keep]
        self._stopped = [self._stopped[j] for j in keep]
        self._reason = [self._reason[j] for j in keep]
        self._hist_steps = [self._hist_steps[j] for j in keep]
        self._hist_rows = [self._hist_rows[j] for j in keep]
        self._masks = {}
        if history is not None:
            self._hist = list(history.to(self._hist[0].device).unbind(0))
        if self._buf is None:
            return
        index = torch.tensor(keep, device=self._buf.device)
        for name in ("_buf", "_sqnorm", "_sum", "_scratch", "_var", "_best_var", "_best_step_dev",
                     "_capture_dev", "_held_dev", "_count_dev", "_best_out", "_sdot"):
            setattr(self, name, getattr(self, name).index_select(0, index))
        self._rows = torch.arange(len(keep), device=self._buf.device)
        self._take, self._take_step = None, None

    def __repr__(self) -> str:
        return (f"PackedWindowedVarianceStopper(members={self.members}, window={self.window}, "
                f"patience={self.patience}, observed={self._count}, stopped={self._stopped})")
