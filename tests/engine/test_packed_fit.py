"""Packed fits: member k of a pack follows the single fit with its seed, stops, recovers and
resumes on its own."""
import math

import pytest
import torch

from dip.engine import FitConfig, fit
from dip.engine.geometry import generator_geometry
from dip.engine.packed_loop import fit_packed
from dip.models import build
from dip.physics import Identity, Mask

NET = dict(num_channels_down=[4, 6], num_channels_up=[4, 6], num_channels_skip=[2, 2],
           upsample_mode="bilinear", pad="reflection")
SIDE = 16


def _members(k, dtype=torch.float64, seeds=None):
    gens, zs = [], []
    for seed in seeds if seeds is not None else range(k):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            gens.append(build("skip", 3, 3, **NET).to(dtype))
        _, z_hw = generator_geometry(gens[-1], (SIDE, SIDE))
        zs.append(torch.rand(1, 3, *z_hw, generator=torch.Generator().manual_seed(100 + seed), dtype=dtype) * 0.1)
    return gens, zs


def _observation(dtype=torch.float64):
    g = torch.Generator().manual_seed(7)
    return torch.rand(1, 3, SIDE, SIDE, generator=g, dtype=dtype)


def _single(gen, z, y, config, physics=None, **kw):
    return fit(y, physics or Identity(), gen, z, config, **kw)


def _copies(gens):
    import copy
    return [copy.deepcopy(g) for g in gens]


def _max_diff(a, b):
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


CONFIG = FitConfig(steps=20, lr=0.01, reg_noise_std=0.05, exp_weight=0.9, precision="fp32", psnr_every=5)


def test_member_k_follows_the_single_fit_with_its_seed_in_float64():
    gens, zs = _members(3)
    y = _observation()
    packed = fit_packed(y, Identity(), _copies(gens), zs, CONFIG, gt=y[0])
    for k in range(3):
        single = _single(_copies(gens)[k], zs[k], y, CONFIG.updated(seed=k), gt=y[0])
        member = packed.members[k]
        assert member.config.seed == k and member.steps_run == 20 and member.stop_reason == "steps"
        assert float((member.image - single.image).abs().max()) <= 1e-8
        assert float((member.image_plain - single.image_plain).abs().max()) <= 1e-8
        mine, theirs = member.generator.state_dict(), single.generator.state_dict()
        assert mine.keys() == theirs.keys()
        assert _max_diff([mine[n] for n in mine], [theirs[n].to(mine[n].dtype) for n in mine]) <= 1e-8
        assert member.history["psnr_step"] == single.history["psnr_step"]
        assert max(abs(a - b) for a, b in zip(member.history["loss"], single.history["loss"], strict=True)) <= 1e-6


def test_each_member_fits_its_own_observation_and_mask():
    gens, zs = _members(2)
    ys = [_observation(), _observation().flip(-1)]
    masks = [Mask((torch.rand(1, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(s)) > 0.3).double())
             for s in (1, 2)]
    packed = fit_packed(ys, masks, _copies(gens), zs, CONFIG.updated(steps=8))
    for k in range(2):
        single = _single(_copies(gens)[k], zs[k], ys[k], CONFIG.updated(steps=8, seed=k), physics=masks[k])
        assert float((packed.members[k].image - single.image).abs().max()) <= 1e-8


def test_a_member_that_stops_leaves_the_pack_and_the_others_go_on():
    gens, zs = _members(2)
    y = _observation()
    config = CONFIG.updated(steps=40, stop="auto", stop_window=5, stop_patience=3)
    packed = fit_packed(y, Identity(), _copies(gens), zs, config)
    singles = [_single(_copies(gens)[k], zs[k], y, config.updated(seed=k)) for k in range(2)]
    for member, single in zip(packed.members, singles, strict=True):
        assert member.stop_reason == single.stop_reason
        assert member.steps_run == single.steps_run and member.returned_step == single.returned_step
        assert float((member.image - single.image).abs().max()) <= 1e-8
    assert {m.stop_reason for m in packed.members} == {"auto"}
    assert len({m.steps_run for m in packed.members}) == 2, "the two members should stop at different steps"


