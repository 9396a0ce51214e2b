"""The quality benchmark of issue "deblurring": DIP against the tuned classical baselines.

Run:  DIP_BENCH_DEBLUR=1 OMP_NUM_THREADS=1 python -m pytest benchmarks/test_bench_deblur.py --benchmark-only -s

``dip eval``'s deblurring cases (``dip.evaluate_deblur``) on the five built-in 128² crops: a
Gaussian (sigma 1.6) and two straight motion kernels (9 px at 30°, 15 px at 120°), 1 % white
noise; Wiener and Richardson–Lucy with the true kernel on the reflect-padded image, their
parameter chosen per image on the ground truth; DIP with the ``deblur`` recipe.  15 fits of
4000 steps: hours on a CPU, so it runs only with DIP_BENCH_DEBLUR=1.  Scale it with
DIP_BENCH_DEBLUR_SIZE, _STEPS, _IMAGES (comma list of built-in names), _CASES (comma list),
_DEVICE, _NET_WIDTH (channels per level, default the recipe's 128); _CSV (file) keeps the rows
(the loop is benchmarks/deblur_cases.py's, shared with the blind benchmark).

Printed: one line per image x kernel (input, Wiener and its balance, Richardson–Lucy and its
iterations, DIP, DIP minus the better baseline, steps, seconds) and the mean per kernel; the
same table goes into the benchmark's extra_info.
"""
import os

import numpy as np
import pytest
import torch

from benchmarks.deblur_cases import require, run_cases

torch.set_num_threads(int(os.environ.get("DIP_BENCH_THREADS", "1")))

CASES = ("deblur-gauss", "deblur-motion9", "deblur-motion15")
#: the environment variables' prefix (benchmarks/deblur_cases.py)
PREFIX = "DIP_BENCH_DEBLUR"


def deblur_table(rows) -> str:
    """Fixed-width table of ``dip.evaluate`` deblurring rows, with per-case means."""
    head = (f"{'case':<16}{'image':<22}{'input':>7}{'wiener':>8}{'(bal)':>8}{'RL':>7}{'(its)':>6}"
            f"{'DIP':>7}{'gain':>7}{'steps':>7}{'s':>8}")
    lines = [head, "-" * len(head)]

    def line(case, image, r):
        gain = r["fixed_psnr"] - max(r["wiener_psnr"], r["rl_psnr"])
        bal = f"{r['wiener_balance']:.2g}" if r.get("wiener_balance") is not None else ""
        its = f"{r['rl_iterations']:g}" if r.get("rl_iterations") is not None else ""
        return (f"{case:<16}{image:<22}{r['input_psnr']:>7.2f}{r['wiener_psnr']:>8.2f}{bal:>8}"
                f"{r['rl_psnr']:>7.2f}{its:>6}{r['fixed_psnr']:>7.2f}{gain:>+7.2f}{r['fixed_steps']:>7}"
                f"{r['fixed_seconds']:>8.1f}")

    for r in rows:
        lines.append(line(r["case"], r["image"][:21], r))
    lines.append("-" * len(head))
    for case in dict.fromkeys(r["case"] for r in rows):
        sel = [r for r in rows if r["case"] == case]
        keys = ("input_psnr", "wiener_psnr", "rl_psnr", "fixed_psnr", "fixed_seconds")
        mean = {k: float(np.mean([r[k] for r in sel])) for k in keys}
        mean["fixed_steps"] = sel[0]["fixed_steps"]
        lines.append(line(case, f"mean of {len(sel)}", mean))
    return "\n".join(lines)


@pytest.mark.slow
def test_bench_eval_deblur(benchmark):
    require(PREFIX)
    cases = os.environ.get(f"{PREFIX}_CASES", ",".join(CASES)).split(",")
    rows = run_cases(benchmark, PREFIX, cases, deblur_table)
    gains = [r["fixed_psnr"] - max(r["wiener_psnr"], r["rl_psnr"]) for r in rows]
    benchmark.extra_info.update(mean_gain_over_best_baseline=float(np.mean(gains)))
