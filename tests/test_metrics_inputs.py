import math

import pytest
import torch

from dip.inputs import make_input
from dip.metrics import psnr, rgb_to_y, ssim


def test_psnr_of_a_known_error():
    a = torch.zeros(3, 8, 8)
    b = torch.full((3, 8, 8), 0.1)
    assert psnr(a, b) == pytest.approx(20.0)
    assert psnr(a, a) == math.inf


def test_psnr_border_and_y_channel():
    a = torch.zeros(3, 10, 10)
    b = a.clone()
    b[:, 0, :] = 1.0  # error only on the border row
    assert psnr(a, b, border=1) == math.inf
    grey = torch.rand(1, 10, 10)
    assert torch.allclose(rgb_to_y(grey.expand(3, -1, -1)), (16 + 219 * grey) / 255, atol=1e-6)


def test_ssim_identical_is_one_and_noise_lowers_it():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 32, 32, generator=g)
    assert ssim(x, x) == pytest.approx(1.0)
    assert ssim(x, (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(0, 1)) < 0.9
    assert 0 < ssim(x[:, :5, :5], x[:, :5, :5] * 0.5) < 1  # small images use a smaller window


def test_metrics_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        psnr(torch.zeros(3, 8, 8), torch.zeros(3, 8, 9))
    with pytest.raises(ValueError, match="at least 3x3"):
        ssim(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2))


def test_noise_input_is_uniform_scaled_and_seeded():
    z = make_input("noise", 32, (16, 24), generator=torch.Generator().manual_seed(0))
    assert z.shape == (1, 32, 16, 24) and z.dtype == torch.float32
    assert 0 <= z.min() and z.max() <= 0.1
    assert torch.equal(z, make_input("noise", 32, (16, 24), generator=torch.Generator().manual_seed(0)))
    n = make_input("noise_normal", 4, (64, 64), generator=torch.Generator().manual_seed(0))
    assert abs(n.std().item() - 0.1) < 0.01


def test_meshgrid_input():
    z = make_input("meshgrid", 2, (3, 5))
    assert torch.allclose(z[0, 0, 0], torch.linspace(0, 1, 5))
    assert torch.allclose(z[0, 1, :, 0], torch.linspace(0, 1, 3))
    with pytest.raises(ValueError, match="2 channels"):
        make_input("meshgrid", 3, (3, 5))


def test_unknown_input_kind():
    with pytest.raises(ValueError, match="unknown input kind"):
        make_input("perlin", 3, (4, 4))
