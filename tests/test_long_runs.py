"""Long runs: exact resume from checkpoints, SIGINT/SIGTERM during a fit, divergence recovery."""
from __future__ import annotations

import json
import math
import signal

import pytest
import torch

from dip import checkpoint, cli, models, resume
from dip import images as io
from dip.fit import FitConfig, fit, generator_geometry
from dip.inputs import make_input
from dip.physics import Identity
from tests.interrupt import signal_once_checkpointed


def small_net():
    torch.manual_seed(0)
    return models.skip(4, 3, num_channels_down=[8, 8], num_channels_up=[8, 8], num_channels_skip=[2, 2],
                       upsample_mode="bilinear", pad="reflection")


def problem(hw=(24, 20)):
    g = torch.Generator().manual_seed(1)
    y = torch.rand(1, 3, *hw, generator=g)
    net = small_net()
    z = make_input("noise", 4, generator_geometry(net, hw)[1], generator=g)
    return y, net, z


# every piece of engine state that resuming must restore: reg noise (RNG), Adam, averaging,
# automatic stopping (window 10: its ring buffer is full at step 40), recovery snapshots
RESUME_CONFIG = dict(reg_noise_std=0.05, exp_weight=0.9, backtrack=True, check_every=5, stop="auto",
                     stop_window=10, stop_patience=1000, lr=0.01)


@pytest.fixture(params=["nchw", "channels_last"])
def layout(request, monkeypatch):
    """Run the test in both memory layouts, whatever this CPU would choose (DIP_CHANNELS_LAST)."""
    monkeypatch.setenv("DIP_CHANNELS_LAST", "1" if request.param == "channels_last" else "0")
    return request.param


