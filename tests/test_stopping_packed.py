"""The vectorised ES-WMV rule of K members against K single rules on the same sequences."""
import io

import numpy as np
import pytest
import torch

from dip.stopping import WindowedVarianceStopper
from dip.stopping_packed import PackedWindowedVarianceStopper

SHAPE = (1, 2, 3, 4)


def sequences(k, steps, seed=0):
    """(steps, K, *SHAPE) outputs: member j's spread is smallest at its own valley, so the
    members' rules fire at different steps."""
    g = torch.Generator().manual_seed(seed)
    valleys = torch.linspace(steps * 0.2, steps * 0.5, k)
    t = torch.arange(steps, dtype=torch.float32)[:, None]
    amps = 0.01 + (t - valleys[None]).abs() / steps                       # (steps, K)
    return 0.5 + amps.view(steps, k, 1, 1, 1, 1) * torch.randn((steps, k) + SHAPE, generator=g)


def assert_same(single, packed, j):
    """Member j of ``packed`` holds what ``single`` holds: steps, reason and image exactly
    (a window mean too: S is equal bit for bit); variances exactly on the CPU path, to float64
    rounding on the branch-free one (one batched product for the K norms)."""
    assert packed.stopped(j) == single.stopped
    assert packed.best_step(j) == single.best_step
    assert packed.returned_step(j) == single.returned_step
    assert packed.reason(j) == single.reason
    assert packed.steps_observed(j) == single.steps_observed
    if single.best_output is None:
        assert packed.best_output(j) is None
    else:
        assert torch.equal(packed.best_output(j), single.best_output)
    steps, var = packed.history(j)
    s_steps, s_var = single.history()
    np.testing.assert_array_equal(steps, s_steps)
    if packed._branch_free:
        np.testing.assert_allclose(var, s_var, rtol=1e-9, atol=1e-18)
    else:
        np.testing.assert_array_equal(var, s_var)


def run_both(kw, outs, skip=(), branch_free=None):
    """Feed ``outs`` (steps, K, ...) to K single rules and one packed rule; ``skip``: (step,
    member) pairs that member does not observe."""
    steps, k = outs.shape[:2]
    singles = [WindowedVarianceStopper(**kw) for _ in range(k)]
    packed = PackedWindowedVarianceStopper(k, branch_free=branch_free, **kw)
    for t in range(steps):
        observed = [(t, j) not in skip for j in range(k)]
        fired = packed.update(t, outs[t], observed=observed)
        for j, s in enumerate(singles):
            if observed[j]:
                s.update(t, outs[t, j])
            assert fired[j] == s.stopped
        if all(fired):
            break
    return singles, packed


@pytest.mark.parametrize("kw", [dict(window=8, patience=20), dict(window=6, patience=15, return_mean=True,
                                                                      return_delay=5, recompute_every=7),
                                dict(window=5, patience=12, every=2, sync_every=3)])
def test_each_member_follows_its_single_rule(kw):
    outs = sequences(4, 160)
    singles, packed = run_both(kw, outs)
    stops = {s.best_step for s in singles}
    assert len(stops) > 1 and all(s.stopped for s in singles)  # members stop at different steps
    for j, s in enumerate(singles):
        assert_same(s, packed, j)


def test_members_that_skip_steps_keep_their_state_exactly():
    outs = sequences(3, 150, seed=1)
    skip = {(3, 1), (10, 1), (11, 2), (40, 0), (41, 1)}
    singles, packed = run_both(dict(window=7, patience=18, recompute_every=9), outs, skip)
    assert len({s.steps_observed for s in singles}) == 3
    for j, s in enumerate(singles):
        assert_same(s, packed, j)


def test_forced_branch_free_path_equals_the_cpu_path():
    outs = sequences(3, 140, seed=2)
    for kw in (dict(window=6, patience=16), dict(window=6, patience=16, return_mean=True, return_delay=5)):
        _, cpu = run_both(kw, outs, {(20, 1)}, branch_free=False)
        singles, free = run_both(kw, outs, {(20, 1)}, branch_free=True)
        for j, s in enumerate(singles):
            assert_same(s, free, j)
            assert torch.equal(free.best_output(j), cpu.best_output(j))
            assert free.member_state_dict(j).keys() == cpu.member_state_dict(j).keys()
    single_free = WindowedVarianceStopper(window=6, patience=16, branch_free=True)
    single_cpu = WindowedVarianceStopper(window=6, patience=16)
    for t in range(140):
        a, b = single_free.update(t, outs[t, 0]), single_cpu.update(t, outs[t, 0])
        assert a == b
        took = single_free.held_now(t)
        assert (took is not None and bool(took)) == (single_cpu.returned_step == t)
    assert torch.equal(single_free.best_output, single_cpu.best_output)


