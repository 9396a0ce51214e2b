"""The captured CUDA path's device-independent parts, on the CPU.

- :func:`dip.engine.captured_step.capture_plan`: every reason a fit is not captured;
- :class:`dip.engine.deferred.DeferredCheck`: which steps end a window, and a window's verdict;
- the rollback of the record (stopping rule, held state, tracker) to a mark;
- the fit loop's captured path (``_FitRun._captured_step`` / ``_settle``) with the CUDA graph
  replaced by the eager step: judged a window at a time it must give the eager fit's result bit
  for bit, and a non-finite loss found at the window's end must restore the eager fit's snapshot
  and roll the record back to the window's start.
"""
import logging
import math

import pytest
import torch

import dip.engine.loop as loop
from dip.engine.captured_step import WARMUP_STEPS, capture_plan
from dip.engine.deferred import CHECK_EVERY, DeferredCheck
from dip.engine.held_state import HeldState
from dip.engine.tracking import Tracker
from dip.fit import FitConfig, fit, generator_geometry
from dip.inputs import make_input
from dip.physics import Identity
from dip.stopping import WindowedVarianceStopper
from tests.test_fit import small_skip

CUDA = torch.device("cuda")


# ------------------------------------------------------------------ capture_plan

def test_capture_plan_captures_an_adam_fit_on_cuda():
    ok, reason = capture_plan(FitConfig(device="cpu"), CUDA, steps_left=100)
    assert ok and "captured" in reason


@pytest.mark.parametrize("changes,kwargs,words", [
    ({"cuda_graph": False}, {}, "cuda_graph is off"),
    ({"optimizer": "lbfgs"}, {}, "LBFGS"),
    ({"compile": True}, {}, "torch.compile"),
    ({"optimize": "input"}, {}, "input code"),
    ({"optimize": "both"}, {}, "input code"),
    ({}, {"operator_trainable": True}, "operator is fitted"),
    ({}, {"fused": False}, "fused"),
    ({}, {"steps_left": WARMUP_STEPS}, "warm-up"),
])
def test_capture_plan_says_why_it_does_not_capture(changes, kwargs, words):
    ok, reason = capture_plan(FitConfig(**changes), CUDA, **kwargs)
    assert not ok and words in reason


def test_capture_plan_never_captures_on_the_cpu():
    ok, reason = capture_plan(FitConfig(), "cpu")
    assert not ok and "cpu" in reason


def test_cuda_graph_must_be_a_bool():
    with pytest.raises(ValueError, match="cuda_graph"):
        FitConfig(cuda_graph="yes")


# ------------------------------------------------------------------ DeferredCheck

class _Judge:
    """Recovery.check's contract: non-finite fails; every check step is recorded."""

    def __init__(self, check_every):
        self.check_every, self.seen = check_every, []

    def check(self, step, loss):
        self.seen.append(step)
        return None if math.isfinite(loss) else f"the loss is {loss}"


def test_windows_end_at_check_steps_and_every_k_steps():
    d = DeferredCheck(check_every=10, judged=0)
    assert [s for s in range(1, 61) if d.due(s)] == [10, 20, 25, 30, 40, 50, 60]
    assert d.longest == 10 and CHECK_EVERY == 25
    assert DeferredCheck(check_every=100, judged=0).longest == CHECK_EVERY


def test_a_window_is_judged_in_order_and_stops_at_its_first_failure():
    losses = torch.tensor([1.0, 0.5, float("nan"), float("inf"), 0.2, 0.1])
    d, judge = DeferredCheck(check_every=10, judged=0), _Judge(10)
    failure = d.judge(5, losses, judge)
    assert (failure.step, failure.finite) == (3, False) and "nan" in failure.why
    assert judge.seen == [1, 2, 3] and d.judged == 5 and d.window_start == 1
    assert d.judge(5, losses, judge) is None  # nothing left to judge
    assert d.judge(6, losses, judge) is None and judge.seen[-1] == 6 and d.window_start == 6


def test_a_window_must_not_span_a_check_step():
    d = DeferredCheck(check_every=4, judged=0)
    with pytest.raises(ValueError, match="check step"):
        d.judge(6, torch.ones(6), _Judge(4))


# ------------------------------------------------------------------ rollback of the record

def _outputs(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(1, 3, 5, 4, generator=g) for _ in range(n)]


