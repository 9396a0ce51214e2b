"""One optimisation step of the denoise recipe's generator: the original against the fast path.

Run (2 threads, one size, the summary table at the end):

    DIP_BENCH_SIZES=256 PYTHONPATH=. python -m pytest benchmarks/test_bench_step.py -q -s

Configurations, each at 128², 256², 512² (``DIP_BENCH_SIZES`` picks a subset), one step =
forward, loss, backward, optimiser, with reg noise 1/30, lr 0.01, 32-channel input:

(a)  ``original``: the original's step (tests/oracle.py) as the original ships: glibc's default
     allocator.
(a') ``original+malloc``: the same step after :func:`dip.runtime.configure_allocator`.
(b)  ``fast-fp32`` / ``fast-bf16``: :class:`dip.runtime.FastStep` on ``dip.models`` (the
     recipe's generator): channels_last where :func:`dip.runtime.use_channels_last` says it
     pays (AVX-512 CPUs, bf16, CUDA), fused Adam, gradients set to None, in-place reg
     noise, bf16 autocast (fp32 weights and loss) for fast-bf16, native fused BatchNorm +
     LeakyReLU when ``dip.ops.has_native()``, allocator configured.
(c)  ``fast-fp32-torchbn`` (when ``dip.ops.has_native()``): fast-fp32 with torch's
     BatchNorm2d + LeakyReLU in place of the native fused op, to see what the fused op gains
     in a whole step.
(d)  ``floor-fp32-nchw``, ``floor-fp32-cl``, ``floor-bf16-cl`` (the last where bf16 is
     measured): the machine's convolution floor, every convolution of the generator alone,
     forward + backward, on inputs of its shapes (``benchmarks/conv_floor.py``); the summary's
     ``eff`` column is each configuration's GFLOP/s over the floor of its precision and layout.
(e)  ``command``: ``dip denoise`` with its defaults (precision auto), the whole command: the
     wall time of a 25-step run minus a 5-step run, over 20 (:class:`CommandStep`); its floor
     is that of the precision auto picks. ``DIP_BENCH_COMMAND=0`` leaves it out.

Every configuration runs in its own child process (:class:`ChildStep`): glibc's mmap threshold
cannot be set back once raised (setting it switches glibc's dynamic threshold off for the
process), so the as-shipped baseline needs a process that never configured it, and separate
processes give each configuration its own peak memory (ru_maxrss). The children take turns,
one step each per round, so that a changing machine load hits every configuration alike.

Reported per configuration (pytest-benchmark's table times whole rounds; the summary at the end,
from benchmarks/conftest.py, has the per-configuration numbers): median ms/step, GFLOP/step
(torch.utils.flop_counter on the meta device: convolutions forward + backward), GFLOP/s, ratio
to (a) and to (a') of the same size measured in the same rounds, peak RSS of the process (MiB,
model and torch included).

Threads: ``DIP_BENCH_THREADS`` (default 2). Rounds: ``DIP_BENCH_ROUNDS`` (default 8, 6, 3 at
128², 256², 512²). On a CPU without native bf16 (no AVX512-BF16/AMX)
fast-bf16 is emulated by oneDNN and runs several times slower than fp32; it is then measured
alone, one step, up to 256² (``DIP_BENCH_EMULATED_BF16=1`` puts it in the rounds).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import dip.models
import dip.ops
import dip.recipes
from benchmarks.conv_floor import ConvFloor
from dip import evaluate, images, runtime
from dip.models.common import BNAct
from tests import oracle

SIZES = tuple(int(s) for s in os.environ.get("DIP_BENCH_SIZES", "128,256,512").split(","))
# the original-style generator halves the image five times and its BatchNorm needs more than one
# value per channel in training, so its deepest map must be at least 2x2
ORIGINAL_MIN_SIZE = 64
THREADS = int(os.environ.get("DIP_BENCH_THREADS", "2"))
#: also time the ``dip denoise`` command with its defaults (:class:`CommandStep`); 0 skips it
COMMAND = os.environ.get("DIP_BENCH_COMMAND", "1") != "0"
ROUNDS = {128: 8, 256: 6, 512: 3}
if os.environ.get("DIP_BENCH_ROUNDS"):
    ROUNDS = {size: int(os.environ["DIP_BENCH_ROUNDS"]) for size in SIZES}
LR = 0.01
REG_NOISE = 1.0 / 30
INPUT_DEPTH = 32


def recipe_generator() -> torch.nn.Module:
    """The denoise recipe's generator from dip.models (standard skip, 2,217,831 parameters)."""
    r = dip.recipes.get("denoise")
    return dip.models.build(**r.net, in_channels=r.input_depth, out_channels=3)


