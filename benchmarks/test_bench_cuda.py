"""GPU timings: the dip.ops kernels and one optimisation step, against their baselines.

Skipped without CUDA. Run on a GPU machine (the summary tables at the end):

    PYTHONPATH=. python -m pytest benchmarks/test_bench_cuda.py -q -s

Ops (forward + backward, CUDA events, mean of ``DIP_BENCH_CUDA_ITERS`` calls after warm-up),
each timed in the same run as:
  native     the public dip.ops op (the CUDA kernels),
  reference  the pure-PyTorch specification (dip.ops.*_reference),
  original   the original code's construction (dense C x C conv downsampler, mse(out*m, y*m),
             nn.BatchNorm2d + nn.LeakyReLU).
Sizes as in benchmarks/test_bench_ops.py: downsampler x4 on 3 x 512², masked MSE on 3 x 512²,
BN + LeakyReLU on 128 x 256² (NCHW and channels_last).

Step (forward, loss, backward, Adam) of the denoise recipe's generator at 256² and 512²
(``DIP_BENCH_SIZES``):
  original           the original's step (tests/oracle.py): NCHW fp32, per-parameter Adam, zero-filled grads,
  fast-fp32          dip.runtime.FastStep (channels_last on CUDA, fused Adam, native fused BN),
  fast-bf16          the same under bf16 autocast (fp32 weights, loss and output),
  graph-fp32/-bf16   the fast step captured once as a CUDA graph and replayed (reg noise drawn
                     outside the graph into its static buffer; Adam fused and capturable).
cuDNN's defaults are kept (TF32 allowed for fp32 convolutions, as torch ships).
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

import dip.ops as ops
from benchmarks import test_bench_step as cpu_step
from dip import runtime
from dip.physics.kernels import downsampler_taps
from tests import oracle

pytestmark = pytest.mark.cuda

CUDA = torch.device("cuda")
ITERS = int(os.environ.get("DIP_BENCH_CUDA_ITERS", "50"))
SIZES = tuple(int(s) for s in os.environ.get("DIP_BENCH_SIZES", "256,512").split(","))
STEP_ITERS = int(os.environ.get("DIP_BENCH_CUDA_STEPS", "20"))


def _time_ms(fn, iters: int, warmup: int = 3) -> float:
    """Mean GPU milliseconds per call of ``fn`` over ``iters`` calls (CUDA events)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / iters


def _bench(benchmark, cuda_results, group: str, name: str, fn, iters: int, extra=None) -> float:
    ms = {}
    benchmark.pedantic(lambda: ms.setdefault("v", _time_ms(fn, iters)), rounds=1, iterations=1)
    row = {"ms": ms["v"], "device": torch.cuda.get_device_name(), **(extra or {})}
    cuda_results[(group, name)] = row
    benchmark.extra_info.update(row)
    return ms["v"]


# ----------------------------------------------------------------------------- ops
def _downsample_cases():
    taps = torch.from_numpy(downsampler_taps(4, "lanczos2", 0.5)).float().to(CUDA)
    x = torch.rand(1, 3, 512, 512, device=CUDA, requires_grad=True)
    dense = oracle.Downsampler(3, 4, "lanczos2").to(CUDA).requires_grad_(False)  # no weight gradient

    def native():
        ops.downsample(x, taps, 4).sum().backward()

    def reference():
        ops.downsample_reference(x, taps, 4).sum().backward()

    def original():
        dense(x).sum().backward()

    return {"native": native, "reference": reference, "original": original}


def _masked_mse_cases():
    x = torch.rand(1, 3, 512, 512, device=CUDA, requires_grad=True)
    y = torch.rand(1, 3, 512, 512, device=CUDA)
    m = (torch.rand(1, 1, 512, 512, device=CUDA) > 0.5).float()
    return {"native": lambda: ops.masked_mse(x, y, m).backward(),
            "reference": lambda: ops.masked_mse_reference(x, y, m).backward(),
            "original": lambda: F.mse_loss(x * m, y * m).backward()}


def _bn_cases(channels_last: bool):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(1, 128, 256, 256, device=CUDA).contiguous(memory_format=fmt).requires_grad_(True)
    g = torch.randn_like(x)
    bn = torch.nn.BatchNorm2d(128).to(CUDA).train()
    act = torch.nn.LeakyReLU(0.2)

    def native():
        ops.bn_leaky_relu(x, bn.weight, bn.bias, bn.running_mean, bn.running_var).backward(g)

    def reference():
        ops.bn_leaky_relu_reference(x, bn.weight, bn.bias, bn.running_mean, bn.running_var).backward(g)

    def original():
        act(bn(x)).backward(g)

    return {"native": native, "reference": reference, "original": original}


