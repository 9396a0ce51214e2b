"""The fast step (dip.runtime.FastStep + dip.models.skip) keeps the original step's semantics.

The reference is the original's step in tests/oracle.py (nested Sequentials,
centre-crop Concat, zero-filled gradients, allocating reg noise, single-tensor Adam, NCHW).

Why the 10-step comparison runs NCHW on a 3-scale network: DIP's early Adam steps are chaotic.
Several parameters have (near-)zero true gradients (conv biases in front of BatchNorm, a
BatchNorm bias in front of conv + BatchNorm), so their gradients are rounding noise and Adam,
which divides by the gradient's own magnitude, moves them by ±lr with a random sign. On the
original-style step itself, a 1e-7 relative change of z changes the output by ~5e-2 after 10
steps at lr 0.01 on a 5-scale network at 64² (deepest level 2x2). Any change in the order of
float operations (channels_last convolutions) has the same effect, so channels_last is checked
on one step's output, loss and gradients instead, which is where it could be wrong.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dip.models import skip
from dip.models.common import Bilinear2x, BNAct
from dip.runtime import FastStep, make_adam
from tests import oracle

SIZE = 64
DEPTH = 8
KW = dict(num_channels_down=[16] * 3, num_channels_up=[16] * 3, num_channels_skip=[4] * 3,
          upsample_mode="bilinear", pad="reflection")


def _pair(seed: int = 0):
    torch.manual_seed(seed)
    ref = oracle.skip(DEPTH, 3, **KW)
    net = skip(DEPTH, 3, **KW)
    oracle.copy_weights(ref, net)
    z = torch.rand(1, DEPTH, SIZE, SIZE) * 0.1
    y = torch.rand(1, 3, SIZE, SIZE)
    return ref, net, z, y


def _standard_ops(net):
    """Switch ``net``'s native blocks to torch's own ops (the original's rounding)."""
    for m in net.modules():
        if isinstance(m, BNAct):
            m.fused = False
        if isinstance(m, Bilinear2x):
            m.native = False


def test_copy_weights_makes_identical_networks():
    ref, net, z, _ = _pair()
    # bitwise with torch's ops; the native fused BatchNorm + LeakyReLU and upsampler round differently
    torch.testing.assert_close(net(z), ref(z), rtol=0, atol=1e-5)
    _standard_ops(net)
    torch.testing.assert_close(net(z), ref(z), rtol=0, atol=0)


def test_copy_weights_rejects_other_architecture():
    ref = oracle.skip(DEPTH, 3, **KW)
    other = skip(DEPTH, 3, num_channels_down=[8] * 3, num_channels_up=[8] * 3,
                 num_channels_skip=[4] * 3)
    with pytest.raises(ValueError, match="shape mismatch"):
        oracle.copy_weights(ref, other)


@pytest.mark.parametrize("masked", [False, True])
def test_ten_fp32_steps_match_original(masked):
    """Structure, in-place reg noise, gradients set to None, loss: 10 steps, same weights and
    noise, NCHW, standard BatchNorm and foreach Adam (bitwise the original's arithmetic)."""
    ref, net, z, y = _pair()
    _standard_ops(net)
    mask = (torch.rand(1, 1, SIZE, SIZE) > 0.5).float() if masked else None
    original = oracle.OriginalStep(ref, z, y, lr=0.01, reg_noise_std=1 / 30, mask=mask)
    if masked:
        def loss_fn(out):
            return F.mse_loss(out * mask, y * mask)
    else:
        def loss_fn(out):
            return F.mse_loss(out, y)
    adam = torch.optim.Adam(list(net.parameters()), lr=0.01, foreach=True)
    fast = FastStep(net, z, loss_fn, lr=0.01, reg_noise_std=1 / 30, precision="fp32",
                    channels_last=False, generator_rng=torch.Generator().manual_seed(7),
                    optimizer=adam)
    torch.manual_seed(7)  # the original draws its noise from the global generator
    for _ in range(10):
        loss_ref = original.step()
        loss, out = fast()
        # same reg noise, drawn in place instead of allocated
        torch.testing.assert_close(fast.net_input, original.net_input, rtol=0, atol=1e-7)
    assert (out - original.out).abs().max().item() <= 1e-4
    assert abs(loss.item() - loss_ref.item()) <= 1e-5


def test_fast_adam_matches_original_adam():
    """The fast step's Adam (fused where available) against the original's single-tensor Adam:
    10 updates from the same gradients."""
    torch.manual_seed(0)
    a = [torch.randn(16, 8, 3, 3, requires_grad=True), torch.randn(16, requires_grad=True)]
    b = [t.detach().clone().requires_grad_() for t in a]
    ref = torch.optim.Adam(a, lr=0.01, foreach=False)
    fast = make_adam(b, lr=0.01)
    for _ in range(10):
        grads = [torch.randn_like(t) for t in a]
        ref.zero_grad(set_to_none=False)
        fast.zero_grad(set_to_none=True)
        for t, u, g in zip(a, b, grads, strict=True):
            t.grad = t.grad + g if t.grad is not None else g.clone()
            u.grad = g.clone()
        ref.step()
        fast.step()
    for t, u in zip(a, b, strict=True):
        torch.testing.assert_close(u, t, rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_channels_last_step_matches_original_step(dtype):
    """channels_last (and the native fused BatchNorm + LeakyReLU when built) change the order of
    float operations: one step's output, loss and gradients agree with the original's, exactly
    in float64 and to rounding in float32. (torch's channels_last BatchNorm on the CPU is less
    accurate in float32 than its NCHW one, ~10x larger forward error, growing with mean/std:
    the float32 gradients differ by up to ~0.5 % of the largest gradient.)"""
    ref, net, z, y = _pair()
    ref, net, z, y = ref.to(dtype), net.to(dtype), z.to(dtype), y.to(dtype)
    original = oracle.OriginalStep(ref, z, y, lr=0.01, reg_noise_std=0.0)
    fast = FastStep(net, z, lambda out: F.mse_loss(out, y), lr=0.01, channels_last=True)
    assert fast.net_input.is_contiguous(memory_format=torch.channels_last)
    loss_ref = original.closure()
    loss, out = fast.closure()
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert out.dtype == dtype
    assert (out - original.out).abs().max().item() <= tol
    assert abs(loss.item() - loss_ref.item()) <= tol
    scale = max(p.grad.abs().max().item() for p in ref.parameters())
    rel = 1e-10 if dtype == torch.float64 else 1e-2
    for p_ref, p in zip(ref.parameters(), net.parameters(), strict=True):
        assert p.dim() != 4 or p.is_contiguous(memory_format=torch.channels_last)
        assert (p.grad - p_ref.grad).abs().max().item() <= rel * scale


def test_bf16_step_stays_close_to_fp32():
    """bf16 autocast: fp32 master weights and loss, fp32 output, close to the fp32 step."""
    _, net, z, y = _pair()
    fast = FastStep(net, z, lambda out: F.mse_loss(out, y), precision="bf16",
                    channels_last=True)
    loss, out = fast.closure()
    assert out.dtype == torch.float32 and loss.dtype == torch.float32
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in fast.params)
    with torch.no_grad():
        ref = net(z.contiguous(memory_format=torch.channels_last))
    assert 0 < (out - ref).abs().max().item() < 0.05


@pytest.mark.parametrize("optimize_input", [False, True])
def test_bf16_weight_copies_match_bf16_autocast(optimize_input):
    """The bf16 step with bf16 weight copies (the default) against the bf16 step under autocast
    (the reference): same loss and output to bf16 rounding, the same gradient in every master
    parameter (fp32, in its own layout) whose gradient is more than rounding noise (where the
    autocast step agrees with the fp32 step), and the same weights after an Adam step."""
    _, net, z, y = _pair()
    nets = [net] + [skip(DEPTH, 3, **KW) for _ in range(2)]
    codes = [z] + [z.clone() for _ in range(2)]
    steps = []
    for generator, code, precision, autocast in zip(nets, codes, ("bf16", "bf16", "fp32"), (False, True, False),
                                                    strict=True):
        generator.load_state_dict(net.state_dict())
        code.requires_grad_(optimize_input)
        params = [*generator.parameters(), *([code] if optimize_input else [])]
        steps.append(FastStep(generator, code, lambda out: F.mse_loss(out, y), precision=precision,
                              channels_last=True, params=params, bf16_autocast=autocast))
    copies, autocast, fp32 = steps
    assert copies.bf16_weights is not None and autocast.bf16_weights is None
    (loss, out), (loss_ref, out_ref), _ = copies.closure(), autocast.closure(), fp32.closure()
    assert out.dtype == torch.float32 and (out - out_ref).abs().max().item() < 2e-2
    assert abs(loss.item() - loss_ref.item()) <= 1e-2 * loss_ref.item()
    scale = max(p.grad.abs().max().item() for p in autocast.params)
    meaningful = 0
    for p, p_ref, p32 in zip(copies.params, autocast.params, fp32.params, strict=True):
        assert p.grad.dtype == torch.float32 and p.grad.stride() == p.stride()
        assert (p.grad - p_ref.grad).abs().max().item() <= 2e-2 * scale

        def cos(a, b):
            return F.cosine_similarity(a.grad.flatten(), b.grad.flatten(), dim=0).item()

        # conv biases before BatchNorm and the like: a true gradient of ~0, rounding noise only
        if cos(p_ref, p32) > 0.9:
            meaningful += 1
            assert cos(p, p_ref) > 0.99, tuple(p.shape)
    assert meaningful >= len(copies.params) // 2
    copies.optimizer.step()
    autocast.optimizer.step()
    # the next forward uses the updated masters (copies refreshed from them)
    out2, out2_ref = copies.forward(), autocast.forward()
    assert (out2 - out2_ref).abs().max().item() < 5e-2
    assert (out2 - out).abs().max().item() > 1e-3  # the step changed the output


@pytest.mark.parametrize("name", ["skip", "unet", "resnet", "decoder"])
def test_bf16_step_runs_every_generator_in_bf16(name):
    """Every generator of dip.models (transposed convolutions included) takes bf16 steps with
    weight copies: fp32 output, loss and gradients, weights that move."""
    from dip.engine import generator_geometry
    from dip.models import build

    torch.manual_seed(0)
    net = build(name, 3, 3)
    z = torch.rand(1, 3, *generator_geometry(net, (16, 16))[1])
    y = torch.rand(1, 3, *generator_geometry(net, (16, 16))[0])
    before = {k: v.clone() for k, v in net.state_dict().items()}
    fast = FastStep(net, z, lambda out: F.mse_loss(out, y), precision="bf16")
    loss, out = fast()
    assert out.dtype == torch.float32 and torch.isfinite(loss)
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert any(not torch.equal(before[k], v) for k, v in net.state_dict().items())
