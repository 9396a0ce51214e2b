"""Tests of the ES-WMV stopping rule on synthetic output sequences."""
import io

import numpy as np
import pytest
import torch

from dip.stopping import WindowedVarianceStopper, from_config, windowed_variance


def v_shaped_sequence(n_steps, valley, shape=(1, 3, 6, 5), seed=0):
    """Outputs whose step-to-step spread is smallest at `valley` (a bell-shaped PSNR curve's
    variance signature): x_t = 0.5 + a_t * noise_t with a_t = 0.01 + |t - valley| / n_steps."""
    g = torch.Generator().manual_seed(seed)
    amps = 0.01 + np.abs(np.arange(n_steps) - valley) / n_steps
    return [0.5 + float(a) * torch.randn(shape, generator=g) for a in amps]


def direct_variances(outputs, window):
    """VAR_t computed from scratch for every t with a full window: {t: var}."""
    return {t: windowed_variance(torch.stack(outputs[t - window + 1:t + 1]))
            for t in range(window - 1, len(outputs))}


def run(stopper, outputs, returned=None):
    for t, x in enumerate(outputs):
        if stopper.update(t, x, None if returned is None else returned[t]):
            return t
    return None


def test_incremental_variance_equals_direct_computation():
    outs = v_shaped_sequence(60, 30)
    direct = direct_variances(outs, 7)
    # recompute_every larger than the run: only the running sums are exercised
    for recompute in (None, 1000):
        s = WindowedVarianceStopper(window=7, patience=1000, recompute_every=recompute)
        for t, x in enumerate(outs):
            s.update(t, x)
            if t < 6:
                assert s.variance is None
            else:
                assert s.variance == pytest.approx(direct[t], rel=1e-10, abs=1e-15)
        steps, vars_ = s.history()
        assert list(steps) == list(range(6, 60))
        np.testing.assert_allclose(vars_, [direct[t] for t in steps], rtol=1e-10)


def test_running_sums_do_not_drift_over_a_long_run():
    # offset values make the cancellation in Q - |S|^2/W as bad as outputs in [0, 1] allow
    g = torch.Generator().manual_seed(1)
    s = WindowedVarianceStopper(window=10, patience=10 ** 6)
    window = []
    for t in range(3000):
        x = 0.9 + 1e-4 * torch.rand(3, 4, 4, generator=g)
        window = (window + [x])[-10:]
        s.update(t, x)
    assert s.variance == pytest.approx(windowed_variance(torch.stack(window)), rel=1e-6)


def test_stops_patience_steps_after_the_variance_minimum_and_returns_that_output():
    outs = v_shaped_sequence(400, 150)
    direct = direct_variances(outs, 20)
    t_min = min(direct, key=direct.get)
    s = WindowedVarianceStopper(window=20, patience=60)
    stop = run(s, outs)
    assert stop == t_min + 60
    assert s.stopped and s.best_step == t_min
    assert torch.equal(s.best_output, outs[t_min])
    assert s.best_variance == pytest.approx(direct[t_min], rel=1e-10)
    assert f"step {t_min}" in s.reason and "patience 60" in s.reason
    assert s.update(stop + 1, outs[0]) is True  # stays stopped


def test_returned_image_is_kept_separately_from_the_watched_output():
    outs = v_shaped_sequence(300, 120)
    avg = [torch.full((1, 3, 2, 2), float(t)) for t in range(300)]
    s = WindowedVarianceStopper(window=10, patience=50)
    run(s, outs, returned=avg)
    assert s.best_output.shape == (1, 3, 2, 2)
    assert torch.equal(s.best_output, avg[s.best_step])


def test_never_stops_before_the_window_is_full():
    # variance rises from the first full window on: the minimum is the first full window
    outs = v_shaped_sequence(100, 0)
    s = WindowedVarianceStopper(window=30, patience=1)
    for t, x in enumerate(outs[:29]):
        assert s.update(t, x) is False
        assert s.best_step is None and s.best_output is None
    stop = run(WindowedVarianceStopper(window=30, patience=1), outs)
    assert stop == 30  # minimum at t = 29 (first full window), one step of patience


@pytest.mark.parametrize("patience", [1, 25, 90])
def test_respects_patience(patience):
    outs = v_shaped_sequence(300, 100)
    direct = direct_variances(outs, 10)
    # reference: running minimum of the directly computed variances
    best_t, expected_stop = None, None
    for t in sorted(direct):
        if best_t is None or direct[t] < direct[best_t]:
            best_t = t
        if t - best_t >= patience:
            expected_stop = t
            break
    assert expected_stop is not None
    s = WindowedVarianceStopper(window=10, patience=patience)
    for t, x in enumerate(outs):
        stop = s.update(t, x)
        assert stop == (t >= expected_stop)
        if stop:
            break
    assert s.best_step == best_t and s.best_step <= expected_stop - patience


