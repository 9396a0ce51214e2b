"""Forward+backward timings of the dip.ops operators against their baselines, one thread.

For each op three implementations are timed in the same process and the same run:
  native    the public dip.ops op (torch.ops.dip kernels when the library is loaded),
  reference the pure-PyTorch specification (dip.ops.*_reference),
  original  the original code's construction:
            downsampler  ReplicationPad2d + dense C x C conv whose weight is the 2-D Lanczos
                         kernel on the channel diagonal (x4 on a 3 x 512 x 512 image),
            masked MSE   F.mse_loss(out * m, y * m) (3 x 512 x 512),
            BN + act     nn.BatchNorm2d(128) + nn.LeakyReLU(0.2) in training mode (128 x 256^2).
Targets (issue 4): downsampler >= 10x, masked MSE >= 2x, bn_leaky_relu >= 2x the original.

``test_bn_leaky_relu_channels`` times the channel counts of the skip generator other than 128
(4: the skip branches; 132: the BatchNorm after each concatenation, fused with slope 1, no
activation) in channels_last, float32 and bfloat16, on one and on two threads
(``DIP_BENCH_OPS_THREADS``, default "1,2"): the native op against torch's BatchNorm2d (+
LeakyReLU for 4 channels) in the same run.

glibc would mmap (and page-fault afresh) every tensor of >= 32 MiB; the module raises the mmap
threshold once at import so both sides are timed with reused heap memory. Ratios: compare the
rows of one group in the pytest-benchmark table (or --benchmark-json).
The CPU kernel copy in use is recorded with each result (``cpu_isa``); set DIP_CPU_ISA=avx2 or
baseline to time another copy the CPU supports.
Run: OMP_NUM_THREADS=1 pytest benchmarks/test_bench_ops.py --benchmark-only
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

import pytest
import torch
import torch.nn.functional as F

import dip.ops as ops
from tests import oracle

THREADS = 1
CHANNEL_THREADS = [int(t) for t in os.environ.get("DIP_BENCH_OPS_THREADS", "1,2").split(",")]
ROUNDS = 25  # fixed, generous round counts: the minimum is robust on a busy machine
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def _raise_mmap_threshold(nbytes: int = 1 << 30) -> bool:
    """Keeps large CPU tensors on the heap (glibc only); returns whether it took effect."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, nbytes)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, 2 * nbytes))
    except (OSError, AttributeError):
        return False


MMAP_RAISED = _raise_mmap_threshold()


@pytest.fixture(autouse=True)
def _one_thread(benchmark):
    previous = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    benchmark.extra_info.update(threads=THREADS, native=ops.has_native(),
                                cpu_isa=ops.build_info().get("cpu_isa"),
                                mmap_threshold_raised=MMAP_RAISED)
    yield
    torch.set_num_threads(previous)


def _fwd_bwd(fn, *inputs):
    def step():
        out = fn(*inputs)
        grads = torch.autograd.grad(out, [t for t in inputs if t.requires_grad],
                                    torch.ones_like(out))
        return out, grads
    return step


# ----------------------------------------------------------------------------- downsample
@pytest.mark.benchmark(group="downsample x4 3x512^2 fwd+bwd")
@pytest.mark.parametrize("impl", ["native", "reference", "original"])
def test_downsample(benchmark, impl):
    taps = oracle.lanczos_taps(4).float()
    x = torch.rand(1, 3, 512, 512, requires_grad=True)
    fn = {"native": lambda t: ops.downsample(t, taps, 4),
          "reference": lambda t: ops.downsample_reference(t, taps, 4),
          # the cheaper variant of the original: no gradient for the fixed conv weight
          "original": oracle.Downsampler(3, 4).requires_grad_(False)}[impl]
    out, _ = benchmark.pedantic(_fwd_bwd(fn, x), rounds=ROUNDS, warmup_rounds=2)
    assert out.shape == (1, 3, 128, 128)


# ----------------------------------------------------------------------------- masked MSE
@pytest.mark.benchmark(group="masked_mse 3x512^2 fwd+bwd")
@pytest.mark.parametrize("impl", ["native", "reference", "original"])
def test_masked_mse(benchmark, impl):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 512, 512, generator=g, requires_grad=True)
    y = torch.rand(1, 3, 512, 512, generator=g)
    m = (torch.rand(1, 3, 512, 512, generator=g) > 0.5).float()
    fn = {"native": lambda t: ops.masked_mse(t, y, m),
          "reference": lambda t: ops.masked_mse_reference(t, y, m),
          "original": lambda t: F.mse_loss(t * m, y * m)}[impl]
    out, _ = benchmark.pedantic(_fwd_bwd(fn, x), rounds=4 * ROUNDS, warmup_rounds=2)
    assert out.dim() == 0


# ----------------------------------------------------------------------------- BN + LeakyReLU
@pytest.mark.benchmark(group="bn_leaky_relu 128x256^2 fwd+bwd")
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("impl", ["native", "reference", "original"])
def test_bn_leaky_relu(benchmark, impl, layout):
    bn = torch.nn.BatchNorm2d(128)
    act = torch.nn.LeakyReLU(0.2)
    x = torch.randn(1, 128, 256, 256)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    fn = {"native": lambda t, *_: ops.bn_leaky_relu(t, bn.weight, bn.bias, bn.running_mean,
                                                bn.running_var),
          "reference": lambda t, *_: ops.bn_leaky_relu_reference(t, bn.weight, bn.bias,
                                                             bn.running_mean, bn.running_var),
          "original": lambda t, *_: act(bn(t))}[impl]
    out, grads = benchmark.pedantic(_fwd_bwd(fn, x, bn.weight, bn.bias), rounds=ROUNDS // 2,
                                    warmup_rounds=1)
    assert out.shape == x.shape and len(grads) == 3


@pytest.mark.benchmark(group="bn_leaky_relu channels_last 256^2 fwd+bwd")
@pytest.mark.parametrize("threads", CHANNEL_THREADS)
@pytest.mark.parametrize("channels", [4, 132])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("impl", ["native", "original"])
def test_bn_leaky_relu_channels(benchmark, impl, dtype, channels, threads):
    torch.set_num_threads(threads)  # the autouse fixture sets the thread count back
    benchmark.extra_info.update(threads=threads)
    bn = torch.nn.BatchNorm2d(channels)
    slope = 0.2 if channels == 4 else 1.0
    act = torch.nn.LeakyReLU(slope)
    x = torch.randn(1, channels, 256, 256).to(getattr(torch, dtype))
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    weight = bn.weight.detach().to(x.dtype).requires_grad_(True)  # bf16: BNAct's cast
    bias = bn.bias.detach().to(x.dtype).requires_grad_(True)
    fn = {"native": lambda t, w, b: ops.bn_leaky_relu(t, w, b, bn.running_mean, bn.running_var,
                                                      negative_slope=slope),
          # torch's bf16 BatchNorm takes float32 parameters (as the standard BNAct path)
          "original": lambda t, *_: act(bn(t))}[impl]
    inputs = (x, weight, bias) if impl == "native" else (x, bn.weight, bn.bias)
    out, grads = benchmark.pedantic(_fwd_bwd(fn, *inputs), rounds=ROUNDS // 2, warmup_rounds=1)
    assert out.shape == x.shape and len(grads) == 3