def _data(size: int):
    g = torch.Generator().manual_seed(0)
    z = torch.rand(1, INPUT_DEPTH, size, size, generator=g) * 0.1
    y = torch.rand(1, 3, size, size, generator=g)
    return z, y


def make_original(size: int) -> oracle.OriginalStep:
    """(a)/(a'): the original-style step on the original-style denoise generator."""
    torch.manual_seed(0)
    z, y = _data(size)
    return oracle.OriginalStep(oracle.denoise_skip(INPUT_DEPTH), z, y, lr=LR,
                                       reg_noise_std=REG_NOISE)


def make_fast(size: int, precision: str, fused_bn: bool = True) -> runtime.FastStep:
    """(b): the fast step on the recipe's generator; ``fused_bn=False`` (c) runs its
    BatchNorm + LeakyReLU layers as torch's BatchNorm2d and LeakyReLU instead of the native
    fused op."""
    torch.manual_seed(0)
    z, y = _data(size)

    def loss_fn(out):
        return F.mse_loss(out, y)

    generator = recipe_generator()
    if not fused_bn:
        for module in generator.modules():
            if isinstance(module, BNAct):
                module.fused = False
    return runtime.FastStep(generator, z, loss_fn, lr=LR, reg_noise_std=REG_NOISE,
                            precision=precision)


def step_gflop(kind: str, size: int) -> float:
    """GFLOP of one forward + backward (FlopCounterMode: convolutions, on the meta device)."""
    with torch.device("meta"):
        net = oracle.denoise_skip(INPUT_DEPTH) if kind == "original" \
            else recipe_generator()
        x = torch.empty(1, INPUT_DEPTH, size, size)
    with FlopCounterMode(display=False) as counter:
        net(x).mean().backward()
    return counter.get_total_flops() / 1e9


#: the floor each configuration is measured against
FLOOR_OF = {"original": "floor-fp32-nchw", "original+malloc": "floor-fp32-nchw",
            "fast-fp32-torchbn": None, "fast-bf16": "floor-bf16-cl"}


def floor_of(config: str) -> str | None:
    """The floor configuration matching ``config``'s precision and layout."""
    if config == "command":  # the precision auto picks for denoising here, channels_last
        return "floor-bf16-cl" if runtime.choose_precision("auto", "cpu", "denoise")[0] == "bf16" \
            else floor_of("fast-fp32")
    if config == "fast-fp32":
        cl = runtime.use_channels_last(recipe_generator(), "fp32", "cpu")
        return "floor-fp32-cl" if cl else "floor-fp32-nchw"
    return FLOOR_OF.get(config)


def _make(config: str, size: int):
    if config.startswith("original"):
        return make_original(size)
    if config.startswith("floor-"):
        _, precision, layout = config.split("-")
        torch.manual_seed(0)
        return ConvFloor(recipe_generator(), _data(size)[0], precision, layout)
    return make_fast(size, config.split("-")[1], fused_bn=not config.endswith("-torchbn"))


def _run_step(step) -> None:
    step() if isinstance(step, (runtime.FastStep, ConvFloor)) else step.step()


_CHILD = r"""
import json, resource, sys, time
import torch
torch.set_num_threads({threads})
from dip import runtime
from benchmarks import test_bench_step as b
if {configure!r}:
    runtime.configure_allocator()
step = b._make({config!r}, {size})
b._run_step(step)
print("ready", flush=True)
for line in sys.stdin:
    if line.strip() != "step":
        break
    t = time.perf_counter()
    b._run_step(step)
    print(time.perf_counter() - t, flush=True)
print(json.dumps({{"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}),
      flush=True)
"""


class ChildStep:
    """A configuration's step running in its own process, stepped on request.

    The as-shipped baseline needs a process whose allocator was never configured; running it
    in a child that steps when told lets it take turns with the in-process configurations, so
    that a changing machine load hits every configuration alike. ``__call__`` runs one step
    and returns the child's own perf_counter time for it (s); ``close()`` returns the child's
    peak RSS (MiB).
    """

    def __init__(self, config: str, size: int, configure: bool) -> None:
        code = _CHILD.format(threads=THREADS, configure=configure, config=config, size=size)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the child process for {config} at {size}² did not start")

    def __call__(self) -> float:
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def close(self) -> float:
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        peak = json.loads(self.proc.stdout.readline())["peak_mib"]
        self.proc.wait(timeout=60)
        return peak