def test_dropping_members_mid_run_keeps_the_others():
    outs = sequences(4, 200, seed=3)
    kw = dict(window=8, patience=25)
    singles = [WindowedVarianceStopper(**kw) for _ in range(4)]
    packed = PackedWindowedVarianceStopper(4, **kw)
    alive, checked = [0, 1, 2, 3], 0
    for t in range(200):
        fired = packed.update(t, outs[t, alive])
        for j in alive:
            singles[j].update(t, outs[t, j])
        if t == 30:  # one member leaves before any rule fires
            keep = [0, 2, 3]
            packed.subset(keep)
            alive = [alive[p] for p in keep]
            continue
        if any(fired):
            for p, j in enumerate(alive):
                assert_same(singles[j], packed, p)
                checked += 1
            keep = [p for p, f in enumerate(fired) if not f]
            if not keep:
                break
            packed.subset(keep)
            alive = [alive[p] for p in keep]
    for p, j in enumerate(alive):  # those still going at the end
        assert_same(singles[j], packed, p)
    assert checked >= 2 and len(alive) < 3  # members fired and left after the first one was dropped


def test_state_dicts_are_single_rules_state_dicts():
    outs = sequences(3, 120, seed=4)
    kw = dict(window=6, patience=40, return_mean=True, return_delay=5)
    singles, packed = run_both(kw, outs[:50], {(7, 2)})
    for j, s in enumerate(singles):
        mine, theirs = packed.member_state_dict(j), s.state_dict()
        assert mine.keys() == theirs.keys()
        for key in theirs:
            assert mine[key].dtype == theirs[key].dtype and mine[key].shape == theirs[key].shape, key
        assert torch.equal(mine["history_step"], theirs["history_step"])
    # packed -> single: member 1 resumes alone (through torch.save) like its own single rule
    buf = io.BytesIO()
    torch.save(packed.member_state_dict(1), buf)
    buf.seek(0)
    alone = WindowedVarianceStopper(**kw)
    alone.load_state_dict(torch.load(buf))
    # K singles -> packed: the three continue together
    again = PackedWindowedVarianceStopper(3, **kw)
    again.load_state_dicts([s.state_dict() for s in singles])
    for t in range(50, 120):
        again.update(t, outs[t])
        alone.update(t, outs[t, 1])
        for j, s in enumerate(singles):
            s.update(t, outs[t, j])
    for j, s in enumerate(singles):
        assert_same(s, again, j)
    assert alone.best_step == singles[1].best_step and alone.reason == singles[1].reason
    assert torch.equal(alone.best_output, singles[1].best_output)
    with pytest.raises(ValueError, match="window=6"):
        PackedWindowedVarianceStopper(3, window=7, patience=40).load_state_dicts(
            [s.state_dict() for s in singles])
    with pytest.raises(ValueError, match="2 stopper states for 3 members"):
        again.load_state_dicts([s.state_dict() for s in singles[:2]])


def test_member_rules_and_states_do_not_follow_the_pack():
    """A member's own rule (what a member leaving the pack, or a checkpoint, takes) and its
    copied state keep the state they were taken with while the pack goes on."""
    outs = sequences(2, 60, seed=5)
    kw = dict(window=6, patience=40)
    singles, packed = run_both(kw, outs[:30])
    rule, saved = packed.member(1), packed.member_state_dict(1)
    for t in range(30, 40):
        packed.update(t, outs[t])
    assert_same(singles[1], _as_packed(rule, kw), 0)
    assert torch.equal(saved["buffer"], singles[1].state_dict()["buffer"])


def _as_packed(rule, kw):
    """A pack of one member holding ``rule``'s state."""
    one = PackedWindowedVarianceStopper(1, **kw)
    one.load_state_dicts([rule.state_dict()])
    return one


def test_bad_inputs_raise_clear_errors():
    p = PackedWindowedVarianceStopper(2, window=3, patience=3)
    with pytest.raises(ValueError, match="K = 2 members"):
        p.update(0, torch.rand(3, 1, 4))
    p.update(0, torch.rand(2, 1, 4))
    with pytest.raises(ValueError, match="shape changed"):
        p.update(1, torch.rand(2, 1, 5))
    with pytest.raises(ValueError, match="step must increase"):
        p.update(0, torch.rand(2, 1, 4))
    with pytest.raises(ValueError, match="members must be an int"):
        PackedWindowedVarianceStopper(0)
    with pytest.raises(ValueError, match="keep must list"):
        p.subset([2])


def test_large_outputs_updated_in_several_passes_follow_their_single_rules():
    # 3x150x150 float64 rows exceed the CPU path's ~1 MiB per pass: one member per pass
    g = torch.Generator().manual_seed(5)
    base = torch.rand((3, 1, 3, 150, 150), generator=g)
    amps = 0.01 + (torch.arange(30.0)[:, None] - torch.tensor([8.0, 12.0, 16.0])).abs() / 30
    outs = base + amps.view(30, 3, 1, 1, 1, 1) * torch.randn((30, 3, 1, 3, 150, 150), generator=g)
    kw = dict(window=4, patience=6, return_mean=True, return_delay=3, recompute_every=5)
    singles, packed = run_both(kw, outs)
    assert packed._chunk == 1 and any(s.stopped for s in singles)
    for j, s in enumerate(singles):
        assert_same(s, packed, j)


def test_one_host_read_per_sync_for_all_members():
    reads = []

    class Counting(PackedWindowedVarianceStopper):
        def _check(self, step, rows):
            reads.append((step, tuple(rows)))
            super()._check(step, rows)

    packed = Counting(4, window=5, patience=1000, sync_every=10)
    outs = sequences(4, 50, seed=6)
    for t in range(50):
        packed.update(t, outs[t])
    assert reads == [(t, (0, 1, 2, 3)) for t in (4, 14, 24, 34, 44)]
