"""dip.physics.Blur: a true convolution (scipy's), its exact adjoint in every boundary mode."""
import numpy as np
import pytest
import scipy.signal
import torch

from dip.physics import Blur, from_config


def _adjoint_gap(op, x_shape):
    g = torch.Generator().manual_seed(0)
    u = torch.randn(*x_shape, generator=g, dtype=torch.float64)
    y = op(u)
    v = torch.randn(y.shape, generator=g, dtype=torch.float64)
    adj = op.A_adjoint(v)
    assert adj.shape == u.shape
    lhs, rhs = (y * v).sum(), (u * adj).sum()
    return abs(lhs - rhs).item() / abs(lhs).item()


@pytest.mark.parametrize("method", ["direct", "fft"])
@pytest.mark.parametrize("padding", ["reflect", "replicate", "zero", "circular", "valid"])
@pytest.mark.parametrize("kshape", [(5, 5), (4, 6), (1, 3), (3, 7, 7)])
def test_blur_adjoint_identity(padding, kshape, method):
    k = torch.rand(*kshape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    op = Blur(k, padding, method=method).double()
    assert op.fft == (method == "fft")
    assert _adjoint_gap(op, (2, 3, 13, 11)) < 1e-12


@pytest.mark.parametrize("padding", ["reflect", "valid"])
@pytest.mark.parametrize("kshape", [(5, 5), (4, 6), (3, 7, 6)])
def test_fft_equals_direct_and_auto_picks_fft_for_large_kernels(padding, kshape):
    from dip.physics.blur import FFT_MIN_SIDE, use_fft

    k = torch.rand(*kshape, generator=torch.Generator().manual_seed(2))
    x = torch.rand(2, 3, 17, 15, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(Blur(k, padding, method="fft")(x), Blur(k, padding, method="direct")(x),
                               atol=1e-5, rtol=1e-5)
    assert not Blur(k).fft and Blur(torch.ones(FFT_MIN_SIDE, FFT_MIN_SIDE)).fft
    assert use_fft((3, 3), "fft") and not use_fft((99, 99), "direct")
    with pytest.raises(ValueError, match="method must be one of auto, direct, fft"):
        use_fft((3, 3), "fast")


@pytest.mark.parametrize("kshape", [(5, 5), (4, 6), (2, 3)])
def test_blur_is_scipys_convolution(kshape):
    rng = np.random.default_rng(0)
    k, x = rng.random(kshape), rng.random((12, 10))
    xt = torch.from_numpy(x)[None, None]
    for padding, mode in (("zero", "same"), ("valid", "valid")):
        y = Blur(k, padding).double()(xt)[0, 0].numpy()
        np.testing.assert_allclose(y, scipy.signal.convolve(x, k, mode=mode), atol=1e-6)


def test_blur_sizes_and_the_observations_box():
    op = Blur(torch.ones(4, 6), "valid")
    y = op(torch.rand(1, 3, 20, 30))
    assert y.shape[-2:] == (17, 25) and op.x_size((17, 25)) == (20, 30)
    top, left, h, w = op.crop_box((17, 25))
    assert (top + h + 1, left + w + 2) == (20, 30)  # ceil((K-1)/2) before, floor((K-1)/2) after
    same = Blur(torch.ones(4, 6), "reflect")
    assert same(torch.rand(1, 3, 20, 30)).shape[-2:] == (20, 30) and same.crop_box((20, 30)) == (0, 0, 20, 30)


def test_per_channel_kernels_blur_each_channel_with_its_own():
    k = torch.zeros(3, 3, 3)
    k[0, 1, 1] = 1.0  # channel 0: identity
    k[1] = 1.0        # channel 1: box
    k[2, 1, 1] = 2.0  # channel 2: twice
    x = torch.rand(1, 3, 8, 8)
    y = Blur(k, "replicate")(x)
    torch.testing.assert_close(y[:, 0], x[:, 0])
    torch.testing.assert_close(y[:, 2], 2 * x[:, 2])
    torch.testing.assert_close(y[:, 1], Blur(torch.ones(3, 3), "replicate")(x[:, 1:2])[:, 0])
    with pytest.raises(ValueError, match="3 per-channel kernels but the image has 1"):
        Blur(k)(torch.rand(1, 1, 8, 8))


def test_normalize_and_a_constant_image_stays_constant():
    op = Blur(torch.rand(5, 4) * 7, "reflect", normalize=True)
    assert abs(float(op.kernel.sum()) - 1) < 1e-6
    torch.testing.assert_close(op(torch.full((1, 3, 9, 9), 0.3)), torch.full((1, 3, 9, 9), 0.3))


@pytest.mark.parametrize("kernel,match", [
    (torch.tensor([[1.0, float("nan")]]), "non-finite"),
    (torch.tensor([[1.0, -0.5]]), "negative"),
    (torch.zeros(3, 3), "all zero"),
    (torch.zeros(0, 3), "Kh, Kw >= 1"),
    (torch.ones(2, 2, 2, 2), r"\(Kh, Kw\) or \(C, Kh, Kw\)"),
    ("gaussian:1", "must be a tensor"),
])
def test_bad_kernels(kernel, match):
    with pytest.raises((ValueError, TypeError), match=match):
        Blur(kernel)


def test_bad_padding_and_too_small_an_image_for_reflect():
    with pytest.raises(ValueError, match="padding must be one of reflect"):
        Blur(torch.ones(3, 3), "mirror")
    with pytest.raises(ValueError, match="use padding='replicate'"):
        Blur(torch.ones(9, 9), "reflect")(torch.rand(1, 1, 4, 4))


def test_from_config_builds_a_blur_from_a_spec_or_the_recorded_kernel():
    op = from_config({"name": "blur", "padding": "replicate"}, kernel="box:3")
    assert isinstance(op, Blur) and op.kernel_size == (3, 3) and op.padding == "replicate"
    again = from_config({"name": "blur", "padding": "replicate", "kernel": op.kernel})
    assert torch.equal(again.kernel, op.kernel)
    with pytest.raises(ValueError, match="needs a blur kernel"):
        from_config({"name": "blur"})
