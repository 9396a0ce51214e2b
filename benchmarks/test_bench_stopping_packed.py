"""K members' stopping rules per step: K single rules against one vectorised rule.

Run (one thread; K = 4 and 16; 3x128x128 float32 outputs; W = 100):

    OMP_NUM_THREADS=1 PYTHONPATH=. python -m pytest benchmarks/test_bench_stopping_packed.py -q -s

One update of a full window, for K members: ``singles`` = K
:class:`dip.stopping.WindowedVarianceStopper` updates one after the other (what a packed fit
cost before), ``packed`` = one :class:`dip.stopping_packed.PackedWindowedVarianceStopper`
update of the (K, 1, 3, 128, 128) outputs.  Policies: ``plain`` (the output at the minimum)
and ``window-mean`` (the averaging recipes': ``return_mean``, ``return_delay = W - 1``).
The two take turns, one update each per round, the order alternating, so that a changing
machine load hits them alike.  Reported: median ms per update of each and the ratio singles
ms / packed ms (> 1: the vectorised rule is faster), in ``extra_info`` and the summary at the
end (benchmarks/conftest.py).  The CPU path is measured (the rules read a flag per update
there); the branch-free path of accelerators is exercised by the tests only.
"""
from __future__ import annotations

import os
import time

import pytest
import torch

from dip.stopping import WindowedVarianceStopper
from dip.stopping_packed import PackedWindowedVarianceStopper

SHAPE = (1, 3, 128, 128)
WINDOW = 100
ROUNDS = int(os.environ.get("DIP_BENCH_ROUNDS", "60"))
KS = [int(k) for k in os.environ.get("DIP_BENCH_STOPPER_K", "4,16").split(",")]


@pytest.mark.parametrize("policy", ["plain", "window-mean"])
@pytest.mark.parametrize("k", KS)
def test_stopper_update_k_members(benchmark, stopper_results, k, policy):
    """K single updates and one packed update, taking turns; the benchmark times a round."""
    torch.set_num_threads(int(os.environ.get("DIP_BENCH_THREADS", "1")))
    kw = dict(window=WINDOW, patience=10 ** 9)
    if policy == "window-mean":
        kw.update(return_mean=True, return_delay=WINDOW - 1)
    g = torch.Generator().manual_seed(0)
    outputs = [torch.rand((k,) + SHAPE, generator=g) for _ in range(6)]
    singles = [WindowedVarianceStopper(**kw) for _ in range(k)]
    packed = PackedWindowedVarianceStopper(k, **kw)
    state = {"t": 0}

    def run_singles() -> None:
        x = outputs[state["t"] % len(outputs)]
        for j, s in enumerate(singles):
            s.update(state["t"], x[j])

    def run_packed() -> None:
        packed.update(state["t"], outputs[state["t"] % len(outputs)])

    runs = {"singles": run_singles, "packed": run_packed}
    for _ in range(WINDOW + 5):  # fill the windows
        run_singles()
        run_packed()
        state["t"] += 1
    times: dict[str, list[float]] = {c: [] for c in runs}

    def one_round() -> None:
        order = list(runs) if state["t"] % 2 else list(runs)[::-1]
        for c in order:
            t = time.perf_counter()
            runs[c]()
            times[c].append(time.perf_counter() - t)
        state["t"] += 1

    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1)
    ms = {c: sorted(v)[len(v) // 2] * 1e3 for c, v in times.items()}
    row = {"singles_ms": ms["singles"], "packed_ms": ms["packed"], "x_singles": ms["singles"] / ms["packed"],
           "threads": torch.get_num_threads(), "cpu": torch.backends.cpu.get_cpu_capability()}
    stopper_results[(k, policy)] = row
    benchmark.extra_info.update(row, window=WINDOW, shape=SHAPE)
