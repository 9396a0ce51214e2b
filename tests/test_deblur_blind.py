"""Blind deblurring: the kernel generator is fitted with the image (its own Adam group), the
estimate stays on the simplex and is the returned image's, a small fit beats its input, and a
blind fit resumes bit for bit, its operator's state included (recovery restores it too, and a
recovery during the kernel's warm-up lowers the rate the kernel is released at)."""
import pytest
import torch

import dip
from dip import metrics, recipes
from dip.checkpoint import physics_settings
from dip.engine import FitState
from dip.physics import BlindBlur, Blur, from_config, parse_kernel
from tests import oracle
from tests.test_deblur import SMALL, _scene


def test_the_recipe_fits_the_kernel_at_its_own_rate():
    r = recipes.get("deblur-blind")
    assert r.task == "deblur" and r.physics["name"] == "blind_blur" and r.physics["padding"] == "valid"
    assert r.fit.physics_lr is not None and r.fit.physics_lr < r.fit.lr
    with pytest.raises(ValueError, match="kernel_size"):
        recipes.build(r, torch.rand(3, 16, 16))


def _blurred(size=32, seed=0):
    """A sharp image (3, size, size), its observation through a Gaussian of sigma 1.6 (11 x 11,
    "valid") with 1 % noise, as a camera sees it."""
    k = torch.from_numpy(parse_kernel("gaussian:1.6")).float()
    scene = oracle.smooth_image(size + 10, size + 10, 3, seed)
    y = Blur(k, "valid")(scene[None])[0]
    y = (y + 0.01 * torch.randn(y.shape, generator=torch.Generator().manual_seed(seed))).clamp(0, 1)
    return scene[None, :, 5:5 + size, 5:5 + size], y


def test_a_small_blind_fit_beats_its_input_and_moves_the_kernel():
    gt, y = _blurred()
    start = recipes.build(recipes.get("deblur-blind", physics_options={"kernel_size": 11}), y)[1].kernel
    res = dip.deblur(y, kernel_size=11, net_options=SMALL, steps=400, physics_warmup_steps=100, physics_lr=1e-4,
                     gt=gt)
    assert res.image.shape == (1, 3, 32, 32)
    assert res.psnr > metrics.psnr(y[None], gt) + 1.0
    k = res.physics.kernel
    assert isinstance(res.physics, BlindBlur) and k.shape == (1, 11, 11)
    assert float(k.min()) >= 0 and float(k.sum()) == pytest.approx(1.0, abs=1e-5)
    assert float((k - start).abs().sum()) > 1e-3  # the joint fit updated the kernel


