"""dip.runtime: allocator, threads, precision, layout helpers and the fast step's mechanics."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dip import runtime
from dip.models import skip

ROOT = Path(__file__).resolve().parents[1]


def _tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return skip(4, 3, num_channels_down=[8] * 3, num_channels_up=[8] * 3,
                num_channels_skip=[2] * 3, upsample_mode="bilinear", pad="reflection")


@pytest.mark.skipif(runtime.glibc_version() is None, reason="glibc only")
def test_configure_allocator_keeps_large_tensors_off_mmap():
    # process-wide and irreversible: run it in a child process
    code = ("import json; from dip import runtime; "
            "before = runtime.large_allocations_mmapped(); ok = runtime.configure_allocator(); "
            "after = runtime.large_allocations_mmapped(); "
            "print(json.dumps([before, ok, after]))")
    env = dict(os.environ,
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True, timeout=120)
    before, ok, after = json.loads(out.stdout.strip().splitlines()[-1])
    assert ok is True
    assert before is True  # glibc's default: a 64 MiB tensor gets its own mmap
    assert after is False  # after mallopt it comes from the heap


@pytest.mark.parametrize("kwargs, error", [
    ({"mmap_threshold": -1}, ValueError),
    ({"trim_threshold": 1 << 31}, ValueError),
    ({"mmap_threshold": 1.5}, TypeError),
])
def test_configure_allocator_rejects_bad_values(kwargs, error):
    with pytest.raises(error, match="threshold"):
        runtime.configure_allocator(**kwargs)


def test_autocast_context_dtypes():
    a, b = torch.randn(8, 8), torch.randn(8, 8)
    with runtime.autocast_context("bf16", "cpu"):
        assert torch.mm(a, b).dtype == torch.bfloat16
    with runtime.autocast_context("fp32", torch.device("cpu")):
        assert torch.mm(a, b).dtype == torch.float32


def test_bad_precision_is_rejected():
    with pytest.raises(ValueError, match="precision must be one of"):
        runtime.autocast_context("fp16", "cpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        runtime.FastStep(_tiny_net(), torch.rand(1, 4, 32, 32), lambda o: o.mean(),
                         precision="half")


def test_set_threads():
    before = torch.get_num_threads()
    try:
        assert runtime.set_threads(1) == 1 == torch.get_num_threads()
        assert runtime.set_threads(None) == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="threads must be >= 1"):
        runtime.set_threads(0)
    with pytest.raises(TypeError, match="threads must be an int"):
        runtime.set_threads("2")


def test_bf16_is_native_follows_cpu_features(monkeypatch):
    monkeypatch.delenv("DIP_BF16_NATIVE", raising=False)  # tests/conftest.py forces it off
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert runtime.bf16_is_native("cpu") is False
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert runtime.bf16_is_native("cpu") is True


def test_use_channels_last(monkeypatch):
    net = _tiny_net()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert runtime.use_channels_last(net, "fp32") is False
    assert runtime.use_channels_last(net, "bf16") is True
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert runtime.use_channels_last(net, "fp32") is True
    assert runtime.use_channels_last(net, "fp32", optimizer="lbfgs") is False
    assert runtime.use_channels_last(nn.Linear(3, 3), "bf16") is False


def test_make_adam_is_fused_on_cpu():
    opt = runtime.make_adam([nn.Parameter(torch.zeros(3))], lr=0.1)
    assert opt.defaults["fused"] is True


def test_fast_step_reuses_buffers_and_sets_grads_to_none():
    net = _tiny_net()
    z = torch.rand(1, 4, 32, 32) * 0.1
    y = torch.rand(1, 3, 32, 32)
    step = runtime.FastStep(net, z, lambda o: F.mse_loss(o, y[:, :, 2:22, 3:27]),
                            reg_noise_std=0.05, channels_last=True, crop=(2, 3, 20, 24))
    ptrs = (step.noise.data_ptr(), step.net_input.data_ptr())
    noises = []
    for _ in range(2):
        loss, out = step()
        noises.append(step.noise.clone())
        assert (step.noise.data_ptr(), step.net_input.data_ptr()) == ptrs
    assert out.shape == (1, 3, 20, 24) and out.dtype == torch.float32
    assert loss.dim() == 0 and not loss.requires_grad
    assert not torch.equal(noises[0], noises[1])  # fresh noise every step
    torch.testing.assert_close(step.net_input, z + step.noise)
    assert step.net_input.is_contiguous(memory_format=torch.channels_last)
    step.optimizer.zero_grad(set_to_none=True)
    before = [p.detach().clone() for p in step.params]
    step.closure()  # zero_grad inside sets grads to None, then backward fills them
    assert all(p.grad is not None for p in step.params)
    assert all(torch.equal(a, p) for a, p in zip(before, step.params, strict=True))  # no update yet


def test_fast_step_can_optimise_the_input():
    net = _tiny_net()
    z = (torch.rand(1, 4, 32, 32) * 0.1).requires_grad_()
    y = torch.rand(1, 3, 32, 32)
    z0 = z.detach().clone()
    step = runtime.FastStep(net, z, lambda o: F.mse_loss(o, y), reg_noise_std=0.05,
                            params=[z, *net.parameters()], channels_last=False)
    step()
    assert z.grad is not None and not torch.equal(z.detach(), z0)


# ----------------------------------------------------------------------------- forced choices
@pytest.mark.parametrize("value, expected", [("1", True), ("0", False), ("on", True), ("off", False)])
def test_channels_last_and_native_bf16_can_be_forced_on_any_cpu(monkeypatch, value, expected):
    monkeypatch.setenv("DIP_CHANNELS_LAST", value)
    monkeypatch.setenv("DIP_BF16_NATIVE", value)
    net = _tiny_net()
    assert runtime.use_channels_last(net, "fp32") is expected
    assert runtime.use_channels_last(net, "bf16") is expected
    assert runtime.use_channels_last(net, "fp32", optimizer="lbfgs") is False  # LBFGS needs NCHW
    assert runtime.bf16_is_native("cpu") is expected


def test_auto_or_unset_switches_decide_from_the_hardware(monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    monkeypatch.setenv("DIP_CHANNELS_LAST", "auto")
    assert runtime.use_channels_last(_tiny_net(), "fp32") is False
    monkeypatch.delenv("DIP_CHANNELS_LAST")
    assert runtime.use_channels_last(_tiny_net(), "bf16") is True


def test_a_bad_switch_value_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("DIP_CHANNELS_LAST", "maybe")
    with pytest.raises(ValueError, match="DIP_CHANNELS_LAST must be 0, 1 or auto, got 'maybe'"):
        runtime.use_channels_last(_tiny_net(), "fp32")


# ----------------------------------------------------------------------------- optimiser state
def _adam_state_after_steps(param: torch.Tensor, grads, fused: bool = True):
    opt = torch.optim.Adam([param], lr=0.01, fused=fused)
    for g in grads:
        param.grad = g.clone(memory_format=torch.preserve_format)
        opt.step()
    return opt


@pytest.mark.parametrize("fused", [True, False])
def test_restored_adam_state_takes_the_parameter_layout(fused):
    """The fused-Adam hazard: a channels_last parameter whose moments come back contiguous (as a
    checkpoint stores them) must still take exactly the uninterrupted step."""
    gen = torch.Generator().manual_seed(3)
    shape = (8, 8, 3, 3)
    grads = [torch.randn(shape, generator=gen).contiguous(memory_format=torch.channels_last) for _ in range(3)]
    start = torch.randn(shape, generator=gen).contiguous(memory_format=torch.channels_last)

    straight = nn.Parameter(start.clone(memory_format=torch.preserve_format))
    _adam_state_after_steps(straight, grads, fused)

    first = nn.Parameter(start.clone(memory_format=torch.preserve_format))
    opt = _adam_state_after_steps(first, grads[:2], fused)
    saved = opt.state_dict()
    for entry in saved["state"].values():  # what a checkpoint file holds: contiguous copies
        for key, value in entry.items():
            entry[key] = value.contiguous().clone()
    saved_copy = {k: v.clone() for k, v in saved["state"][0].items()}

    resumed = nn.Parameter(first.detach().clone(memory_format=torch.preserve_format))
    opt2 = torch.optim.Adam([resumed], lr=0.01, fused=fused)
    runtime.load_optimizer_state(opt2, saved)
    for key in ("exp_avg", "exp_avg_sq"):
        assert opt2.state[resumed][key].stride() == resumed.stride()
    resumed.grad = grads[2].clone(memory_format=torch.preserve_format)
    opt2.step()
    assert torch.equal(resumed, straight)
    for key, value in saved["state"][0].items():  # the caller's state was not updated in place
        assert torch.equal(value, saved_copy[key])