OP_CASES = {"downsample x4 3x512²": _downsample_cases, "masked_mse 3x512²": _masked_mse_cases,
            "bn_leaky_relu 128x256² NCHW": lambda: _bn_cases(False),
            "bn_leaky_relu 128x256² NHWC": lambda: _bn_cases(True)}


@pytest.mark.parametrize("case", list(OP_CASES))
def test_op(benchmark, cuda_results, case):
    if not ops.has_native():
        pytest.skip(f"native library unavailable: {ops.native_status()}")
    fns = OP_CASES[case]()
    times = {name: _time_ms(fn, ITERS) for name, fn in fns.items()}  # warm every path first
    for name, fn in fns.items():
        times[name] = _time_ms(fn, ITERS)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    for name, ms in times.items():
        cuda_results[(f"op: {case}", name)] = {"ms": ms, "device": torch.cuda.get_device_name()}
    benchmark.extra_info.update({name: ms for name, ms in times.items()})


# ----------------------------------------------------------------------------- step
class GraphStep:
    """A :class:`dip.runtime.FastStep` captured once as a CUDA graph, then replayed.

    Three eager steps warm up on a side stream (they are real steps), then forward, loss,
    backward and Adam (fused, capturable) are captured; each call draws the reg noise into the
    static noise buffer outside the graph and replays it. Returns (loss, out), the graph's
    static tensors (overwritten by the next call).
    """

    def __init__(self, fast: runtime.FastStep) -> None:
        self.fast = fast
        fast.optimizer = torch.optim.Adam(fast.params, lr=fast.optimizer.param_groups[0]["lr"],
                                          fused=True, capturable=True)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                fast()
        torch.cuda.current_stream().wait_stream(side)
        fast.optimizer.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            net_input = (torch.add(fast.z, fast.noise, out=fast.net_input)
                         if fast.noise is not None else fast.z)
            with torch.autocast("cuda", torch.bfloat16, enabled=fast.precision == "bf16",
                                cache_enabled=False):
                out = fast.generator(net_input)
            out = out.float()
            self.loss = fast.loss_fn(out)
            self.loss.backward()
            fast.optimizer.step()
            self.out = out.detach()

    def __call__(self):
        if self.fast.noise is not None:
            self.fast.noise.normal_(0.0, self.fast.reg_noise_std, generator=self.fast.rng)
        self.graph.replay()
        return self.loss, self.out


def _make_step(config: str, size: int):
    torch.manual_seed(0)
    z, y = cpu_step._data(size)
    z, y = z.to(CUDA), y.to(CUDA)
    if config == "original":
        net = oracle.denoise_skip(cpu_step.INPUT_DEPTH).to(CUDA)
        step = oracle.OriginalStep(net, z, y, lr=cpu_step.LR, reg_noise_std=cpu_step.REG_NOISE)
        return step.step
    precision = config.split("-")[1]
    rng = torch.Generator(device=CUDA)
    rng.manual_seed(0)
    fast = runtime.FastStep(cpu_step.recipe_generator().to(CUDA), z, lambda out: F.mse_loss(out, y),
                            lr=cpu_step.LR, reg_noise_std=cpu_step.REG_NOISE, precision=precision,
                            generator_rng=rng)
    return GraphStep(fast) if config.startswith("graph") else fast


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("config", ["original", "fast-fp32", "fast-bf16", "graph-fp32", "graph-bf16"])
def test_step(benchmark, cuda_results, size, config):
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    try:
        step = _make_step(config, size)
    except RuntimeError as exc:  # a capture that torch refuses is a result, not a crash
        cuda_results[(f"step {size}²", config)] = {"ms": float("nan"), "error": str(exc)[:200]}
        pytest.skip(f"{config} could not be built: {exc}")
    gflop = cpu_step.step_gflop("original" if config == "original" else "fast", size)
    ms = _bench(benchmark, cuda_results, f"step {size}²", config, step, STEP_ITERS,
                {"gflop": gflop})
    cuda_results[(f"step {size}²", config)].update(
        tflops=gflop / ms, peak_mib=torch.cuda.max_memory_allocated() / 2**20)
