"""K fits per step: one packed step (``dip.models.packed``) against K separate steps.

Run (one thread, 128², fp32 and bf16, K = 1 and 4, a few rounds):

    DIP_BENCH_THREADS=1 DIP_BENCH_PACK=1,4 DIP_BENCH_ROUNDS=4 PYTHONPATH=. \\
        python -m pytest benchmarks/test_bench_packed.py -q -s

One step = reg noise 1/30, forward, MSE loss, backward, Adam (lr 0.01) on the denoise
recipe's generator (the standard skip net, 32-channel code), through
:class:`dip.engine.FastStep` (its layout choice, fused Adam, bf16 autocast, native fused
BatchNorm + LeakyReLU), allocator configured. Configurations, for K members built from seeds
0..K-1, each member with its own code and target:

- ``separate``: K FastSteps, one per member, run one after the other (what K fits in a row
  cost per step);
- ``packed``: one FastStep on ``pack(members)`` with the code (1, 32K, H, W) and the loss the
  sum of the members' MSEs (each member's gradient is its own fit's);
- ``packed-loop`` (K > 1): the packed step with every grouped convolution computed as K plain
  convolutions on the members' channel slices (:class:`MemberLoopConv2d`); BatchNorm,
  activations, resampling and Adam stay packed. It tells whether the grouped kernels or the
  rest of the step decide the packed speed;
- ``packed-hybrid`` (K > 1): member loops only for the convolutions whose input side is at
  least ``DIP_BENCH_LOOP_MIN`` (default 64), grouped convolutions below (the deep levels,
  where grouped kernels measured faster per member than plain ones);
- ``packed-mm`` (K > 1): the packed step with every 1×1 convolution computed as K matrix
  products on the members' channel slices of the NHWC activation (:class:`MemberMatmul1x1`;
  the slices are strided matrices that BLAS reads in place); 3×3 convolutions stay grouped.

- ``floor``: the convolution floor of K separate steps (``benchmarks/conv_floor.py``'s
  :class:`ConvFloor`: every convolution of one member alone, forward + backward, run K times;
  nothing else of a step);
- ``packed-floor``: the same for the packed generator (its grouped convolutions, K members in
  each). Its ``x separate`` is the ceiling of packing on this machine: a packed step does at
  least its grouped convolutions, so no packed step can beat K separate steps by more, however
  little the rest of it costs. ``floor``'s ``x separate`` is how close the separate steps
  already are to their own floor.

``DIP_BENCH_CONFIGS`` picks configurations (comma list; "separate" is always measured, it is
the baseline); a suffix ``@nchw`` or ``@nhwc`` forces that layout (default: FastStep's choice,
:func:`dip.runtime.use_channels_last`), e.g. ``packed@nchw``.

The configurations take turns, one step each per round, in an order that rotates, so that a changing machine load hits
them alike. Reported (summary at the end, from benchmarks/conftest.py): median ms per step,
ms per member-step, and the ratio K-separate ms / this ms (> 1: packing pays).

Measured (Intel Xeon, AVX-512 + AMX, torch capability "AVX512", 1 thread, 128², 5 rounds, on
a machine shared with other jobs (load 4-5 on 2 cores: absolute times are inflated, ratios are
same-run), x separate of K = 4 over three or four runs; K = 1 packed vs separate 1.03-1.05 with
the rotating order):

- bf16: packed 1.24x, 1.26x, 1.41x (about 1.13-1.24 s against 1.42-1.60 s); packed-mm 1.03-1.11x;
  packed-loop 0.71-0.77x; packed-hybrid 0.72-0.82x.
- fp32: packed 0.87x, 0.88x, 0.96x, 1.00x (no gain); packed-loop 0.91-0.98x; packed-hybrid 0.87-0.91x;
  packed-mm 0.88-0.99x; packed NCHW 0.53x (and K separate steps NCHW 0.86x).

Where the time goes (torch.profiler, K = 4, self time per step): the convolutions cost about the
same packed and separate in bf16 (forward 228 vs 213 ms, backward 513 vs 501 ms) and 16 % more
packed in fp32 (630 vs 539, 1489 vs 1289 ms); packing saves elsewhere: bilinear-upsample
backward (149 ms fp32, 211 ms bf16 separate; under 16 ms packed), BatchNorm, autocast's weight
casts (copy_), per-op overhead (1344 → 331 copy_ calls in bf16). One layer at a time (K = 4
grouped against 4 plain convolutions, forward + backward, channels_last): fp32 3×3 0.78-0.90x
from 128² to 16², 1.17x at 8², 1×1 at 128² 0.41-0.54x; bf16 3×3 0.84x at 128², 0.86x at 64²,
1.05x at 32², 1.59x at 16², 1×1 0.75-0.93x. ``torch.func.vmap`` over stacked weights is no
alternative: its convolution with batched weights runs as the same grouped convolution
(``mkldnn_convolution`` with a (1, 512, H, W) input and (512, 128, 3, 3) weight for K = 4).

Environment: ``DIP_BENCH_SIZES`` (default 128), ``DIP_BENCH_PACK`` (K values, default 1,2,4),
``DIP_BENCH_PRECISIONS`` (default fp32,bf16; bf16 only where the CPU has bf16 arithmetic
unless ``DIP_BENCH_EMULATED_BF16=1``), ``DIP_BENCH_THREADS`` (comma list, default 1,2),
``DIP_BENCH_ROUNDS`` (default 5), ``DIP_BENCH_IMAGE_STEPS`` (default the denoise recipe's step
budget, 3000: the summary's images per hour are K images every that many steps, i.e.
3600 s x K / (steps x s per step); an auto-stopped fit that ends earlier restores more).

The ceiling (``packed-floor``), AMD EPYC Zen 4 (AVX512-BF16, no AMX), K = 4, 5 rounds, one
run, x separate at 2 threads (1 thread): bf16 64² 1.76x (1.45x), 128² 1.30x (1.16x), 256²
1.12x (1.06x); fp32 1.55x (1.18x), 1.18x (1.04x), 1.05x (1.00x); the packed step itself bf16
1.37x, 1.07x, 0.92x at 2 threads. From 128² the separate steps run at 80-96 % of their own
floor (``floor``) and grouped convolutions are no faster per member than plain ones, so there
is little for packing to win on this CPU.

Images per hour (item 5b), one run, bf16 and 2 threads, packs of 1 to 16 at 64², 128² and 256²:

    DIP_BENCH_SIZES=64,128,256 DIP_BENCH_PACK=1,2,4,8,16 DIP_BENCH_PRECISIONS=bf16 \\
        DIP_BENCH_THREADS=2 DIP_BENCH_CONFIGS=packed DIP_BENCH_ROUNDS=3 PYTHONPATH=. \\
        python -m pytest benchmarks/test_bench_packed.py -q -s
"""
from __future__ import annotations

