"""Where one optimisation step of the denoise generator spends its time, op by op.

Run::

    PYTHONPATH=. python benchmarks/step_op_times.py [--size 256] [--precision bf16] \\
        [--threads 2] [--steps 3] [--top 20]

Each dispatcher op the step calls (forward, loss, backward, Adam: the step of
``benchmarks/test_bench_step.py``'s ``fast-*`` configurations) is timed call by call with a
wall clock around the call (a ``TorchDispatchMode``), then summed per op and per (op, first
input's shape) over ``--steps`` steps after two warm-up steps. The step's own wall time, without
the timer, is printed first; the timer's overhead shows as the difference.

Why not ``torch.profiler``: on the CPU it inflates short native calls several times over (the
bf16 BatchNorm backward at 128 x 256^2: 38 ms a call in a profiled step, 4-5 ms timed so), so
its percentages mislead exactly where the native kernels are.
"""
from __future__ import annotations

import argparse
import collections
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.test_bench_step import make_fast
from dip import runtime


class OpTimer(TorchDispatchMode):
    """Sums the wall time of each dispatcher call, by op name and by (op, first input shape)."""

    def __init__(self) -> None:
        super().__init__()
        self.by_op: dict[str, float] = collections.defaultdict(float)
        self.calls: collections.Counter[str] = collections.Counter()
        self.by_shape: dict[tuple[str, tuple[int, ...] | None], float] = collections.defaultdict(float)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        elapsed = time.perf_counter() - start
        name = ".".join(str(func).split(".")[:2])  # namespace.op, without the overload
        shape = next((tuple(a.shape) for a in args if isinstance(a, torch.Tensor)), None)
        self.by_op[name] += elapsed
        self.calls[name] += 1
        self.by_shape[(name, shape)] += elapsed
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="image side (default 256)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="timed steps (default 3)")
    parser.add_argument("--top", type=int, default=20, help="rows per table (default 20)")
    args = parser.parse_args()
    runtime.configure_allocator()
    torch.set_num_threads(args.threads)
    step = make_fast(args.size, args.precision)
    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    plain = (time.perf_counter() - start) / args.steps
    timer = OpTimer()
    with timer:
        for _ in range(args.steps):
            step()
    n = args.steps
    print(f"{args.size}² {args.precision}, {args.threads} threads: {plain * 1e3:.1f} ms a step "
          f"untimed; ops {sum(timer.by_op.values()) / n * 1e3:.1f} ms a step timed")
    for name, total in sorted(timer.by_op.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"  {name:42s} {total / n * 1e3:8.2f} ms  {timer.calls[name] // n:4d} calls")
    print("by op and first input's shape:")
    for (name, shape), total in sorted(timer.by_shape.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"  {name:42s} {str(shape):22s} {total / n * 1e3:8.2f} ms")


if __name__ == "__main__":
    main()