def test_a_member_whose_loss_is_not_finite_is_restored_alone():
    gens, zs = _members(2)
    y = _observation()
    with torch.no_grad():  # member 1 diverges at once: an infinite weight
        next(gens[1].parameters()).view(-1)[0] = math.inf
    config = CONFIG.updated(steps=6, max_recoveries=2)
    packed = fit_packed(y, Identity(), _copies(gens), zs, config)
    good, bad = packed.members
    assert bad.stop_reason == "diverged" and bad.recoveries == 2 and bad.steps_run == 2
    single = _single(_copies(gens)[0], zs[0], y, config.updated(seed=0))
    assert good.stop_reason == "steps" and good.recoveries == 0
    assert float((good.image - single.image).abs().max()) <= 1e-8


def test_a_restored_member_gets_its_last_good_state_and_its_own_lower_rate():
    gens, zs = _members(2)
    y = _observation()
    config = CONFIG.updated(steps=10, backtrack=True, backtrack_threshold_db=-100.0, check_every=5)
    # every check "fails" (threshold below zero): at step 10 both members go back to step 5's
    # state, as two single fits do, and go on at half the rate
    packed = fit_packed(y, Identity(), _copies(gens), zs, config)
    for k in range(2):
        single = _single(_copies(gens)[k], zs[k], y, config.updated(seed=k))
        member = packed.members[k]
        assert member.backtracks == single.backtracks == 1
        assert member.optimizer_state["param_groups"][0]["lr"] == pytest.approx(0.005)
        assert float((member.image_plain - single.image_plain).abs().max()) <= 1e-8
    more = fit_packed(y, Identity(), [m.generator for m in packed.members], zs, config.updated(steps=14),
                      resume=packed.resume_state())
    assert all(m.steps_run == 14 and torch.isfinite(m.image).all() for m in more.members)


def test_an_interrupted_pack_resumes_exactly():
    gens, zs = _members(2, dtype=torch.float32)
    y = _observation(torch.float32)
    config = CONFIG.updated(steps=10)
    straight = fit_packed(y, Identity(), _copies(gens), zs, config)
    stop = _stop_at(4)
    part = fit_packed(y, Identity(), _copies(gens), zs, config, callbacks=[stop], stop_event=stop)
    assert {m.stop_reason for m in part.members} == {"interrupted"} and part.steps_run == 4
    rest = fit_packed(y, Identity(), [m.generator for m in part.members], zs, config,
                      resume=part.resume_state())
    for a, b in zip(rest.members, straight.members, strict=True):
        assert a.steps_run == 10 and torch.equal(a.image, b.image)
        assert a.history["loss"] == b.history["loss"]


def test_a_member_result_resumes_as_a_single_fit():
    gens, zs = _members(2)
    y = _observation()
    part = fit_packed(y, Identity(), _copies(gens), zs, CONFIG.updated(steps=6))
    member = part.members[1]
    more = fit(y, Identity(), member.generator, zs[1], member.config.updated(steps=12),
               resume=member.resume_state())
    single = _single(_copies(gens)[1], zs[1], y, CONFIG.updated(steps=12, seed=1))
    assert float((more.image - single.image).abs().max()) <= 1e-8


@pytest.mark.parametrize("bad, message", [
    (dict(optimizer="lbfgs"), "Adam only"),
    (dict(compile=True), "torch.compile"),
])
def test_settings_a_pack_cannot_run_are_refused(bad, message):
    gens, zs = _members(2)
    with pytest.raises(ValueError, match=message):
        fit_packed(_observation(), Identity(), gens, zs, CONFIG.updated(**bad))


def test_mismatched_member_counts_are_refused():
    gens, zs = _members(2)
    with pytest.raises(ValueError, match="one z per member"):
        fit_packed(_observation(), Identity(), gens, zs[:1], CONFIG)
    with pytest.raises(ValueError, match="3 entries for 2 generators"):
        fit_packed([_observation()] * 3, Identity(), gens, zs, CONFIG)
    with pytest.raises(ValueError, match=r"zs\[1\] must have spatial size"):
        fit_packed(_observation(), Identity(), gens, [zs[0], zs[1][..., :-1]], CONFIG)