import os
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dip.models
import dip.recipes
from benchmarks.conv_floor import ConvFloor
from dip import runtime
from dip.engine import FastStep
from dip.models.packed import pack


def _ints(name: str, default: str) -> list[int]:
    return [int(s) for s in os.environ.get(name, default).split(",")]


SIZES = _ints("DIP_BENCH_SIZES", "128")
KS = _ints("DIP_BENCH_PACK", "1,2,4")
THREADS = _ints("DIP_BENCH_THREADS", "1,2")
PRECISIONS = os.environ.get("DIP_BENCH_PRECISIONS", "fp32,bf16").split(",")
ROUNDS = int(os.environ.get("DIP_BENCH_ROUNDS", "5"))
CONFIGS = os.environ.get("DIP_BENCH_CONFIGS", "packed,packed-loop,packed-hybrid,packed-mm").split(",")
LOOP_MIN = int(os.environ.get("DIP_BENCH_LOOP_MIN", "64"))
IMAGE_STEPS = int(os.environ.get("DIP_BENCH_IMAGE_STEPS", dip.recipes.get("denoise").fit.steps))
LR = 0.01
REG_NOISE = 1.0 / 30
INPUT_DEPTH = 32


class MemberLoopConv2d(nn.Module):
    """A packed (grouped, groups = K·g) ``nn.Conv2d`` computed as K convolutions of the
    members' channel slices with their weight slices; same parameters (names, shapes) and
    function. (N, K·C_in, H, W) → (N, K·C_out, H', W')."""

    def __init__(self, conv: nn.Conv2d, members: int, min_side: int = 0) -> None:
        super().__init__()
        self.min_side = min_side  # smaller inputs: one grouped convolution
        self.weight = conv.weight
        self.bias = conv.bias
        self.members = members
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.groups = conv.groups // members

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < self.min_side:
            return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                            self.groups * self.members)
        xs = x.chunk(self.members, dim=1)
        ws = self.weight.chunk(self.members, dim=0)
        bs = self.bias.chunk(self.members, dim=0) if self.bias is not None else [None] * self.members
        fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) \
            else torch.contiguous_format
        outs = [F.conv2d(xi.contiguous(memory_format=fmt), wi, bi, self.stride, self.padding,
                         self.dilation, self.groups) for xi, wi, bi in zip(xs, ws, bs, strict=True)]
        return torch.cat(outs, dim=1)