def test_resume_from_a_checkpoint_file_is_bit_exact(tmp_path, layout):
    """40 steps, checkpoint file, resume to 80 == 80 straight (same seed, one thread), in both
    layouts: the file holds Adam's moments contiguous, the resumed parameters may be channels_last."""
    y, net, z = problem()
    straight = fit(y, Identity(), net, z.clone(), FitConfig(steps=80, **RESUME_CONFIG))

    y, net, z = problem()
    first = fit(y, Identity(), net, z.clone(), FitConfig(steps=40, **RESUME_CONFIG))
    path = tmp_path / "fit.ckpt"
    checkpoint.save(path, checkpoint.payload_from_result(first, observation=y, physics=Identity(),
                                                         recipe={"name": "test"}))
    loaded = resume.load(path)
    assert loaded.steps_run == 40
    rest = resume.run(loaded, steps=80)
    assert rest.steps_run == 80 and rest.history["loss"] == straight.history["loss"]
    assert torch.equal(rest.image, straight.image) and torch.equal(rest.image_avg, straight.image_avg)
    assert torch.equal(rest.image_plain, straight.image_plain)
    for a, b in zip(rest.generator.state_dict().values(), straight.generator.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_mid_fit_checkpoints_resume_exactly(layout):
    """A checkpoint taken every 10 steps is a resumable result; taking it changes nothing."""
    y, net, z = problem()
    straight = fit(y, Identity(), net, z.clone(), FitConfig(steps=30, **RESUME_CONFIG))
    y, net, z = problem()
    taken = []
    watched = fit(y, Identity(), net, z.clone(), FitConfig(steps=30, **RESUME_CONFIG), checkpoint_every=10,
                  on_checkpoint=lambda partial: taken.append(
                      (partial.steps_run, partial.stop_reason, partial.resume_state())))
    assert [(s, r) for s, r, _ in taken] == [(10, "running"), (20, "running")]
    assert watched.history["loss"] == straight.history["loss"]
    assert torch.equal(watched.image, straight.image)


def test_stop_event_interrupts_after_the_current_step_and_resumes_exactly(layout):
    y, net, z = problem()
    straight = fit(y, Identity(), net, z.clone(), FitConfig(steps=20, **RESUME_CONFIG))

    class StopAt:
        def __init__(self, step):
            self.step, self.seen = step, 0
            self.every = 1

        def __call__(self, event):
            self.seen = event.step

        def is_set(self):
            return self.seen >= self.step

    y, net, z = problem()
    stopper = StopAt(7)
    part = fit(y, Identity(), net, z.clone(), FitConfig(steps=20, **RESUME_CONFIG), callbacks=[stopper],
               stop_event=stopper)
    assert part.stop_reason == "interrupted" and part.steps_run == 7
    assert torch.isfinite(part.image).all()
    rest = fit(y, Identity(), part.generator, part.z.clone(), FitConfig(steps=20, **RESUME_CONFIG),
               resume=part.resume_state())
    assert rest.history["loss"] == straight.history["loss"] and torch.equal(rest.image, straight.image)


# ----------------------------------------------------------------------------- divergence
class Poison:
    """Callback that fills the first weight with NaN after the given steps (so the next step's
    loss is NaN)."""

    every = 1

    def __init__(self, net, steps):
        self.param = next(net.parameters())
        self.steps = set(steps)

    def __call__(self, event):
        if event.step in self.steps:
            with torch.no_grad():
                self.param.fill_(math.nan)


def test_a_nan_loss_is_recovered_with_a_lower_learning_rate(caplog):
    y, net, z = problem()
    cfg = FitConfig(steps=30, lr=0.01, check_every=5, recovery_lr_factor=0.5, reg_noise_std=0.0,
                    exp_weight=0.9)
    with caplog.at_level("INFO", logger="dip.fit"):
        res = fit(y, Identity(), net, z, cfg, callbacks=[Poison(net, [12])])
    assert res.recoveries == 1 and res.backtracks == 0 and res.stop_reason == "steps"
    assert math.isnan(res.history["loss"][12])  # step 13 saw the poisoned weights
    assert all(math.isfinite(v) for i, v in enumerate(res.history["loss"]) if i != 12)
    assert res.history["loss"][-1] < res.history["loss"][11]  # it went on fitting
    assert torch.isfinite(res.image).all() and torch.isfinite(res.image_avg).all()
    assert res.optimizer_state["param_groups"][0]["lr"] == pytest.approx(0.005)
    assert any("restored the state of the last good check" in r.getMessage() for r in caplog.records)


def test_repeated_failures_stop_the_fit_with_the_last_good_state():
    y, net, z = problem()
    cfg = FitConfig(steps=40, check_every=5, max_recoveries=3, reg_noise_std=0.0)
    res = fit(y, Identity(), net, z, cfg, callbacks=[Poison(net, range(7, 40))])
    assert res.stop_reason == "diverged" and res.recoveries == 3
    assert "max_recoveries 3" in res.stop_detail
    assert torch.isfinite(res.image).all()
    assert all(torch.isfinite(p).all() for p in res.generator.parameters())
    # the generator holds the state of the last good check (step 5), so it reproduces its loss
    assert res.steps_run < 40


def test_a_psnr_drop_backtracks_and_counts_as_a_recovery():
    y, net, z = problem()

    class Jolt:
        every = 1

        def __call__(self, event):
            if event.step == 13:  # a large jump in the weights: the fit PSNR collapses
                with torch.no_grad():
                    for p in net.parameters():
                        p.add_(torch.randn_like(p) * 5)

    cfg = FitConfig(steps=20, check_every=5, backtrack=True, backtrack_threshold_db=3.0, reg_noise_std=0.0)
    res = fit(y, Identity(), net, z, cfg, callbacks=[Jolt()])
    assert res.backtracks == 1 and res.recoveries == 1
    assert res.optimizer_state["param_groups"][0]["lr"] == pytest.approx(0.005)


def test_non_finite_observation_is_refused():
    y, net, z = problem()
    y[0, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="non-finite"):
        fit(y, Identity(), net, z, FitConfig(steps=1))


@pytest.mark.parametrize("field,value", [("recovery_lr_factor", 0.0), ("recovery_lr_factor", 1.5),
                                         ("max_recoveries", 0)])
def test_recovery_settings_are_checked(field, value):
    with pytest.raises(ValueError, match=field):
        FitConfig(**{field: value})


# ----------------------------------------------------------------------------- command line
@pytest.fixture
def image(tmp_path, image_maker):
    path = tmp_path / "in.png"
    image_maker(path, 24, 24, "RGB")
    return path


def test_cli_resume_continues_to_the_same_bits(image, tmp_path, capsys, layout):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    assert cli.main(["denoise", str(image), "-o", str(a), "--steps", "6", "--stop", "steps"]) == 0
    assert cli.main(["denoise", str(image), "-o", str(b), "--steps", "3", "--stop", "steps",
                     "--checkpoint-every", "2"]) == 0
    ckpt = tmp_path / "b.png.ckpt"
    assert ckpt.is_file()  # written at step 2 and, because of --checkpoint-every, at the end
    assert checkpoint.load(ckpt)["fit"]["steps_run"] == 3
    report = tmp_path / "b.json"
    assert cli.main(["resume", str(ckpt), "--steps", "6", "--report", str(report), "-q"]) == 0
    assert torch.equal(io.read_image(a)[0], io.read_image(b)[0])
    data = json.loads(report.read_text())
    assert data["steps_run"] == 6 and data["stop_reason"] == "steps" and data["recoveries"] == 0


def test_cli_resume_errors(image, tmp_path, capsys):
    out = tmp_path / "o.png"
    assert cli.main(["resume", str(tmp_path / "missing.ckpt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["denoise", str(image), "-o", str(out), "--steps", "2", "--stop", "steps",
                     "--checkpoint-every", "1"]) == 0
    assert cli.main(["resume", str(tmp_path / "o.png.ckpt"), "--steps", "2"]) == 2
    assert "already ran 2 steps" in capsys.readouterr().err
    # a second fit of the same output must not silently replace the first one's checkpoint
    assert cli.main(["denoise", str(image), "-o", str(tmp_path / "o2.png"), "--steps", "1"]) == 0
    (tmp_path / "o2.png").unlink()
    (tmp_path / "o2.png.ckpt").write_bytes(b"")
    assert cli.main(["denoise", str(image), "-o", str(tmp_path / "o2.png"), "--steps", "1"]) == 2
    assert "dip resume" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_a_fit_leaves_a_checkpoint_that_resume_finishes(image, tmp_path, sig, code, child_env):
    out = tmp_path / "out.png"
    ckpt = tmp_path / "out.png.ckpt"
    returncode, err = signal_once_checkpointed(["denoise", str(image), "-o", str(out), "--steps", "500", "--stop",
                                                "steps", "--checkpoint-every", "2", "-q"], ckpt, sig, child_env)
    assert returncode == code, err
    assert "dip resume" in err and "Traceback" not in err
    assert out.is_file()  # the image so far
    ran = checkpoint.load(ckpt)["fit"]
    assert ran["stop_reason"] == "interrupted" and 2 <= ran["steps_run"] < 500
    total = ran["steps_run"] + 2
    assert cli.main(["resume", str(ckpt), "--steps", str(total), "-q"]) == 0
    assert checkpoint.load(ckpt)["fit"]["steps_run"] == total
