"""The quality benchmark of blind deblurring: blind DIP against our non-blind DIP, Richardson–Lucy
with the true kernel and with a wrong-width Gaussian guess, and the blurred input.

Run:  DIP_BENCH_BLIND=1 OMP_NUM_THREADS=1 python -m pytest benchmarks/test_bench_deblur_blind.py --benchmark-only -s

``dip eval``'s blind cases (``deblur-blind-gauss``, ``-motion9``, ``-motion15``: recipes
``deblur-blind`` for the Gaussian, ``deblur-blind-motion`` for the motion blurs, told the
kernel's size only) and the non-blind cases on the same observations
(the five built-in crops; Gaussian sigma 1.6, motion 9 px at 30° and 15 px at 120°; 1 % white
noise). Richardson–Lucy's iteration count is tuned per image on the ground truth, with the true
kernel and, for the Gaussian blur, with a Gaussian of sigma 1.0 (``rl_guess``). 30 fits: hours
on a CPU, so it runs only with DIP_BENCH_BLIND=1. Scale it with DIP_BENCH_BLIND_SIZE (default
128), _STEPS, _IMAGES (comma list of built-in names), _KERNELS (comma list of gauss, motion9,
motion15), _NET_WIDTH (channels per level, default the recipes' 128), _DEVICE; _ONLY=1 runs
the blind fits alone; _CSV (file) keeps the rows, ``kernel_l1`` and ``rl_guess_psnr`` included
(the loop is benchmarks/deblur_cases.py's, shared with the non-blind benchmark).

Printed: one line per image x kernel (input, RL with the true kernel, RL with the guess, DIP
non-blind, DIP blind, blind minus non-blind, the kernel estimate's L1 error, seconds of each
fit, and what ES-WMV stopping would have returned on the blind fit: its PSNR and step) and the
mean per kernel.
"""
import math
import os

import numpy as np
import pytest
import torch

from benchmarks.deblur_cases import require, run_cases

torch.set_num_threads(int(os.environ.get("DIP_BENCH_THREADS", "1")))

KERNELS = ("gauss", "motion9", "motion15")
#: the environment variables' prefix (benchmarks/deblur_cases.py)
PREFIX = "DIP_BENCH_BLIND"


def blind_table(rows) -> str:
    """Fixed-width table pairing each blind row with the non-blind row of the same observation."""
    by = {(r["case"], r["image"]): r for r in rows}
    head = (f"{'kernel':<10}{'image':<22}{'input':>7}{'RL':>7}{'RL-σ1':>7}{'DIP':>7}{'blind':>7}{'Δ':>7}"
            f"{'k L1':>6}{'s DIP':>7}{'s blind':>8}{'auto':>7}{'@step':>6}")
    lines = [head, "-" * len(head)]
    table: dict[str, list[list[float]]] = {}
    for (case, image), blind in by.items():
        if not case.startswith("deblur-blind-"):
            continue
        kernel = case.removeprefix("deblur-blind-")
        known = by.get((f"deblur-{kernel}", image))
        dip_psnr = known["fixed_psnr"] if known else math.nan
        vals = [blind["input_psnr"], blind["rl_psnr"], blind.get("rl_guess_psnr", math.nan), dip_psnr,
                blind["fixed_psnr"], blind["fixed_psnr"] - dip_psnr, blind["kernel_l1"],
                known["fixed_seconds"] if known else math.nan, blind["fixed_seconds"], blind["auto_psnr"],
                float(blind["auto_return_step"] or math.nan)]
        table.setdefault(kernel, []).append(vals)
        lines.append(_line(kernel, image[:21], vals))
    lines.append("-" * len(head))
    for kernel, sel in table.items():
        lines.append(_line(kernel, f"mean of {len(sel)}", list(np.nanmean(np.array(sel), axis=0))))
    return "\n".join(lines)


def _line(kernel: str, image: str, v) -> str:
    def f(x, width, fmt=".2f"):
        return f"{'-':>{width}}" if not math.isfinite(x) else f"{x:>{width}{fmt}}"
    return (f"{kernel:<10}{image:<22}" + "".join(f(x, 7) for x in v[:5]) + f"{v[5]:>+7.2f}" + f(v[6], 6, ".3f")
            + f(v[7], 7, ".0f") + f(v[8], 8, ".0f") + f(v[9], 7) + f(v[10], 6, ".0f"))


@pytest.mark.slow
def test_bench_eval_deblur_blind(benchmark):
    require(PREFIX)
    kernels = os.environ.get(f"{PREFIX}_KERNELS", ",".join(KERNELS)).split(",")
    blind_only = os.environ.get(f"{PREFIX}_ONLY") == "1"  # the non-blind columns left empty
    pair = ("deblur-blind-{}",) if blind_only else ("deblur-{}", "deblur-blind-{}")
    cases = [c.format(k) for k in kernels for c in pair]
    run_cases(benchmark, PREFIX, cases, blind_table,
              progress=lambda r: print(f"{r['case']} {r['image']}: {r['fixed_psnr']:.2f} dB", flush=True))
    benchmark.extra_info.update(kernels=kernels)