@pytest.mark.parametrize("branch_free", [False, True])
@pytest.mark.parametrize("return_mean", [False, True])
def test_a_rolled_back_stopper_goes_on_as_if_the_updates_never_happened(branch_free, return_mean):
    outs, bogus = _outputs(30), [torch.full((1, 3, 5, 4), float("nan"))] * 4
    kw = dict(window=5, patience=40, return_mean=return_mean, return_delay=4 if return_mean else 0,
              recompute_every=7, branch_free=branch_free)
    plain, rolled = WindowedVarianceStopper(**kw), WindowedVarianceStopper(**kw)
    for step, out in enumerate(outs, start=1):
        plain.update(step, out)
    marks = {}
    for step, out in enumerate(outs, start=1):
        if step in (3, 12, 21):  # before the buffer fills, after, and again
            marks[step] = rolled.mark(4)
            for k, b in enumerate(bogus):
                rolled.update(step + k, b)
            rolled.rollback(marks[step])
        rolled.update(step, out)
    a, b = plain.state_dict(), rolled.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert rolled.best_step == plain.best_step


def test_a_stopper_mark_covers_only_the_updates_it_names():
    s = WindowedVarianceStopper(window=3, patience=10)
    for step, out in enumerate(_outputs(4), start=1):
        s.update(step, out)
    mark = s.mark(2)
    for step, out in enumerate(_outputs(3, seed=1), start=5):
        s.update(step, out)
    with pytest.raises(ValueError, match="covers 2"):
        s.rollback(mark)


def test_a_held_state_rolls_back_on_both_paths():
    live = {"w": torch.zeros(3)}
    for branch_free in (False, True):
        held = HeldState(branch_free)
        mark0 = held.mark()
        held.offer(torch.tensor(True), lambda: live)
        live["w"] += 1
        mark1 = held.mark()
        held.offer(torch.tensor(True), lambda: live)
        assert torch.equal(held.value["w"], torch.ones(3))
        held.rollback(mark1)
        assert torch.equal(held.value["w"], torch.zeros(3))
        held.rollback(mark0)
        assert held.value is None and not held.has_value
        live["w"].zero_()


def test_a_tracker_rolls_back_its_average_history_and_rule():
    config = FitConfig(steps=20, exp_weight=0.9, stop="auto", stop_window=3, stop_patience=50, psnr_every=2)
    gt = torch.rand(1, 3, 5, 4, generator=torch.Generator().manual_seed(5))
    plain, rolled = Tracker(config, gt, torch.device("cpu")), Tracker(config, gt, torch.device("cpu"))
    live = {"w": torch.zeros(2)}
    outs = _outputs(12)
    for step, out in enumerate(outs, start=1):
        plain.observe(step, out, lambda: live)
    mark = None
    for step, out in enumerate(outs, start=1):
        if step == 6:
            mark = rolled.mark(3)
            for k in range(3):
                rolled.observe(6 + k, torch.full_like(out, float("nan")), lambda: live)
            rolled.rollback(mark)
        rolled.observe(step, out, lambda: live)
    assert torch.equal(plain.out_avg, rolled.out_avg) and plain.history == rolled.history
    assert plain.last_psnr == rolled.last_psnr and plain.stopper.best_step == rolled.stopper.best_step


# ------------------------------------------------------------------ the loop's captured path

class _EagerStandIn:
    """The captured step with the graph replaced by the eager step (same values on the CPU)."""

    made: list = []

    def __init__(self, fast):
        self.fast, self.needs_capture, self.invalidations = fast, False, 0
        _EagerStandIn.made.append(self)

    def __call__(self):
        return self.fast()

    def invalidate(self):
        self.invalidations += 1


@pytest.fixture
def deferred_on_cpu(monkeypatch):
    """Fits on the CPU take the captured path's loop (windows judged after the fact)."""
    _EagerStandIn.made = []
    monkeypatch.setattr(loop, "capture_plan", lambda *a, **k: (True, "test: the deferred path on the CPU"))
    monkeypatch.setattr(loop, "CapturedStep", _EagerStandIn)
    return _EagerStandIn.made


def _problem(hw=(16, 12)):
    g = torch.Generator().manual_seed(0)
    y = torch.rand(1, 3, *hw, generator=g)
    _, z_hw = generator_geometry(small_skip(), hw)
    return y, make_input("noise", 4, z_hw, generator=g)


def _fit(config, callbacks=()):
    y, z = _problem()
    gt = (y + 0.05).clamp(0, 1)
    return fit(y, Identity(), small_skip(), z, config, gt=gt, callbacks=callbacks)


def _same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


CONFIG = dict(steps=37, exp_weight=0.9, stop="auto", stop_window=4, stop_patience=100, psnr_every=5,
              backtrack=True, check_every=5, reg_noise_std=0.05, lr=0.02)


