"""The fitting engine: sizes, determinism, averaging, backtracking, callbacks, optimiser options."""
import math

import pytest
import torch

import dip
from dip import models, recipes
from dip.fit import FitConfig, fit, generator_geometry, padded_size
from dip.inputs import make_input
from dip.physics import Identity, Mask


def small_skip(in_ch=4, out_ch=3, **kw):
    torch.manual_seed(0)
    return models.skip(in_ch, out_ch, num_channels_down=[8, 8, 8], num_channels_up=[8, 8, 8],
                       num_channels_skip=[2, 2, 2], upsample_mode="bilinear", pad="reflection", **kw)


def setup(hw=(24, 20), channels=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.rand(1, channels, *hw, generator=g)
    net = small_skip(out_ch=channels)
    _, z_hw = generator_geometry(net, hw)
    z = make_input("noise", 4, z_hw, generator=g)
    return y, net, z


def test_padded_size():
    assert padded_size((37, 53), 32) == (64, 64)
    assert padded_size((64, 1), 32, minimum=64) == (64, 64)


@pytest.mark.parametrize("hw", [(37, 53), (5, 3), (1, 1)])
def test_any_image_size_gives_an_output_of_that_size(hw):
    y, net, z = setup(hw)
    res = fit(y, Identity(), net, z, FitConfig(steps=2, reg_noise_std=0.03))
    assert res.image.shape == (1, 3) + hw
    assert res.image_plain.shape == (1, 3) + hw
    assert 0 <= res.image.min() and res.image.max() <= 1


def test_the_denoise_recipe_restores_a_37x53_image_to_37x53():
    y = torch.rand(3, 37, 53, generator=torch.Generator().manual_seed(3))
    res = dip.denoise(y, steps=2, stop="steps")
    assert res.image.shape == (1, 3, 37, 53)


def test_same_seed_same_thread_gives_bit_identical_output():
    y = torch.rand(3, 24, 20, generator=torch.Generator().manual_seed(4))
    runs = [recipes.run(recipes.get("denoise", steps=3, stop="steps", seed=7), y).image for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    other = recipes.run(recipes.get("denoise", steps=3, stop="steps", seed=8), y).image
    assert not torch.equal(runs[0], other)


def test_averaging_returns_the_warmed_up_exponential_average():
    """Weight min(exp_weight, (t - 1) / (t + 7)) at step t: the first outputs leave the average
    quickly, and from the step where it reaches exp_weight on it is the plain exponential average."""
    y, net, z = setup()
    seen = []

    def record(event):
        seen.append(event.output.clone())

    res = fit(y, Identity(), net, z, FitConfig(steps=12, exp_weight=0.5, reg_noise_std=0.05), callbacks=[record])
    avg = seen[0]
    for t, out in enumerate(seen[1:], start=2):
        w = min(0.5, (t - 1) / (t + 7))
        avg = w * avg + (1 - w) * out
    assert min(0.5, 11 / 19) == 0.5  # the last steps ran at exp_weight itself
    torch.testing.assert_close(res.image_avg, avg)
    # a fit of fewer than 100 steps returns its plain output, the average is kept beside it
    assert torch.equal(res.image, res.image_plain)


def test_callbacks_are_called_every_k_steps_and_at_the_end():
    y, net, z = setup()
    steps = []

    def cb(event):
        steps.append(event.step)
        assert event.loss.dim() == 0 and event.output.shape == y.shape

    cb.every = 3
    fit(y, Identity(), net, z, FitConfig(steps=7), callbacks=[cb])
    assert steps == [3, 6, 7]


def test_history_and_psnr_against_a_ground_truth():
    y, net, z = setup()
    res = fit(y, Identity(), net, z, FitConfig(steps=6, psnr_every=2), gt=y[0])
    assert res.history["step"] == [1, 2, 3, 4, 5, 6] and len(res.history["loss"]) == 6
    assert res.history["psnr_step"] == [2, 4, 6]
    assert res.psnr == pytest.approx(dip.metrics.psnr(res.image, y))
    assert res.ssim is not None


def test_backtracking_restores_the_last_good_state_when_the_fit_collapses():
    y, net, z = setup(seed=1)
    cfg = FitConfig(steps=40, lr=2.0, backtrack=True, check_every=1, backtrack_threshold_db=0.5, reg_noise_std=0.0)
    res = fit(y, Identity(), net, z, cfg)
    assert res.backtracks > 0
    assert all(math.isfinite(v) for v in res.history["loss"])


def test_without_backtracking_the_same_run_does_not_restore():
    y, net, z = setup(seed=1)
    cfg = FitConfig(steps=10, lr=2.0, backtrack=False, reg_noise_std=0.0)
    assert fit(y, Identity(), net, z, cfg).backtracks == 0


def test_optimising_the_input_only_leaves_the_weights_unchanged():
    y, net, z = setup()
    before = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "num_batches" not in k}
    z0 = z.clone()
    res = fit(y, Identity(), net, z, FitConfig(steps=3, optimize="input", reg_noise_std=0.0))
    for k, v in before.items():
        assert torch.equal(v, net.state_dict()[k]), k
    assert not torch.equal(res.z, z0)


@pytest.mark.parametrize("optimize", ["input", "both"])
def test_optimising_the_code_with_reg_noise_changes_it(optimize):
    y, net, z = setup()
    z0 = z.clone()
    res = fit(y, Identity(), net, z, FitConfig(steps=2, optimize=optimize, reg_noise_std=0.05))
    assert not torch.equal(res.z, z0)


def test_lbfgs_after_adam_warmup_lowers_the_loss():
    y, net, z = setup()
    res = fit(y, Identity(), net, z, FitConfig(steps=12, optimizer="lbfgs", lbfgs_warmup_steps=4, lr=0.5,
                                              reg_noise_std=0.0))
    assert res.history["loss"][-1] < res.history["loss"][0]


class _DivergesAt(Identity):
    """The identity whose ``fail_at``-th call (one per step) gives NaN: a divergence on cue."""

    def __init__(self, fail_at: int):
        super().__init__()
        self.fail_at, self.calls = fail_at, 0

    def forward(self, x):
        self.calls += 1
        return x * float("nan") if self.calls == self.fail_at else x


def test_a_recovery_during_the_adam_warm_up_lowers_the_lbfgs_rate():
    y, net, z = setup()
    config = FitConfig(steps=6, optimizer="lbfgs", lbfgs_warmup_steps=3, lr=0.5, reg_noise_std=0.0)
    res = fit(y, _DivergesAt(2), net, z, config)
    assert res.recoveries == 1
    assert res.state.optimizer_state["param_groups"][0]["lr"] == 0.5 * config.recovery_lr_factor


def test_masked_fit_ignores_unknown_pixels():
    y, net, z = setup()
    mask = torch.ones(1, 1, 24, 20)
    mask[..., 5:15, 5:15] = 0
    y_corrupt = y.clone()
    y_corrupt[..., 5:15, 5:15] = 1e3  # garbage where unknown must not matter
    r1 = fit(y_corrupt, Mask(mask), small_skip(), z, FitConfig(steps=3, reg_noise_std=0.0))
    r2 = fit(y, Mask(mask), small_skip(), z, FitConfig(steps=3, reg_noise_std=0.0))
    torch.testing.assert_close(r1.image, r2.image)


def test_tv_weight_changes_the_fit():
    y, net, z = setup()
    a = fit(y, Identity(), small_skip(), z, FitConfig(steps=3, reg_noise_std=0.0)).image
    b = fit(y, Identity(), small_skip(), z, FitConfig(steps=3, reg_noise_std=0.0, tv_weight=0.1)).image
    assert not torch.allclose(a, b)


def test_wrong_code_size_is_a_clear_error():
    y, net, z = setup()
    with pytest.raises(ValueError, match="z must have spatial size"):
        fit(y, Identity(), net, z[..., :16, :16], FitConfig(steps=1))


@pytest.mark.parametrize("field,value,match", [("steps", 0, "steps"), ("lr", -1.0, "lr"),
                                               ("precision", "fp16", "precision"), ("stop", "never", "stop"),
                                               ("exp_weight", 1.5, "exp_weight"), ("optimize", "all", "optimize")])
def test_bad_fit_options_are_clear_errors(field, value, match):
    with pytest.raises(ValueError, match=match):
        FitConfig(**{field: value})


@pytest.mark.parametrize("precision", ["fp32", "bf16"])  # bf16: what auto runs denoising in where it is native
def test_a_resumed_fit_equals_an_uninterrupted_one(precision):
    y, _, z = setup()
    cfg = dict(exp_weight=0.9, backtrack=True, check_every=2, reg_noise_std=0.05, precision=precision)
    full = fit(y, Identity(), small_skip(), z.clone(), FitConfig(steps=6, **cfg))
    first = fit(y, Identity(), small_skip(), z.clone(), FitConfig(steps=3, **cfg))
    rest = fit(y, Identity(), first.generator, first.z.clone(), FitConfig(steps=6, **cfg),
               resume=first.resume_state())
    assert rest.steps_run == 6 and rest.history["step"] == full.history["step"]
    assert rest.history["loss"] == full.history["loss"]
    assert torch.equal(rest.image, full.image) and torch.equal(rest.image_plain, full.image_plain)


def test_resuming_a_finished_fit_needs_more_steps():
    y, net, z = setup()
    first = fit(y, Identity(), net, z, FitConfig(steps=3))
    with pytest.raises(ValueError, match="more steps"):
        fit(y, Identity(), first.generator, first.z, FitConfig(steps=1), resume=first.resume_state())


def test_bf16_fit_returns_an_fp32_image_and_warns_where_bf16_is_emulated(caplog):
    y, net, z = setup()
    with caplog.at_level("WARNING", logger="dip.fit"):
        res = fit(y, Identity(), net, z, FitConfig(steps=1, precision="bf16"))
    assert res.image.dtype == torch.float32 and res.image_plain.dtype == torch.float32
    emulated = not dip.runtime.bf16_is_native("cpu")
    assert any("emulated" in r.getMessage() for r in caplog.records) == emulated


def test_a_short_averaged_fit_is_not_worse_than_its_plain_output():
    """30 steps of the denoise recipe (averaging 0.99) on a small photograph crop: the returned
    image is not more than 0.5 dB below the plain output (the original's average: ~4 dB below)."""
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from dip.metrics import psnr
    from dip.tasks import denoise

    photo = Image.open(Path(dip.__file__).parent / "data" / "astronaut.png").convert("RGB")
    clean = torch.from_numpy(np.array(photo)).permute(2, 0, 1).float()[:, :32, :32] / 255
    noisy = (clean + torch.randn(clean.shape, generator=torch.Generator().manual_seed(0)) * 25 / 255).clamp(0, 1)
    res = denoise(noisy, steps=30, stop="steps")
    gt = clean[None]
    assert psnr(res.image, gt) > psnr(res.image_plain, gt) - 0.5


def test_resuming_a_result_twice_gives_the_same_fit_and_leaves_it_unchanged(monkeypatch):
    """The resumed fit owns its optimiser state: the first result's state is not updated in place."""
    monkeypatch.setenv("DIP_CHANNELS_LAST", "1")
    y, _, z = setup()
    cfg = dict(reg_noise_std=0.05, exp_weight=0.9)
    first = fit(y, Identity(), small_skip(), z.clone(), FitConfig(steps=3, **cfg))
    before = [t.clone() for s in first.optimizer_state["state"].values() for t in s.values()]
    state = first.resume_state()
    weights = {k: v.clone() for k, v in first.generator.state_dict().items()}
    runs = []
    for _ in range(2):
        net = small_skip()
        net.load_state_dict(weights)
        runs.append(fit(y, Identity(), net, first.z.clone(), FitConfig(steps=5, **cfg), resume=state))
    after = [t for s in first.optimizer_state["state"].values() for t in s.values()]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert runs[0].history["loss"] == runs[1].history["loss"]
    assert torch.equal(runs[0].image, runs[1].image)


def test_resume_with_contiguous_adam_state_is_exact_in_channels_last(monkeypatch):
    """A resume state whose Adam moments are contiguous (as in a checkpoint file) continues a
    channels_last fit exactly."""
    monkeypatch.setenv("DIP_CHANNELS_LAST", "1")
    y, _, z = setup()
    cfg = dict(reg_noise_std=0.05)
    full = fit(y, Identity(), small_skip(), z.clone(), FitConfig(steps=6, **cfg))
    first = fit(y, Identity(), small_skip(), z.clone(), FitConfig(steps=3, **cfg))
    state = first.resume_state()
    opt = state["optimizer_state"]
    state["optimizer_state"] = {**opt, "state": {i: {k: v.contiguous().clone() for k, v in s.items()}
                                                 for i, s in opt["state"].items()}}
    rest = fit(y, Identity(), first.generator, first.z.clone(), FitConfig(steps=6, **cfg), resume=state)
    assert rest.history["loss"] == full.history["loss"]
    assert torch.equal(rest.image, full.image)
