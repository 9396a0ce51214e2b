"""Fits whose step is captured as a CUDA graph (``dip.engine.captured_step``): they run, improve
the image, equal the eager CUDA fit, fall back where capture is impossible, and recover from a
non-finite loss found a window of steps late.

Marked ``cuda``: skipped where CUDA is not available. The device-independent parts (the plan,
the deferred window, the record's rollback, the loop's captured path with the graph replaced by
the eager step) are tested on the CPU in ``tests/engine/test_captured_path.py``.

Tolerances: a captured step replays the kernels of the eager step it recorded, with the same
inputs: the same reg noise (the fit's generator is registered with the graph, so each replay
draws from its current seed and offset, as ``normal_`` does eagerly), the same fused Adam
kernel (``capturable`` only changes a Python-side check for it). With cuDNN's deterministic
algorithms and TF32 off the two fits are expected to agree to the last bit. RTOL = 1e-5
relative (not measured: no GPU where this was written) allows for a library picking another
kernel under capture, whose float32 rounding (~1e-7 relative per operation) stays below it
over 40 steps of this small fit, while what the test is for (other noise, a missed or doubled
Adam step, a stale optimiser state after a recovery) moves the loss by far more within a few
steps. The noise generator's state is compared exactly: it is host-side bookkeeping.
"""
from __future__ import annotations

import logging
import math
from contextlib import contextmanager

import pytest
import torch

import dip
from dip.fit import FitConfig, fit, generator_geometry
from dip.inputs import make_input
from dip.physics import Identity
from tests import oracle
from tests.test_fit import small_skip

pytestmark = pytest.mark.cuda

RTOL = 1e-5


@contextmanager
def deterministic():
    saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
         torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) = saved


def _noisy(size: int = 48):
    return oracle.noisy_smooth_image(size)


def _problem(hw=(32, 32)):
    g = torch.Generator().manual_seed(0)
    y = torch.rand(1, 3, *hw, generator=g)
    _, z_hw = generator_geometry(small_skip(), hw)
    return y, make_input("noise", 4, z_hw, generator=g)


def _fit(config, callbacks=(), net=None, **kwargs):
    y, z = _problem()
    return fit(y, Identity(), net if net is not None else small_skip(), z, config, callbacks=callbacks, **kwargs)


CONFIG = dict(device="cuda", steps=40, lr=0.01, reg_noise_std=0.03, exp_weight=0.99, check_every=10, seed=3)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_captured_denoise_fit_improves_the_image(precision, caplog):
    clean, noisy = _noisy()
    with caplog.at_level(logging.INFO, logger="dip.fit"):
        result = dip.denoise(noisy, steps=300, device="cuda", precision=precision, gt=clean, stop="steps")
    assert "CUDA graph: the step" in caplog.text and "capture of the step failed" not in caplog.text
    assert torch.isfinite(result.image).all() and result.recoveries == 0
    assert result.history["loss"][-1] < result.history["loss"][0]
    assert result.psnr > dip.metrics.psnr(noisy, clean)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_captured_fit_equals_the_eager_fit(precision, caplog):
    """Warm-up (steps 1-3) and replays (4-40) against every step eager: same losses, same
    averaged image, and the noise generator at the same point of its stream."""
    with deterministic():
        with caplog.at_level(logging.INFO, logger="dip.fit"):
            captured = _fit(FitConfig(**CONFIG, precision=precision))
        eager = _fit(FitConfig(**CONFIG, precision=precision, cuda_graph=False))
    assert "capture of the step failed" not in caplog.text
    a, b = torch.tensor(captured.history["loss"]), torch.tensor(eager.history["loss"])
    assert torch.allclose(a, b, rtol=RTOL, atol=0), (a - b).abs().max()
    assert torch.allclose(captured.image_avg, eager.image_avg, rtol=RTOL, atol=1e-6)
    assert torch.equal(captured.rng_state, eager.rng_state)