def test_judged_a_window_at_a_time_the_fit_is_the_eager_fit():
    eager = _fit(FitConfig(**CONFIG))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "capture_plan", lambda *a, **k: (True, "test"))
        mp.setattr(loop, "CapturedStep", _EagerStandIn)
        deferred = _fit(FitConfig(**CONFIG))
    assert _EagerStandIn.made  # the deferred path ran
    assert torch.equal(eager.image, deferred.image) and torch.equal(eager.image_avg, deferred.image_avg)
    assert eager.history == deferred.history and eager.returned_step == deferred.returned_step
    assert _same_state(eager.returned_state, deferred.returned_state)
    assert _same_state(eager.stopper_state, deferred.stopper_state)
    assert eager.recoveries == deferred.recoveries


def _poison_at(step):
    """A callback that makes the weights NaN after ``step``: the next step's loss is not finite."""
    def poison(event):
        if event.step == step:
            with torch.no_grad():
                next(poison.net.parameters()).fill_(float("nan"))
    return poison


def _fit_poisoned(config, poison_step):
    y, z = _problem()
    net = small_skip()
    poison = _poison_at(poison_step)
    poison.net = net
    return fit(y, Identity(), net, z, config, gt=(y + 0.05).clamp(0, 1), callbacks=[poison])


def test_a_non_finite_loss_found_late_restores_the_eager_snapshot_and_rolls_the_record_back(
        deferred_on_cpu, caplog):
    """Poisoned after step 13, step 14's loss is NaN; the window 11..15 is judged at step 15:
    the state of the check of step 10 is loaded (as the eager fit loads it at step 14) and the
    record goes back to step 10's: the fit ends exactly as a 10-step fit, plus the lost steps."""
    config = FitConfig(**{**CONFIG, "steps": 15, "backtrack": False})
    with caplog.at_level(logging.INFO, logger="dip.fit"):
        late = _fit_poisoned(config, 13)
    assert deferred_on_cpu[0].invalidations == 1 and late.recoveries == 1
    assert "step 14's loss was read at step 15" in caplog.text
    losses = late.history["loss"]
    assert all(math.isfinite(v) for v in losses[:13]) and not math.isfinite(losses[13])
    ten = _fit(FitConfig(**{**CONFIG, "steps": 10, "backtrack": False}))
    assert _same_state(late.generator.state_dict(), ten.generator.state_dict())
    assert torch.equal(late.image_avg, ten.image_avg)
    assert _same_state(late.stopper_state, ten.stopper_state)
    assert {k: v for k, v in late.history.items() if k.startswith("psnr")} == \
        {k: v for k, v in ten.history.items() if k.startswith("psnr")}
    assert torch.isfinite(late.image).all()


def test_the_eager_fit_restores_the_same_snapshot():
    """The eager reference of the test above: step 14 fails at once and loads step 10's state."""
    config = FitConfig(**{**CONFIG, "steps": 14, "backtrack": False})
    eager = _fit_poisoned(config, 13)
    ten = _fit(FitConfig(**{**CONFIG, "steps": 10, "backtrack": False}))
    assert eager.recoveries == 1
    assert _same_state(eager.generator.state_dict(), ten.generator.state_dict())


def test_the_last_failure_ends_a_deferred_fit_as_diverged(deferred_on_cpu):
    config = FitConfig(**{**CONFIG, "steps": 30, "max_recoveries": 1})
    res = _fit_poisoned(config, 12)
    assert res.stop_reason == "diverged" and "at step 13" in res.stop_detail and res.steps_run == 15
    assert torch.isfinite(res.image).all()


def test_a_checkpoint_of_a_deferred_fit_is_judged_first(deferred_on_cpu):
    """A checkpoint (or an interruption) judges the pending steps: a checkpoint at step 7 with
    step 7's loss NaN is not written; the fit recovers and goes on."""
    y, z = _problem()
    net = small_skip()
    poison = _poison_at(6)
    poison.net = net
    checkpoints = []
    res = fit(y, Identity(), net, z, FitConfig(**{**CONFIG, "steps": 12}), callbacks=[poison],
              checkpoint_every=7, on_checkpoint=checkpoints.append)
    assert res.recoveries == 1 and checkpoints == [] and res.stop_reason == "steps"


@pytest.mark.parametrize("argv,expected", [([], True), (["--no-cuda-graph"], False)])
def test_no_cuda_graph_on_the_command_line(argv, expected):
    from dip.cli.fit_command import recipe_for
    from dip.cli.parser import build_parser

    args = build_parser().parse_args(["denoise", "in.png", "-o", "out.png", *argv])
    assert recipe_for("denoise", args).fit.cuda_graph is expected