def test_keeps_going_while_new_minima_keep_coming():
    # steadily settling outputs (noise-free fit): the variance keeps falling, never stops
    v = torch.randn(8, generator=torch.Generator().manual_seed(3))
    s = WindowedVarianceStopper(window=10, patience=5)
    for t in range(200):
        assert not s.update(t, 0.5 + v / (t + 1))
    assert s.best_step == 199


def test_every_observes_only_multiples_of_the_stride():
    outs = v_shaped_sequence(600, 300)
    strided = WindowedVarianceStopper(window=10, patience=40, every=3)
    assert strided.should_check(9) and not strided.should_check(10)
    stop = run(strided, outs)
    sub = outs[::3]
    direct = direct_variances(sub, 10)
    t_min = 3 * min(direct, key=direct.get)
    assert strided.steps_observed == len(range(0, stop + 1, 3))
    assert strided.best_step == t_min
    assert stop == t_min + 42  # first multiple of 3 at least 40 steps later


def test_sync_every_delays_the_report_but_not_the_result():
    outs = v_shaped_sequence(400, 150)
    exact = WindowedVarianceStopper(window=20, patience=60)
    lazy = WindowedVarianceStopper(window=20, patience=60, sync_every=7)
    t_exact, t_lazy = run(exact, outs), run(lazy, outs)
    assert t_exact <= t_lazy < t_exact + 7
    assert lazy.best_step == exact.best_step
    assert torch.equal(lazy.best_output, exact.best_output)


def test_non_finite_outputs_never_become_the_minimum():
    outs = v_shaped_sequence(80, 40)
    outs[40] = torch.full_like(outs[40], float("nan"))
    s = WindowedVarianceStopper(window=5, patience=1000)
    run(s, outs)
    assert s.best_step is not None
    assert not (40 <= s.best_step <= 44)
    assert torch.isfinite(s.best_output).all()


@pytest.mark.parametrize("kw", [{}, {"return_mean": True, "return_delay": 7}])
def test_state_dict_round_trip_resumes_identically(kw):
    outs = v_shaped_sequence(300, 120)
    ref = WindowedVarianceStopper(window=15, patience=50, **kw)
    t_ref = run(ref, outs)

    first = WindowedVarianceStopper(window=15, patience=50, **kw)
    for t in range(100):
        assert not first.update(t, outs[t])
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed = WindowedVarianceStopper(window=15, patience=50, **kw)
    resumed.load_state_dict(torch.load(buf))
    assert resumed.steps_observed == 100
    assert resumed.variance == pytest.approx(first.variance, rel=1e-12)
    t_res = None
    for t in range(100, 300):
        if resumed.update(t, outs[t]):
            t_res = t
            break
    assert t_res == t_ref
    assert resumed.best_step == ref.best_step and resumed.returned_step == ref.returned_step
    torch.testing.assert_close(resumed.best_output, ref.best_output, rtol=0, atol=1e-6)
    assert resumed.reason == ref.reason
    np.testing.assert_array_equal(resumed.history()[0], ref.history()[0])

    # a stopped rule stays stopped after a round trip
    done = WindowedVarianceStopper(window=15, patience=50, **kw)
    done.load_state_dict(ref.state_dict())
    assert done.stopped and done.update(t_ref + 1, outs[0]) and done.reason == ref.reason


def test_state_dict_holds_only_tensors_and_checks_settings():
    s = WindowedVarianceStopper(window=4, patience=3)
    assert all(isinstance(v, torch.Tensor) for v in s.state_dict().values())
    for t in range(6):
        s.update(t, torch.rand(2, 2))
    assert all(isinstance(v, torch.Tensor) for v in s.state_dict().values())
    with pytest.raises(ValueError, match="window=4"):
        WindowedVarianceStopper(window=5, patience=3).load_state_dict(s.state_dict())
    with pytest.raises(ValueError, match="missing keys"):
        WindowedVarianceStopper(window=4, patience=3).load_state_dict({"window": torch.tensor(4)})


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="window must be >= 2"):
        WindowedVarianceStopper(window=1)
    with pytest.raises(TypeError, match="patience must be an int"):
        WindowedVarianceStopper(patience=1.5)
    s = WindowedVarianceStopper(window=3, patience=3)
    s.update(0, torch.rand(1, 3, 4, 4))
    with pytest.raises(ValueError, match="shape changed"):
        s.update(1, torch.rand(1, 3, 4, 5))
    with pytest.raises(ValueError, match="step must increase"):
        s.update(0, torch.rand(1, 3, 4, 4))
    with pytest.raises(TypeError, match="floating-point"):
        s.update(2, torch.ones(1, 3, 4, 4, dtype=torch.int64))


