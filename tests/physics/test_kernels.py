import numpy as np
import pytest

from dip.physics import downsampler_taps, original_kernel_2d, preserve_size_padding
from tests import oracle

# RECIPES.md: factor 4, lanczos2, phase 1/2, first half of the 1-D kernel (mirrored).
LANCZOS2_X4_HALF = [-0.001065, -0.009752, -0.020384, -0.014878, 0.024594, 0.098658, 0.183115, 0.239711]


def test_lanczos2_x4_taps_match_the_paper():
    taps = downsampler_taps(4, "lanczos2", 0.5)
    assert taps.shape == (16,)
    np.testing.assert_allclose(taps[:8], LANCZOS2_X4_HALF, atol=1e-6)
    np.testing.assert_allclose(taps[8:], LANCZOS2_X4_HALF[::-1], atol=1e-6)


@pytest.mark.parametrize("factor,size", [(2, 8), (4, 16), (8, 32)])
def test_phase_half_kernel_sizes(factor, size):
    assert downsampler_taps(factor, "lanczos2", 0.5).shape == (size,)
    assert downsampler_taps(factor, "lanczos3", 0.5).shape == (size * 3 // 2,)


@pytest.mark.parametrize("kernel,phase", [("lanczos2", 0.5), ("lanczos3", 0.5), ("lanczos2", 0),
                                          ("lanczos3", 0), ("gauss12", 0), ("gauss1sq2", 0), ("box", 0.5)])
@pytest.mark.parametrize("factor", [2, 4, 8])
def test_separable_taps_equal_the_original_2d_kernel(kernel, phase, factor):
    taps = downsampler_taps(factor, kernel, phase)
    np.testing.assert_allclose(np.outer(taps, taps), original_kernel_2d(factor, kernel, phase), atol=1e-12)
    assert taps.sum() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("kernel", ["lanczos2", "lanczos3"])
@pytest.mark.parametrize("phase", [0.5, 0])
@pytest.mark.parametrize("factor", [2, 3, 4])
def test_lanczos_kernels_equal_the_oracle(kernel, phase, factor):
    """The taps and the 2-D kernel against tests/oracle.py's independent rebuild of the original's."""
    taps, kernel_2d = oracle.lanczos_taps(factor, kernel, phase), oracle.lanczos_kernel_2d(factor, kernel, phase)
    np.testing.assert_allclose(downsampler_taps(factor, kernel, phase), taps, rtol=0, atol=1e-12)
    np.testing.assert_allclose(original_kernel_2d(factor, kernel, phase), kernel_2d, rtol=0, atol=1e-12)


def test_preserve_size_padding_rule():
    assert preserve_size_padding(8, 2) == 3
    assert preserve_size_padding(16, 4) == 6
    assert preserve_size_padding(32, 8) == 12
    assert preserve_size_padding(17, 4) == 8


@pytest.mark.parametrize("args,match", [((0, "lanczos2", 0.5), "factor"), ((2.5, "lanczos2", 0.5), "factor"),
                                        ((2, "bicubic", 0.5), "unknown kernel"), ((2, "lanczos2", 0.25), "phase"),
                                        ((2, "box", 0), "box"), ((2, "gauss12", 0.5), "phase 0")])
def test_bad_kernel_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        downsampler_taps(*args)
