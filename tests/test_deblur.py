"""Deblurring: the recipe fits the sharp image through a "valid" Blur, returns the
observation's size, beats its blurred input, and resumes bit for bit."""
import pytest
import torch

import dip
from dip import metrics, recipes
from dip.physics import Blur, parse_kernel
from tests import oracle

SMALL = {"num_channels_down": [16] * 3, "num_channels_up": [16] * 3, "num_channels_skip": [4] * 3}


def _scene(size=32, margin=4, seed=0):
    """A sharp image (3, size, size), its blurred observation (through the margin around it,
    as a camera sees it) with 1 % noise, and the kernel."""
    k = torch.from_numpy(parse_kernel("gaussian:1.0")).float()
    scene = oracle.smooth_image(size + 2 * margin, size + 2 * margin, 3, seed)
    blurred = Blur(k, "valid")(scene[None])  # size + 2 * margin - 6
    o = (blurred.shape[-1] - size) // 2
    y = blurred[..., o:o + size, o:o + size]
    gt = scene[None, :, o + 3:o + 3 + size, o + 3:o + 3 + size]
    y = (y + 0.01 * torch.randn(y.shape, generator=torch.Generator().manual_seed(seed))).clamp(0, 1)
    return gt, y[0], k


def test_deblur_recipe():
    r = recipes.get("deblur")
    assert r.task == "deblur" and r.physics["name"] == "blur" and r.physics["padding"] == "valid"
    assert r.net["name"] == "skip" and r.fit.exp_weight == 0.99 and r.fit.stop == "steps"
    with pytest.raises(ValueError, match="needs a blur kernel"):
        recipes.build(r, torch.rand(3, 16, 16))


def test_a_small_deblur_fit_beats_its_blurred_input():
    gt, y, k = _scene()
    res = dip.deblur(y, k, net_options=SMALL, steps=400, gt=gt)
    assert res.image.shape == (1, 3, 32, 32)  # the observation's size, without the fitted margin
    assert res.psnr == pytest.approx(metrics.psnr(res.image, gt))
    assert res.psnr > metrics.psnr(y[None], gt) + 1.0
    assert isinstance(res.physics, Blur) and res.physics.x_size((32, 32)) == (38, 38)


def test_deblur_takes_a_spec_and_a_padding_and_checks_the_recipe():
    y = torch.rand(1, 12, 10)
    res = dip.deblur(y, "box:3", padding="reflect", net_options=SMALL, steps=2)
    assert res.image.shape == (1, 1, 12, 10) and res.physics.padding == "reflect"
    assert abs(float(res.physics.kernel.sum()) - 1) < 1e-6
    with pytest.raises(ValueError, match="not deblur"):
        dip.deblur(y, "box:3", recipe="denoise")
    with pytest.raises(ValueError, match="'gaussian:-1'"):
        dip.deblur(y, "gaussian:-1")


def test_a_resumed_deblur_fit_equals_the_uninterrupted_one():
    _, y, _ = _scene(size=24)
    k = torch.from_numpy(parse_kernel("gaussian:1.6")).float()  # 11 x 11: the FFT path
    recipe = recipes.get("deblur", net_options=SMALL, steps=12)
    full = recipes.run(recipe, y, kernel=k)
    half = recipes.run(recipes.get("deblur", net_options=SMALL, steps=6), y, kernel=k)
    from dip.checkpoint import physics_settings
    from dip.physics import from_config

    physics = from_config(physics_settings(half.physics))  # as dip.resume rebuilds it
    assert torch.equal(physics.kernel, half.physics.kernel) and physics.padding == "valid" and physics.fft
    resumed = dip.fit(y, physics, half.generator, half.z, recipe.fit, resume=half.resume_state())
    assert torch.equal(resumed.image, full.image)
