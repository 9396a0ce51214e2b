"""Blur: direct depthwise convolution against FFT, forward + backward, by kernel size.

Run:  OMP_NUM_THREADS=1 python -m pytest benchmarks/test_bench_blur.py --benchmark-only

A "valid" blur of a 3x256² image (what the deblur fit computes each step: the forward and the
gradient through it) with a K x K kernel, K in 5, 11, 15, 21, 31, 63, by each method; the
ratio direct / fft at each K is what ``dip.physics.blur.FFT_MIN_SIDE`` is set from.

Measured (Intel Xeon with AVX-512/AMX, 1 thread, a 2-core machine shared with other jobs;
min of 7 rounds, ms, direct / fft):  K=5 13.7 / 14.1; K=11 34.9 / 12.9; K=15 60.5 / 12.6;
K=21 102 / 13.0; K=31 110 / 13.9; K=63 507 / 11.6.  FFT costs the same for every K (a
circular convolution of the image's size), direct grows with K²: they cross between K=5 and
K=11, so ``FFT_MIN_SIDE = 9``.
"""
import os

import pytest
import torch

from dip.physics import Blur

torch.set_num_threads(int(os.environ.get("DIP_BENCH_THREADS", "1")))

SIZES = (5, 11, 15, 21, 31, 63)


@pytest.mark.parametrize("method", ["direct", "fft"])
@pytest.mark.parametrize("k", SIZES)
def test_bench_blur_valid_fwd_bwd(benchmark, k, method):
    op = Blur(torch.rand(k, k, generator=torch.Generator().manual_seed(k)), "valid", normalize=True, method=method)
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0), requires_grad=True)

    def step():
        x.grad = None
        op(x).square().sum().backward()

    benchmark.pedantic(step, rounds=7, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(threads=torch.get_num_threads(), kernel=k, method=method, shape=(1, 3, 256, 256))