def test_an_ensemble_is_the_mean_of_its_members_and_no_worse_than_their_mean_error():
    import dip

    clean = torch.rand(3, 24, 24, generator=torch.Generator().manual_seed(3))
    noisy = (clean + 0.1 * torch.randn(3, 24, 24, generator=torch.Generator().manual_seed(4))).clamp(0, 1)
    kw = dict(steps=6, stop="steps", precision="fp32")
    result = dip.denoise(noisy, gt=clean, ensemble=3, **kw)
    assert len(result.members) == 3 and [m.config.seed for m in result.members] == [0, 1, 2]
    stack = torch.stack([m.image for m in result.members])
    assert torch.allclose(result.image, stack.mean(0))
    assert torch.allclose(result.image_median, stack.median(0).values)  # three members: the middle one
    assert result.psnr == pytest.approx(dip.metrics.psnr(result.image, clean[None]))
    assert result.stop_reason == "steps" and result.steps_run == 6
    mse = [float(((m.image - clean) ** 2).mean()) for m in result.members]
    assert float(((result.image - clean) ** 2).mean()) <= sum(mse) / 3
    assert len({round(v, 9) for v in mse}) == 3, "the members should be different fits (their own seeds)"


def test_ensemble_must_be_a_positive_integer():
    import dip

    with pytest.raises(ValueError, match="ensemble must be an integer >= 1"):
        dip.denoise(torch.rand(3, 16, 16), ensemble=0, steps=2)


def test_the_median_of_an_even_count_is_the_mean_of_the_two_middle_values():
    from dip.engine.packed_result import combine

    images = [torch.full((1, 1, 2, 2), v) for v in (0.1, 0.9, 0.3, 0.5)]
    assert torch.allclose(combine(images, "median"), torch.full((1, 1, 2, 2), 0.4))
    assert torch.allclose(combine(images, "mean"), torch.full((1, 1, 2, 2), 0.45))
    with pytest.raises(ValueError, match="mean, median"):
        combine(images, "max")


def test_an_operator_with_trainable_parameters_is_refused():
    from dip.physics import BlindBlur

    gens, zs = _members(2)
    with pytest.raises(ValueError, match="trainable parameters"):
        fit_packed(_observation(), BlindBlur(3, padding="reflect").double(), gens, zs, CONFIG)


AUTO = CONFIG.updated(steps=40, stop="auto", stop_window=5, stop_patience=3)


def _stop_at(step):
    class StopAt:
        def __init__(self):
            self.step = 0

        def __call__(self, event):
            self.step = event.step

        def is_set(self):
            return self.step >= step
    return StopAt()


@pytest.mark.parametrize("branch_free", ["0", "1"])
def test_stopping_members_keep_the_generator_of_their_returned_step(monkeypatch, branch_free):
    # "1": the accelerators' branch-free path (no host read per step), forced on this CPU
    monkeypatch.setenv("DIP_BRANCH_FREE", branch_free)
    gens, zs = _members(2)
    y = _observation()
    packed = fit_packed(y, Identity(), _copies(gens), zs, AUTO)
    for k, member in enumerate(packed.members):
        single = _single(_copies(gens)[k], zs[k], y, AUTO.updated(seed=k))
        assert member.stop_reason == single.stop_reason == "auto"
        assert member.returned_step == single.returned_step < member.steps_run
        mine, theirs = member.state.member.returned_state, single.state.member.returned_state
        assert mine.keys() == theirs.keys()
        assert _max_diff([mine[n] for n in mine], [theirs[n] for n in mine]) <= 1e-8
        assert member.stopper_state.keys() == single.stopper_state.keys()
        assert torch.equal(member.stopper_state["history_step"], single.stopper_state["history_step"])