class MemberMatmul1x1(nn.Module):
    """A packed 1×1 ``nn.Conv2d`` (stride 1, groups = K) computed as K matrix products on the
    members' channel slices of the NHWC view of the input; same parameters and function.
    (N, K·C_in, H, W) → (N, K·C_out, H, W), channels_last when the input is."""

    def __init__(self, conv: nn.Conv2d, members: int) -> None:
        super().__init__()
        self.weight = conv.weight
        self.bias = conv.bias
        self.members = members

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xh = x.permute(0, 2, 3, 1)  # (N, H, W, K·C_in): a view when x is channels_last
        c_in = x.shape[1] // self.members
        # the bf16 step runs without autocast (dip.engine.bf16 copies only nn.Conv/nn.Linear
        # weights): cast this module's fp32 weights to the input's dtype, as autocast would
        ws = self.weight.to(x.dtype).flatten(1).chunk(self.members, dim=0)
        bs = (self.bias.to(x.dtype).chunk(self.members, dim=0) if self.bias is not None
              else [None] * self.members)
        outs = [F.linear(xh[..., i * c_in:(i + 1) * c_in], ws[i], bs[i])
                for i in range(self.members)]
        return torch.cat(outs, dim=-1).permute(0, 3, 1, 2)


def _is_1x1(conv: nn.Conv2d) -> bool:
    return conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.padding == (0, 0)


def _loop_convs(module: nn.Module, members: int, min_side: int = 0, only_1x1: bool = False) -> None:
    """Replace the packed ``nn.Conv2d`` modules below ``module``: by :class:`MemberMatmul1x1`
    (the 1×1 ones) when ``only_1x1``, else by :class:`MemberLoopConv2d`."""
    for name, child in module.named_children():
        if type(child) is nn.Conv2d and only_1x1:
            if _is_1x1(child):
                setattr(module, name, MemberMatmul1x1(child, members))
        elif type(child) is nn.Conv2d:
            setattr(module, name, MemberLoopConv2d(child, members, min_side))
        else:
            _loop_convs(child, members, min_side, only_1x1)


def _member(seed: int) -> nn.Module:
    r = dip.recipes.get("denoise")
    torch.manual_seed(seed)
    return dip.models.build(**r.net, in_channels=r.input_depth, out_channels=3)


def _data(seed: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + seed)
    return (torch.rand(1, INPUT_DEPTH, size, size, generator=g) * 0.1,
            torch.rand(1, 3, size, size, generator=g))


