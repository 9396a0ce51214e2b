"""BlindBlur: the kernel estimate stays on the simplex, its blur is Blur's with that kernel,
its adjoint is exact, gradients reach the kernel generator, and its settings and state survive
a checkpoint's round trip."""
import pytest
import torch

from dip.checkpoint import physics_settings
from dip.physics import BlindBlur, Blur, from_config


@pytest.mark.parametrize("size", [3, 4, (5, 7), 11])
def test_the_estimate_is_on_the_simplex(size):
    op = BlindBlur(size, init_scale=1.0)
    k = op.kernel
    hw = (size, size) if isinstance(size, int) else size
    assert k.shape == (1, *hw) and k.dtype == torch.float32 and not k.requires_grad
    assert float(k.min()) >= 0 and float(k.sum()) == pytest.approx(1.0, abs=1e-6)
    assert op.kernel_size == hw


def test_it_starts_at_its_centred_gaussian_and_blurs_as_blur_does():
    op = BlindBlur(5, init_scale=0.0, init_sigma=1.0)
    k = op.kernel[0]
    assert torch.equal(k, k.flip(0)) and torch.equal(k, k.t()) and int(k.argmax()) == 12
    x = torch.rand(2, 3, 16, 17)
    assert torch.allclose(op(x), Blur(op.kernel, "valid")(x), atol=1e-6)
    assert op(x).shape == (2, 3, 12, 13) and op.x_size((12, 13)) == (16, 17)
    assert op.crop_box((12, 13)) == Blur(op.kernel, "valid").crop_box((12, 13))


def test_a_flat_start_is_the_uniform_kernel_and_survives_a_checkpoint():
    op = BlindBlur((3, 5), init_scale=0.0, init_sigma=None)
    assert torch.allclose(op.kernel, torch.full((1, 3, 5), 1 / 15), atol=1e-7)
    back = from_config(physics_settings(op))
    assert back.settings["init_sigma"] is None and torch.equal(back.kernel, op.kernel)
    for bad in (0, -1.0, float("inf"), float("nan"), True, "2"):
        with pytest.raises(ValueError, match="init_sigma must be a positive number"):
            BlindBlur(5, init_sigma=bad)


@pytest.mark.parametrize("padding,size", [("valid", 5), ("valid", 10), ("reflect", 4)])
def test_the_adjoint_is_exact_for_the_current_kernel(padding, size):
    op = BlindBlur(size, padding, init_scale=1.0)
    g = torch.Generator().manual_seed(1)
    u = torch.rand(1, 2, 24, 24, generator=g)
    y_hw = tuple(op(u).shape[-2:])
    v = torch.rand(1, 2, *y_hw, generator=g)
    with torch.no_grad():
        lhs, rhs = float((op(u) * v).sum()), float((u * op.A_adjoint(v)).sum())
    assert lhs == pytest.approx(rhs, rel=1e-5)


def test_gradients_reach_the_kernel_generator_only_through_the_blur():
    op = BlindBlur(5)
    params = [p for p in op.parameters() if p.requires_grad]
    assert params and all(p.grad is None for p in params)
    op(torch.rand(1, 1, 12, 12)).square().mean().backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in params)
    assert not op.code.requires_grad and not op.prior.requires_grad


@pytest.mark.parametrize("bad", [2, 0, 130, 3.0, True, (3,), "5"])
def test_a_bad_kernel_size_names_the_argument(bad):
    with pytest.raises(ValueError, match="kernel_size must be an integer"):
        BlindBlur(bad)


def test_settings_and_state_round_trip_as_a_checkpoint_records_them():
    op = BlindBlur(6, "replicate", hidden=32, seed=3)
    with torch.no_grad():
        op.net[2].bias.add_(torch.linspace(-1, 1, 36))
    settings = physics_settings(op)
    assert settings["name"] == "blind_blur" and settings["kernel_size"] == [6, 6] and settings["hidden"] == 32
    back = from_config(settings)
    assert isinstance(back, BlindBlur) and back.padding == "replicate"
    assert torch.equal(back.kernel, op.kernel)
    with pytest.raises(ValueError, match="kernel_size"):
        from_config({"name": "blind_blur", "padding": "valid"})