def test_return_delay_keeps_the_image_of_a_later_step():
    outs = v_shaped_sequence(400, 150)
    tags = [torch.tensor([float(t)]) for t in range(400)]
    plain = WindowedVarianceStopper(window=20, patience=60)
    delayed = WindowedVarianceStopper(window=20, patience=60, return_delay=25)
    t_plain, t_delayed = run(plain, outs, tags), run(delayed, outs, tags)
    assert t_plain == t_delayed and delayed.best_step == plain.best_step  # same decision
    assert plain.returned_step == plain.best_step
    assert delayed.returned_step == delayed.best_step + 25
    assert float(delayed.best_output) == delayed.best_step + 25
    # a fit that ends before best + delay holds the minimum's own image
    short = WindowedVarianceStopper(window=20, patience=60, return_delay=25)
    for t in range(plain.best_step + 10):
        short.update(t, outs[t], tags[t])
    assert short.returned_step == plain.best_step and float(short.best_output) == plain.best_step
    with pytest.raises(ValueError, match="return_delay .* must be smaller than patience"):
        WindowedVarianceStopper(patience=10, return_delay=10)


class _Cfg:
    def __init__(self, exp_weight, window=100, patience=1000):
        self.exp_weight, self.stop_window, self.stop_patience = exp_weight, window, patience


def test_return_mean_holds_the_window_mean_centred_on_the_minimum():
    outs = v_shaped_sequence(400, 150)
    s = WindowedVarianceStopper(window=20, patience=60, return_mean=True, return_delay=10)
    run(s, outs)
    b = s.best_step
    assert s.returned_step == b + 10
    expected = torch.stack(outs[b - 9:b + 11]).double().mean(0).float()  # steps b-9 .. b+10
    torch.testing.assert_close(s.best_output, expected, rtol=0, atol=1e-6)


def test_policy_from_config():
    outs = v_shaped_sequence(420, 100)
    ref = WindowedVarianceStopper(window=10, patience=300)
    for t, x in enumerate(outs):
        ref.update(t, x)
    # averaging recipes: mean of the W plain outputs from the variance minimum on
    avg = from_config(_Cfg(0.99, window=10, patience=300))
    assert (avg.window, avg.patience, avg.return_mean, avg.return_delay) == (10, 300, True, 9)
    # no averaging: the plain output at the minimum, as published
    plain = from_config(_Cfg(None, window=10, patience=300))
    assert (plain.return_mean, plain.return_delay) == (False, 0)
    for t, x in enumerate(outs):
        avg.update(t, x)
        plain.update(t, x)
    assert avg.best_step == plain.best_step == ref.best_step
    b = ref.best_step
    torch.testing.assert_close(avg.best_output, torch.stack(outs[b:b + 10]).mean(0), rtol=0, atol=1e-6)
    assert torch.equal(plain.best_output, outs[b])
    with pytest.raises(TypeError, match="stop_window"):
        from_config(object())


def test_window_mean_is_the_mean_of_the_last_w_outputs():
    outs = v_shaped_sequence(12, 6)
    s = WindowedVarianceStopper(window=4, patience=100)
    for t, x in enumerate(outs):
        s.update(t, x)
        m = s.window_mean()
        if t < 3:
            assert m is None
        else:
            want = torch.stack(outs[t - 3:t + 1]).double().mean(0).float()
            assert m.shape == x.shape and m.dtype == x.dtype
            torch.testing.assert_close(m, want, rtol=0, atol=1e-6)


def test_averaging_recipes_return_a_complete_window_mean():
    """The recipes' patience may be cut to the window, not below: the returned image must be the
    mean of all W outputs from the variance minimum (a shorter one is a noisier image)."""
    from dip import recipes
    checked = 0
    for name in recipes.names():
        fit = recipes.get(name).fit
        if fit.stop != "auto" or fit.exp_weight is None:
            continue
        stopper = from_config(fit)
        assert stopper.return_mean and stopper.return_delay == stopper.window - 1, name
        checked += 1
    assert checked >= 2  # denoise, denoise-50, jpeg