def _fast_step(net: nn.Module, z: torch.Tensor, y: torch.Tensor, members: int,
               precision: str, channels_last: bool | None) -> FastStep:
    def loss_fn(out: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(out, y) * members  # = the sum of the members' own MSEs

    return FastStep(net, z, loss_fn, lr=LR, reg_noise_std=REG_NOISE, precision=precision,
                    channels_last=channels_last)


def make(config: str, k: int, size: int, precision: str):
    """A callable running one step of ``config`` (a name, optionally ``@nchw`` / ``@nhwc``)
    for K members."""
    data = [_data(i, size) for i in range(k)]
    config, _, layout = config.partition("@")
    channels_last = {"": None, "nchw": False, "nhwc": True}[layout]
    if config == "separate":
        steps = [_fast_step(_member(i), z, y, 1, precision, channels_last)
                 for i, (z, y) in enumerate(data)]

        def run() -> None:
            for step in steps:
                step()
        return run
    if config in ("floor", "packed-floor"):
        cl = runtime.use_channels_last(_member(0), precision) if channels_last is None else channels_last
        layout = "cl" if cl else "nchw"
        if config == "packed-floor":
            return ConvFloor(pack([_member(i) for i in range(k)]), torch.cat([z for z, _ in data], dim=1),
                             precision, layout)
        floor = ConvFloor(_member(0), data[0][0], precision, layout)

        def run_floor() -> None:
            for _ in range(k):
                floor()
        return run_floor
    net = pack([_member(i) for i in range(k)])
    if config in ("packed-loop", "packed-hybrid"):
        _loop_convs(net, k, LOOP_MIN if config == "packed-hybrid" else 0)
    elif config == "packed-mm":
        _loop_convs(net, k, only_1x1=True)
    z = torch.cat([z for z, _ in data], dim=1)
    y = torch.cat([y for _, y in data], dim=1)
    return _fast_step(net, z, y, k, precision, channels_last)


_CASES = [(size, precision, threads, k) for size in SIZES for precision in PRECISIONS
          for threads in THREADS for k in KS]


@pytest.mark.parametrize(("size", "precision", "threads", "k"), _CASES)
def test_packed_step(benchmark, packed_results, size, precision, threads, k):
    """separate and the chosen configurations (member-loop ones for K > 1 only) taking turns;
    the benchmark times a round."""
    if precision == "bf16" and not runtime.bf16_is_native("cpu") \
            and os.environ.get("DIP_BENCH_EMULATED_BF16") != "1":
        pytest.skip("bf16 is emulated on this CPU (DIP_BENCH_EMULATED_BF16=1 measures it)")
    runtime.configure_allocator()
    torch.set_num_threads(threads)
    configs = ["separate"] + [c for c in CONFIGS if c != "separate" and (k > 1 or not c.startswith(
        ("packed-loop", "packed-hybrid", "packed-mm")))]
    steps = {c: make(c, k, size, precision) for c in configs}
    for step in steps.values():  # warm-up: first-call allocations and kernel selection
        step()
    times: dict[str, list[float]] = {c: [] for c in configs}

    turn = [0]

    def one_round() -> None:  # each round starts one configuration later (no order bias)
        r = turn[0] % len(configs)
        turn[0] += 1
        for c in configs[r:] + configs[:r]:
            t = time.perf_counter()
            steps[c]()
            times[c].append(time.perf_counter() - t)

    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1)
    base = sorted(times["separate"])[len(times["separate"]) // 2]
    for c in configs:
        ms = sorted(times[c])[len(times[c]) // 2] * 1e3
        row = {"ms": ms, "ms_per_member": ms / k, "x_separate": base * 1e3 / ms,
               "images_per_hour": 3600.0 * k / (IMAGE_STEPS * ms / 1e3), "image_steps": IMAGE_STEPS,
               "channels_last": runtime.use_channels_last(_member(0), precision),
               "cpu": torch.backends.cpu.get_cpu_capability(),
               "times_ms": [round(t * 1e3, 1) for t in times[c]]}
        packed_results[(size, precision, threads, k, c)] = row
        benchmark.extra_info[c] = row