def test_the_motion_recipe_finds_a_straight_blur_the_round_one_misses():
    """deblur-blind-motion (flat start, fitted 500 steps) on a 7 px motion blur at 45°: it beats
    the input, and its kernel is nearer the true one than deblur-blind's (measured: 24.5 dB from
    23.5, kernel L1 0.90 against 1.13, where deblur-blind ends below the input)."""
    k = torch.from_numpy(parse_kernel("motion:7,45")).float()
    kh, kw = k.shape
    scene = oracle.smooth_image(32 + kh - 1, 32 + kw - 1, 3, 0)
    y = Blur(k, "valid")(scene[None])[0]
    y = (y + 0.01 * torch.randn(y.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    gt = scene[None, :, kh // 2:kh // 2 + 32, kw // 2:kw // 2 + 32]
    fits = {name: dip.deblur(y, kernel_size=(kh, kw), recipe=name, net_options=SMALL, steps=400, gt=gt)
            for name in ("deblur-blind-motion", "deblur-blind")}
    motion = fits["deblur-blind-motion"]
    assert motion.psnr > metrics.psnr(y[None], gt) + 0.5
    errors = {name: float((res.physics.kernel[0] - k).abs().sum()) for name, res in fits.items()}
    assert errors["deblur-blind-motion"] < errors["deblur-blind"] - 0.1, errors
    r = recipes.get("deblur-blind-motion")
    assert r.physics["init_sigma"] is None and r.fit.physics_steps == 500


def test_deblur_takes_exactly_one_of_kernel_and_kernel_size():
    y = torch.rand(1, 12, 12)
    with pytest.raises(ValueError, match="exactly one of kernel= .* got both"):
        dip.deblur(y, "box:3", kernel_size=3)
    with pytest.raises(ValueError, match="got neither"):
        dip.deblur(y)
    with pytest.raises(ValueError, match="pass kernel_size= instead"):
        dip.deblur(y, "box:3", recipe="deblur-blind")
    with pytest.raises(ValueError, match="kernel_size must be an integer"):
        dip.deblur(y, kernel_size=2, net_options=SMALL, steps=1)


@pytest.mark.parametrize("warmup,fitted", [(4, None), (8, None), (2, 3)])  # checkpoint (step 6) after / before
def test_a_resumed_blind_fit_equals_the_uninterrupted_one(warmup, fitted):  # the warm-up ends; after the hold
    _, y, _ = _scene(size=24)
    options = dict(net_options=SMALL, physics_options={"kernel_size": 9}, physics_warmup_steps=warmup,
                   physics_lr=1e-3, physics_steps=fitted)
    recipe = recipes.get("deblur-blind", steps=12, **options)
    full = recipes.run(recipe, y)
    half = recipes.run(recipes.get("deblur-blind", steps=6, **options), y)
    # the kernel moves after the checkpoint, unless it is held from step 6 on (physics_steps)
    assert torch.equal(half.physics.kernel, full.physics.kernel) == (fitted is not None)
    state = FitState.from_dict(half.resume_state())
    assert state.member.physics_state is not None and state.member.snapshot.physics_state is not None
    physics = from_config(physics_settings(half.physics))  # as dip.resume rebuilds it
    resumed = dip.fit(y, physics, half.generator, half.z, recipe.fit, resume=half.resume_state())
    assert torch.equal(resumed.image, full.image)
    assert torch.equal(resumed.physics.kernel, full.physics.kernel)


def test_a_state_without_the_operator_keys_still_loads():
    _, y, _ = _scene(size=16)
    res = dip.deblur(y, "box:3", net_options=SMALL, steps=2)
    old = {k: v for k, v in res.resume_state().items() if k not in ("physics_state", "returned_physics_state")}
    old["backtrack_state"] = {k: v for k, v in old["backtrack_state"].items() if k != "good_physics"}
    member = FitState.from_dict(old).member
    assert member.physics_state is None and member.returned_physics_state is None
    assert member.snapshot.physics_state is None


def test_recovery_restores_the_operator_with_the_generator():
    from dip.engine import FitConfig
    from dip.engine.recovery import Recovery

    op, gen = BlindBlur(5), torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(list(gen.parameters()) + list(op.parameters()))
    recovery = Recovery(gen, lambda: opt, torch.zeros(1, 1, 1, 1), FitConfig(), physics=op)
    before = op.kernel
    with torch.no_grad():
        op.net[2].bias.add_(torch.linspace(-3, 3, 25))
    assert not torch.equal(op.kernel, before)
    recovery.restore(1, "test")
    assert torch.equal(op.kernel, before)


@pytest.mark.parametrize("branch_free", ["0", "1"])
def test_auto_stopping_returns_the_kernel_of_the_returned_step(monkeypatch, branch_free):
    monkeypatch.setenv("DIP_BRANCH_FREE", branch_free)  # "1": the accelerators' path, forced on CPU
    _, y, _ = _scene(size=16)
    res = dip.deblur(y, kernel_size=5, net_options=SMALL, steps=60, stop="auto", stop_window=5, stop_patience=5,
                     physics_warmup_steps=0, physics_lr=1e-3)
    assert res.stop_reason == "auto" and res.returned_step < res.steps_run
    member = res.state.member
    returned = from_config({**physics_settings(res.physics)})
    returned.load_state_dict(member.returned_physics_state)
    assert torch.equal(res.physics.kernel, returned.kernel)
    current = from_config({**physics_settings(res.physics)})
    current.load_state_dict(member.physics_state)
    assert not torch.equal(current.kernel, res.physics.kernel)


def test_the_kernel_is_held_during_its_warm_up():
    _, y, _ = _scene(size=16)
    options = dict(net_options=SMALL, physics_options={"kernel_size": 5}, physics_lr=1e-3)
    start = recipes.build(recipes.get("deblur-blind", **options), y)[1].kernel
    held = recipes.run(recipes.get("deblur-blind", steps=4, physics_warmup_steps=4, **options), y)
    assert torch.equal(held.physics.kernel, start)
    moved = recipes.run(recipes.get("deblur-blind", steps=6, physics_warmup_steps=4, **options), y)
    assert not torch.equal(moved.physics.kernel, start)
    with pytest.raises(ValueError, match="physics_warmup_steps must be an integer >= 0"):
        recipes.get("deblur-blind", physics_warmup_steps=-1)


def test_the_kernel_is_held_again_after_its_fitting_steps():
    """physics_steps: fitted for that many steps after the warm-up, then held while the image fits."""
    _, y, _ = _scene(size=16)
    options = dict(net_options=SMALL, physics_options={"kernel_size": 5}, physics_lr=1e-3, physics_warmup_steps=2,
                   physics_steps=3)
    fitted = recipes.run(recipes.get("deblur-blind", steps=5, **options), y)  # steps 3-5 fit the kernel
    four = recipes.run(recipes.get("deblur-blind", steps=4, **options), y)
    assert not torch.equal(four.physics.kernel, fitted.physics.kernel)
    later = recipes.run(recipes.get("deblur-blind", steps=8, **options), y)
    assert torch.equal(later.physics.kernel, fitted.physics.kernel)  # held from step 6 on
    assert not torch.equal(later.image, fitted.image)  # the image goes on fitting
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="physics_steps must be None or an integer >= 1"):
            recipes.get("deblur-blind", physics_steps=bad)


class _DivergesOnce(BlindBlur):
    """A blind blur whose ``fail_at``-th forward (one per step: the step's number) gives NaN, a
    divergence on cue; None never fails."""

    def __init__(self, kernel_size, fail_at=None, **settings):
        super().__init__(kernel_size, **settings)
        self.fail_at, self.calls = fail_at, 0

    def forward(self, x):
        self.calls += 1
        out = super().forward(x)
        return out * float("nan") if self.calls == self.fail_at else out


@pytest.mark.parametrize("stop_at", [3, 5])  # the checkpoint before / after the warm-up ends
def test_a_recovery_during_the_warm_up_lowers_the_kernels_rate_for_good(stop_at):
    _, y, _ = _scene(size=16)
    recipe = recipes.get("deblur-blind", steps=8, net_options=SMALL, physics_options={"kernel_size": 5},
                         physics_warmup_steps=4, physics_lr=1e-3)
    y4, physics, generator, z = recipes.build(recipe, y)
    diverging = _DivergesOnce(fail_at=3, **physics.config())  # step 3: in the warm-up
    full = dip.fit(y4, diverging, generator, z, recipe.fit)
    assert full.recoveries == 1
    groups = full.state.optimizer_state["param_groups"]
    factor = recipe.fit.recovery_lr_factor
    assert groups[0]["lr"] == recipe.fit.lr * factor
    assert groups[1]["lr"] == 1e-3 * factor  # not 1e-3: the warm-up's end keeps the reduction
    # resumed (from before or after the warm-up's end) to the same bits, the rate included
    y4, physics, generator, z = recipes.build(recipe, y)
    part = dip.fit(y4, _DivergesOnce(fail_at=3, **physics.config()), generator, z,
                   recipe.fit.updated(steps=stop_at))
    resumed = dip.fit(y4, from_config(physics_settings(part.physics)), part.generator, part.z, recipe.fit,
                      resume=part.resume_state())
    assert resumed.recoveries == 1 and torch.equal(resumed.image, full.image)
    assert torch.equal(resumed.physics.kernel, full.physics.kernel)
    assert resumed.state.optimizer_state["param_groups"][1]["lr"] == groups[1]["lr"]
