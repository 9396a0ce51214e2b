import pytest
import torch

from dip.physics import Downsample, Identity, Mask
from tests import oracle


@pytest.mark.parametrize("factor", [2, 4, 8])
@pytest.mark.parametrize("kernel", ["lanczos2", "lanczos3"])
def test_downsample_equals_the_original_dense_conv(factor, kernel):
    x = torch.rand(1, 3, 64, 48, generator=torch.Generator().manual_seed(factor))
    op = Downsample(factor, kernel)
    y = op(x)
    assert y.shape == (1, 3, 64 // factor, 48 // factor)
    torch.testing.assert_close(y, oracle.dense_downsample(x, factor, kernel), atol=1e-5, rtol=0)


def _adjoint_gap(op, x_shape, y_shape, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    u = torch.randn(*x_shape, generator=g, dtype=dtype)
    v = torch.randn(*y_shape, generator=g, dtype=dtype)
    lhs = (op(u) * v).sum()
    adj = op.A_adjoint(v, x_shape[-2:]) if isinstance(op, Downsample) else op.A_adjoint(v)
    assert adj.shape == u.shape
    rhs = (u * adj).sum()
    return abs(lhs - rhs).item() / max(abs(lhs).item(), 1e-12)


@pytest.mark.parametrize("padding", ["replicate", "reflect", "zero"])
@pytest.mark.parametrize("factor,hw", [(2, (20, 18)), (4, (36, 28)), (3, (33, 27))])
def test_downsample_adjoint_identity(padding, factor, hw):
    op = Downsample(factor, "lanczos2", padding=padding)
    y_shape = (2, 3) + tuple(op(torch.zeros(1, 1, *hw)).shape[-2:])
    assert _adjoint_gap(op, (2, 3) + hw, y_shape) < 1e-10


def test_downsample_without_preserve_size_and_its_adjoint():
    op = Downsample(2, "lanczos2", preserve_size=False)
    y = op(torch.rand(1, 1, 20, 20))
    assert y.shape[-2:] == (7, 7)  # (20 - 8) // 2 + 1
    assert _adjoint_gap(op, (1, 1, 20, 20), (1, 1, 7, 7)) < 1e-10


def test_mask_and_identity_adjoint_identity():
    mask = (torch.rand(1, 1, 9, 11, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    assert _adjoint_gap(Mask(mask), (1, 3, 9, 11), (1, 3, 9, 11)) < 1e-12
    assert _adjoint_gap(Identity(), (1, 3, 9, 11), (1, 3, 9, 11)) < 1e-12


def test_mask_broadcasts_over_channels_and_treats_nonzero_as_known():
    mask = torch.tensor([[0.0, 0.3], [2.0, 0.0]])
    x = torch.ones(1, 3, 2, 2)
    out = Mask(mask)(x)
    assert torch.equal(out[0, :, 0, 1], torch.ones(3)) and torch.equal(out[0, :, 0, 0], torch.zeros(3))


def test_mask_size_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="same height and width"):
        Mask(torch.ones(5, 5))(torch.rand(1, 3, 6, 5))


@pytest.mark.parametrize("factor", [2, 3, 4, 5, 6])
@pytest.mark.parametrize("padding", ["replicate", "reflect", "zero"])
def test_every_factor_maps_x_size_to_the_observation_size(factor, padding):
    op = Downsample(factor, padding=padding)
    hr = op.x_size((7, 5))
    assert hr == (7 * factor, 5 * factor)
    assert op(torch.rand(1, 2, *hr)).shape == (1, 2, 7, 5)
    assert _adjoint_gap(op, (1, 2) + hr, (1, 2, 7, 5)) < 1e-10


def test_x_size():
    assert Downsample(4).x_size((20, 24)) == (80, 96)
    assert Identity().x_size((7, 9)) == (7, 9)


@pytest.mark.parametrize("kwargs,match", [({"factor": 2.0}, "integer"), ({"factor": 0}, "integer"),
                                          ({"factor": 2, "kernel": "cubic"}, "unknown kernel"),
                                          ({"factor": 2, "padding": "circular"}, "padding")])
def test_downsample_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Downsample(**kwargs)