def test_the_branch_free_path_gives_the_cpu_paths_results(monkeypatch):
    gens, zs = _members(2)
    y = _observation()
    runs = []
    for flag in ("0", "1"):
        monkeypatch.setenv("DIP_BRANCH_FREE", flag)
        runs.append((fit_packed(y, Identity(), _copies(gens), zs, AUTO),
                     _single(_copies(gens)[1], zs[1], y, AUTO.updated(seed=1))))
    (pack_cpu, single_cpu), (pack_free, single_free) = runs
    for a, b in [*zip(pack_cpu.members, pack_free.members, strict=True), (single_cpu, single_free)]:
        assert a.returned_step == b.returned_step and a.steps_run == b.steps_run
        assert torch.equal(a.image, b.image)
        sa, sb = a.state.member.returned_state, b.state.member.returned_state
        assert all(torch.equal(sa[n], sb[n]) for n in sa)


def test_a_pack_interrupted_before_its_members_stop_resumes_exactly():
    gens, zs = _members(2)
    y = _observation()
    straight = fit_packed(y, Identity(), _copies(gens), zs, AUTO)
    stop = _stop_at(9)  # past the first full window, before any member stops
    part = fit_packed(y, Identity(), _copies(gens), zs, AUTO, callbacks=[stop], stop_event=stop)
    assert {m.stop_reason for m in part.members} == {"interrupted"}
    rest = fit_packed(y, Identity(), [m.generator for m in part.members], zs, AUTO, resume=part.resume_state())
    for a, b in zip(rest.members, straight.members, strict=True):
        assert a.stop_reason == b.stop_reason == "auto"
        assert a.steps_run == b.steps_run and a.returned_step == b.returned_step
        assert torch.equal(a.image, b.image)
        sa, sb = a.state.member.returned_state, b.state.member.returned_state
        assert all(torch.equal(sa[n], sb[n]) for n in sa)
    # a member of the interrupted pack goes on alone as its own single fit would
    alone = fit(y, Identity(), part.members[1].generator, zs[1], part.members[1].config,
                resume=part.members[1].resume_state())
    assert alone.steps_run == straight.members[1].steps_run
    assert alone.returned_step == straight.members[1].returned_step


# --------------------------------------------------------------------------- CUDA
# The packed engine's accelerator path: reg noise from the device's generator, the branch-free
# stopping rule and held state (one host read every few steps). Skipped without a CUDA device.
@pytest.mark.cuda
def test_member_k_follows_the_single_fit_with_its_seed_on_cuda_in_float64():
    gens, zs = _members(2)
    y = _observation()
    config = CONFIG.updated(device="cuda", cuda_graph=False)
    packed = fit_packed(y, Identity(), _copies(gens), zs, config, gt=y[0])
    for k, member in enumerate(packed.members):
        single = _single(_copies(gens)[k], zs[k], y, config.updated(seed=k), gt=y[0])
        assert member.steps_run == single.steps_run == 20
        assert float((member.image - single.image).abs().max()) <= 1e-8
        assert member.history["psnr_step"] == single.history["psnr_step"]


@pytest.mark.cuda
def test_stopping_members_on_cuda_return_their_single_fits_step():
    gens, zs = _members(2)
    y = _observation()
    config = AUTO.updated(device="cuda", cuda_graph=False)
    packed = fit_packed(y, Identity(), _copies(gens), zs, config)
    for k, member in enumerate(packed.members):
        single = _single(_copies(gens)[k], zs[k], y, config.updated(seed=k))
        assert member.stop_reason == single.stop_reason == "auto"
        assert member.returned_step == single.returned_step and member.steps_run == single.steps_run
        assert float((member.image - single.image).abs().max()) <= 1e-8


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_an_ensemble_on_cuda_improves_the_image_and_returns_cpu_tensors(precision):
    import dip
    from tests import oracle

    clean, noisy = oracle.noisy_smooth_image(48)
    result = dip.denoise(noisy, gt=clean, ensemble=2, steps=300, stop="steps", device="cuda", precision=precision)
    assert result.image.device.type == "cpu" and torch.isfinite(result.image).all()
    assert all(m.steps_run == 300 and m.stop_reason == "steps" for m in result.members)
    assert result.psnr > dip.metrics.psnr(noisy, clean)
