"""The case loop the deblurring quality benchmarks share (benchmarks/test_bench_deblur.py and
benchmarks/test_bench_deblur_blind.py): ``dip eval``'s cases on built-in crops, scaled by
environment variables of one prefix, run once under pytest-benchmark, printed as a table and
optionally kept as CSV.

With the prefix P (``DIP_BENCH_DEBLUR``, ``DIP_BENCH_BLIND``): P=1 runs it (else the benchmark
is skipped: hours on a CPU); P_SIZE (crop side, default 128), P_STEPS (default each recipe's),
P_IMAGES (comma list of built-in names, default all five), P_DEVICE (default cpu), P_NET_WIDTH
(channels per level of the skip net's five levels, default the recipes' 128), P_CSV (file: the
rows, ``dip.evaluate.write_csv``).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import pytest


def require(prefix: str) -> None:
    """Skip the benchmark unless ``{prefix}=1``."""
    if os.environ.get(prefix) != "1":
        pytest.skip(f"hours on a CPU: set {prefix}=1 (and {prefix}_* to scale it)")


def run_cases(benchmark, prefix: str, cases: Sequence[str], table: Callable[[list[dict]], str],
              progress: Callable[[dict], None] | None = None) -> list[dict]:
    """Evaluate ``cases`` with the settings of ``prefix``'s environment (the module docstring)
    once under ``benchmark``; print ``table(rows)``, write P_CSV, and record the settings and
    the table in ``benchmark.extra_info``. Returns the rows of ``dip.evaluate.evaluate``."""
    from dip import evaluate as ev

    size = int(os.environ.get(f"{prefix}_SIZE", "128"))
    steps = os.environ.get(f"{prefix}_STEPS")
    names = os.environ.get(f"{prefix}_IMAGES")
    device = os.environ.get(f"{prefix}_DEVICE", "cpu")
    width = os.environ.get(f"{prefix}_NET_WIDTH")
    overrides = {"net_options": {"num_channels_down": [int(width)] * 5, "num_channels_up": [int(width)] * 5}} \
        if width else {}
    images = ev.builtin_images(size, names.split(",") if names else None)

    def run():
        return ev.evaluate(list(cases), images, steps=int(steps) if steps else None, device=device,
                           progress=progress, **overrides)

    rows = benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
    text = table(rows)
    print("\n" + text)
    if os.environ.get(f"{prefix}_CSV"):
        ev.write_csv(rows, os.environ[f"{prefix}_CSV"])
    benchmark.extra_info.update(size=size, steps=steps, images=[n for n, _ in images], cases=list(cases),
                                device=device, table=text)
    return rows
