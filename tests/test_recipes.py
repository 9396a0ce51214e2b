"""Recipes: every preset of the paper builds, with the original's networks and settings."""
import pytest
import torch

from dip import recipes
from dip.physics import Downsample, Identity, Mask


def n_params(net):
    return sum(p.numel() for p in net.parameters())


def test_all_paper_recipes_exist():
    assert set(recipes.names()) == {"denoise", "denoise-50", "jpeg", "sr2", "sr4", "sr8", "inpaint-text",
                                    "inpaint-hole", "inpaint-region", "restore-50", "restore-98", "flash",
                                    "deblur", "deblur-blind", "deblur-blind-motion"}


def test_denoise_recipe_is_the_standard_skip_network_and_the_papers_schedule():
    r = recipes.get("denoise")
    _, physics, net, z = recipes.build(r, torch.rand(3, 32, 32))
    assert n_params(net) == 2_217_831
    assert isinstance(physics, Identity) and z.shape[1] == 32
    assert (r.fit.steps, r.fit.lr, r.fit.exp_weight, r.fit.backtrack) == (3000, 0.01, 0.99, True)
    assert r.fit.reg_noise_std == pytest.approx(1 / 30)
    assert recipes.get("denoise-50").fit.reg_noise_std == pytest.approx(1 / 20)


def test_inpaint_text_recipe_has_the_text_inpainting_network():
    _, physics, net, _ = recipes.build(recipes.get("inpaint-text"), torch.rand(3, 32, 32), mask=torch.ones(32, 32))
    assert n_params(net) == 3_002_627
    assert isinstance(physics, Mask)


@pytest.mark.parametrize("name,factor,steps", [("sr2", 2, 2000), ("sr4", 4, 2000), ("sr8", 8, 4000)])
def test_sr_recipes(name, factor, steps):
    r = recipes.get(name)
    y, physics, net, z = recipes.build(r, torch.rand(3, 8, 6))
    assert isinstance(physics, Downsample) and physics.factor == factor and physics.kernel == "lanczos2"
    assert r.fit.steps == steps
    assert physics.x_size((8, 6)) == (8 * factor, 6 * factor)


@pytest.mark.parametrize("name", ["denoise", "jpeg", "sr4", "inpaint-text", "inpaint-hole", "inpaint-region",
                                  "restore-50", "restore-98", "deblur"])
def test_every_recipe_fits_a_grey_image_for_one_step(name):
    img = torch.rand(1, 20, 16)
    mask = (torch.rand(20, 16) > 0.5).float()
    res = recipes.run(recipes.get(name, steps=1, stop="steps"), img, mask=mask, kernel="gaussian:1")
    factor = 4 if name == "sr4" else 1
    assert res.image.shape == (1, 1, 20 * factor, 16 * factor)


def test_flash_recipe_feeds_the_flash_image():
    flash, noflash = torch.rand(3, 20, 24), torch.rand(3, 20, 24)
    y, _, net, z = recipes.build(recipes.get("flash"), noflash, flash=flash)
    top, left = (z.shape[-2] - 20) // 2, (z.shape[-1] - 24) // 2
    torch.testing.assert_close(z[0, :, top:top + 20, left:left + 24], flash)
    res = recipes.run(recipes.get("flash", steps=1), noflash, flash=flash)
    assert res.image.shape == (1, 3, 20, 24)


def test_inpaint_hole_uses_a_meshgrid_code():
    _, _, _, z = recipes.build(recipes.get("inpaint-hole"), torch.rand(3, 16, 16), mask=torch.ones(16, 16))
    assert z.shape[1] == 2 and z.min() == 0 and z.max() == 1


def test_overrides():
    r = recipes.get("sr4", steps=5, lr=0.001, factor=3, seed=2, net="unet")
    assert (r.fit.steps, r.fit.lr, r.fit.seed, r.physics["factor"], r.net["name"]) == (5, 0.001, 2, 3, "unet")
    assert recipes.get("sr4").fit.steps == 2000  # overrides do not leak into the table


@pytest.mark.parametrize("kwargs,match", [({"name": "denoise-100"}, "unknown recipe"),
                                          ({"name": "denoise", "net": "vgg"}, "unknown net"),
                                          ({"name": "denoise", "factor": 4}, "super-resolution"),
                                          ({"name": "sr4", "factor": 1}, "factor"),
                                          ({"name": "denoise", "steps": 0}, "steps"),
                                          ({"name": "denoise", "colour": 1}, "unknown fit option")])
def test_bad_overrides_are_clear_errors(kwargs, match):
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=match):
        recipes.get(name, **kwargs)


def test_mask_recipes_need_a_mask():
    with pytest.raises(ValueError, match="mask"):
        recipes.build(recipes.get("inpaint-text"), torch.rand(3, 16, 16))