class CommandStep:
    """``dip denoise`` as a user runs it, with its defaults (precision auto, automatic stopping,
    averaging, the command's whole loop): one call runs the command for ``LONG_STEPS`` and for
    ``SHORT_STEPS`` steps, each in its own process, and returns the difference of their wall
    times over the difference of their steps (s per step), so that start-up, model building
    and writing the output cancel. The input is a noisy ``size``² crop of a built-in photograph.
    """

    SHORT_STEPS, LONG_STEPS = 5, 25

    def __init__(self, size: int) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="dip-bench-command-")
        name, clean = evaluate.builtin_images(size, ["astronaut"])[0]
        noisy = (clean + 25 / 255 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
        self.input = Path(self.dir.name) / f"{name}-noisy.png"
        images.write_image(self.input, noisy)
        self.env = dict(os.environ, OMP_NUM_THREADS=str(THREADS))

    def _run(self, steps: int) -> float:
        out = Path(self.dir.name) / f"out-{steps}.png"
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "dip", "denoise", str(self.input), "-o", str(out),
                        "--steps", str(steps), "--threads", str(THREADS), "-q", "--force"],
                       check=True, env=self.env)
        return time.perf_counter() - t

    def __call__(self) -> float:
        long_s = self._run(self.LONG_STEPS)
        return (long_s - self._run(self.SHORT_STEPS)) / (self.LONG_STEPS - self.SHORT_STEPS)

    def close(self) -> None:
        """Remove the input and outputs; no peak memory (each run is its own process)."""
        self.dir.cleanup()


def _mem_available_gib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return float("inf")


def _record(step_results, benchmark, config, size, times, peak_mib, extra=None) -> None:
    ms = sorted(times)[len(times) // 2] * 1e3
    row = {"ms": ms, "gflop": step_gflop("original" if config.startswith("original") else "fast",
                                         size), "floor": floor_of(config),
           "threads": THREADS, "native_ops": dip.ops.has_native(),
           **({"peak_mib": peak_mib} if peak_mib is not None else {}),
           "times_ms": [round(t * 1e3, 1) for t in times], **(extra or {})}
    step_results[(config, size)] = row
    benchmark.extra_info[config] = row


@pytest.mark.parametrize("size", SIZES)
def test_step(benchmark, step_results, size):
    """(a), (a'), fast-fp32 (and fast-bf16 where the CPU has bf16 arithmetic), each in its own
    process, taking turns one step each per round; the benchmark's own time is a round."""
    if size < ORIGINAL_MIN_SIZE:
        pytest.skip(f"the original-style step needs images of at least {ORIGINAL_MIN_SIZE}² (its deepest map "
                    f"would be 1x1 at {size}²); choose DIP_BENCH_SIZES of {ORIGINAL_MIN_SIZE} or more")
    configs = ["original", "original+malloc", "fast-fp32"]
    if dip.ops.has_native():
        configs.append("fast-fp32-torchbn")
    if runtime.bf16_is_native("cpu") or os.environ.get("DIP_BENCH_EMULATED_BF16") == "1":
        configs.append("fast-bf16")
    configs += ["floor-fp32-nchw", "floor-fp32-cl"] + (["floor-bf16-cl"] if "fast-bf16" in configs else [])
    need_gib = len(configs) * 1.3 * (size / 256) ** 2
    if _mem_available_gib() < need_gib:
        pytest.skip(f"{len(configs)} processes at {size}² need about {need_gib:.0f} GiB of "
                    f"memory, {_mem_available_gib():.1f} GiB available")
    steps = {}
    try:
        for config in configs:
            steps[config] = ChildStep(config, size, configure=config != "original")
        if COMMAND:
            configs.append("command")
            steps["command"] = CommandStep(size)
        times = {config: [] for config in configs}

        def one_round():
            for config in configs:
                times[config].append(steps[config]())

        benchmark.pedantic(one_round, rounds=ROUNDS.get(size, 2), iterations=1)
    finally:
        peaks = {config: step.close() for config, step in steps.items()}
    for config in configs:
        _record(step_results, benchmark, config, size, times[config], peaks[config])


@pytest.mark.parametrize("size", [s for s in SIZES if s <= 256])
def test_step_bf16_emulated(benchmark, step_results, size):
    """fast-bf16 on a CPU without bf16 arithmetic (oneDNN emulates it): one step, alone."""
    if runtime.bf16_is_native("cpu"):
        pytest.skip("bf16 is native on this CPU: measured in test_step")
    step = ChildStep("fast-bf16", size, configure=True)
    times = []
    try:
        benchmark.pedantic(lambda: times.append(step()), rounds=1, iterations=1)
    finally:
        peak = step.close()
    _record(step_results, benchmark, "fast-bf16", size, times, peak)
