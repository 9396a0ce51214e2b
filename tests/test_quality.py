"""End-to-end quality on seeded natural-image crops (scikit-image's bundled photographs).

The generators keep the recipes' architecture at reduced width (32 channels per scale instead
of 128) so that the whole file stays within CI's time budget on two cores; the full-width
recipes are measured by ``dip eval`` and the benchmarks. Each fit takes several seconds: the
module is marked ``slow``.
"""
import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image
from scipy import ndimage

import dip
from dip.metrics import psnr

pytestmark = pytest.mark.slow

NARROW = dict(num_channels_down=[32] * 5, num_channels_up=[32] * 5)


def crop64(name="astronaut", top=40, left=180):
    """A 64x64 crop of a scikit-image photograph as (3, 64, 64) float32 (grey ones repeated)."""
    a = getattr(skimage.data, name)()[top:top + 64, left:left + 64]
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    return torch.from_numpy(a.astype(np.float32) / 255).permute(2, 0, 1)


def to_pil(t):
    return Image.fromarray((t.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def from_pil(im):
    return torch.from_numpy(np.asarray(im).astype(np.float32) / 255).permute(2, 0, 1)


def test_denoising_gains_3_db_over_the_noisy_input():
    img = crop64()
    noisy = (img + torch.randn(img.shape, generator=torch.Generator().manual_seed(0)) * 25 / 255).clamp(0, 1)
    res = dip.denoise(noisy, steps=250, stop="steps", net_options=NARROW)
    assert psnr(res.image, img) >= psnr(noisy, img) + 3.0


def test_sr_x4_beats_bicubic():
    img = crop64("coins", 100, 100)
    low = from_pil(to_pil(img).resize((16, 16), Image.LANCZOS))
    bicubic = from_pil(to_pil(low).resize((64, 64), Image.BICUBIC))
    res = dip.super_resolve(low, 4, steps=200, net_options=NARROW)
    assert res.image.shape == (1, 3, 64, 64)
    assert psnr(res.image, img) > psnr(bicubic, img)


def test_restoring_half_the_pixels_beats_nearest_neighbour_fill():
    img = crop64()
    mask = (torch.rand(1, 64, 64, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    observed = img * mask
    _, (iy, ix) = ndimage.distance_transform_edt(mask[0].numpy() == 0, return_indices=True)
    nearest = img[:, torch.from_numpy(iy), torch.from_numpy(ix)]
    res = dip.restore(observed, mask, steps=300, lr=0.01, net_options=NARROW)
    assert psnr(res.image, img) > psnr(nearest, img)