def test_lbfgs_is_not_captured_and_the_log_says_why(caplog):
    with caplog.at_level(logging.INFO, logger="dip.fit"):
        result = _fit(FitConfig(device="cuda", steps=6, optimizer="lbfgs", lbfgs_warmup_steps=3))
    assert "CUDA graph not used: the optimizer is LBFGS" in caplog.text
    assert torch.isfinite(result.image).all()


def test_cuda_graph_off_runs_eagerly_and_says_so(caplog):
    with caplog.at_level(logging.INFO, logger="dip.fit"):
        _fit(FitConfig(device="cuda", steps=6, cuda_graph=False))
    assert "CUDA graph not used: cuda_graph is off" in caplog.text


def _poison_after(step, net):
    def poison(event):
        if event.step == step:
            with torch.no_grad():
                next(net.parameters()).fill_(float("nan"))  # in place: the graph reads it by address
    return poison


def test_a_captured_fit_recovers_from_a_non_finite_loss(caplog):
    """NaN weights after step 13: step 14's loss is NaN, read at step 20 (the check step that
    ends its window); the state of the check of step 10 is loaded, as the eager fit loads it at
    step 14, so the fit ends (at step 20) with the state a 10-step fit ends with; the record goes
    back to step 10 too; the graph is captured again and the fit goes on."""
    net = small_skip()
    config = FitConfig(**{**CONFIG, "steps": 20})
    with deterministic(), caplog.at_level(logging.INFO, logger="dip.fit"):
        late = _fit(config, callbacks=[_poison_after(13, net)], net=net)
        ten = _fit(FitConfig(**{**CONFIG, "steps": 10}))
    assert "step 14's loss was read at step 20" in caplog.text and late.recoveries == 1
    losses = late.history["loss"]
    assert all(math.isfinite(v) for v in losses[:13]) and not math.isfinite(losses[13])
    for name, value in ten.generator.state_dict().items():
        assert torch.allclose(late.generator.state_dict()[name], value, rtol=RTOL, atol=1e-7), name
    assert torch.allclose(late.image_avg, ten.image_avg, rtol=RTOL, atol=1e-6)
    net = small_skip()
    longer = _fit(FitConfig(**{**CONFIG, "steps": 40}), callbacks=[_poison_after(13, net)], net=net)
    assert torch.isfinite(longer.image).all() and math.isfinite(longer.history["loss"][-1])


def test_a_resumed_captured_fit_goes_on_as_the_uninterrupted_one():
    """A fit of 17 steps, resumed to 40 (it warms up and captures anew and draws the noise from
    the state's rng_state), against 40 steps in one go."""
    with deterministic():
        whole = _fit(FitConfig(**CONFIG))
        y, z = _problem()
        first = fit(y, Identity(), small_skip(), z, FitConfig(**{**CONFIG, "steps": 17}))
        resumed = fit(y, Identity(), first.generator, first.z.clone(), FitConfig(**CONFIG),
                      resume=first.resume_state())
    a, b = torch.tensor(whole.history["loss"]), torch.tensor(resumed.history["loss"])
    assert torch.allclose(a, b, rtol=RTOL, atol=0), (a - b).abs().max()
    assert torch.equal(whole.rng_state, resumed.rng_state)


class _Reading(Identity):
    """A(x) = x, reading a value to the host on the way: no capture can record that."""

    def forward(self, x):
        if not math.isfinite(float(x.sum())):
            pass
        return x


def test_a_capture_that_fails_leaves_the_fit_eager_and_unchanged(caplog):
    """The warning says why; the fit goes on eagerly from the same state and the same point of
    the noise stream, so it equals a fit that never tried."""
    y, z = _problem()
    with deterministic(), caplog.at_level(logging.INFO, logger="dip.fit"):
        tried = fit(y, _Reading(), small_skip(), z, FitConfig(**CONFIG))
        never = fit(y, _Reading(), small_skip(), z, FitConfig(**CONFIG, cuda_graph=False))
    assert "capture of the step failed" in caplog.text
    a, b = torch.tensor(tried.history["loss"]), torch.tensor(never.history["loss"])
    assert torch.allclose(a, b, rtol=RTOL, atol=0), (a - b).abs().max()
    assert torch.equal(tried.rng_state, never.rng_state) and torch.isfinite(tried.image).all()
