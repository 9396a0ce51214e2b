"""Is bf16 safe? The returned image of a bf16 fit against the same fit in fp32 (or any two
configurations: ``DIP_BENCH_PRECISION_PAIR``).

What ``--precision auto`` rests on: for each task, the built-in images (``dip.evaluate``) x
seeds, the task's recipe fitted twice with the same seed, fp32 and bf16 autocast, and the PSNR
of the returned images compared. ``denoise`` (sigma = 25) runs its recipe's automatic stopping,
so each precision stops where its own rule fires; ``sr4`` and ``inpaint-text`` run a fixed
number of steps. A task is called safe when the mean |ΔPSNR| <= 0.1 dB and the worst <= 0.3 dB.

Settings (environment):
    DIP_BENCH_PRECISION_SIZE     crop size; default 128 where bf16 is native, else 64
    DIP_BENCH_PRECISION_TASKS    comma list of denoise25, sr4, inpaint-text (default all three)
    DIP_BENCH_PRECISION_IMAGES   comma list of built-in images (default all five)
    DIP_BENCH_PRECISION_SEEDS    seeds per image (default 2)
    DIP_BENCH_PRECISION_STEPS    steps of the fixed-step tasks (default 1000); the cap of denoise
                                 is its recipe's 3000
    DIP_BENCH_PRECISION_PAIR     the two configurations compared, "fp32,bf16" by default; a
                                 configuration is a precision with an optional layout, e.g.
                                 "fp32@nchw,fp32@cl": the rounding control (same precision, only
                                 the order of float operations differs) that shows how far
                                 DIP's chaotic trajectories move any result
    DIP_BENCH_THREADS            threads per fit (default 2)
    DIP_BENCH_PRECISION_JSON     also write the rows and the summary there

    PYTHONPATH=. python -m pytest benchmarks/test_bench_precision.py -q -s
"""
from __future__ import annotations

import json
import os
import time

import pytest
import torch

from dip import evaluate, recipes, runtime
from dip.metrics import psnr

TASKS = os.environ.get("DIP_BENCH_PRECISION_TASKS", "denoise25,sr4,inpaint-text").split(",")
IMAGES = os.environ.get("DIP_BENCH_PRECISION_IMAGES", ",".join(evaluate.BUILTIN_IMAGES)).split(",")
SEEDS = range(int(os.environ.get("DIP_BENCH_PRECISION_SEEDS", "2")))
FIXED_STEPS = int(os.environ.get("DIP_BENCH_PRECISION_STEPS", "1000"))
THREADS = int(os.environ.get("DIP_BENCH_THREADS", "2"))
PAIR = tuple(os.environ.get("DIP_BENCH_PRECISION_PAIR", "fp32,bf16").split(","))
MEAN_LIMIT_DB, WORST_LIMIT_DB = 0.1, 0.3
_LAYOUTS = {"nchw": "0", "cl": "1"}
_ROWS: list[dict] = []


def _size() -> int:
    default = 128 if runtime.bf16_is_native("cpu") else 64
    return int(os.environ.get("DIP_BENCH_PRECISION_SIZE", default))


def _fit(case: evaluate.Case, configuration: str) -> tuple[float, int, float]:
    """PSNR of the returned image, steps run and seconds of ``case``'s recipe in
    ``configuration`` ("bf16", "fp32@nchw", ...)."""
    precision, _, layout = configuration.partition("@")
    if layout:
        os.environ["DIP_CHANNELS_LAST"] = _LAYOUTS[layout]
    else:
        os.environ.pop("DIP_CHANNELS_LAST", None)
    overrides: dict = {"seed": case.seed, "precision": precision}
    if case.kind != "denoise25":
        overrides.update(steps=FIXED_STEPS, stop="steps")
    recipe = recipes.get(case.recipe, **overrides, **({"factor": case.factor} if case.factor else {}))
    start = time.perf_counter()
    result = recipes.run(recipe, case.observation, mask=case.mask)
    return psnr(result.image, case.gt[None]), result.steps_run, time.perf_counter() - start


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("image", IMAGES)
@pytest.mark.parametrize("kind", TASKS)
def test_bf16_against_fp32(benchmark, kind, image, seed):
    runtime.configure_allocator()
    torch.set_num_threads(THREADS)
    (name, gt), = evaluate.builtin_images(_size(), [image])
    case = evaluate.make_case(kind, name, gt, seed=seed)
    row: dict = {"task": kind, "image": image, "seed": seed, "size": _size(),
                 "bf16_native": runtime.bf16_is_native("cpu"), "threads": THREADS}

    def both() -> None:
        for key, configuration in zip(("a", "b"), PAIR, strict=True):
            row[f"{key}_psnr"], row[f"{key}_steps"], row[f"{key}_seconds"] = _fit(case, configuration)
        os.environ.pop("DIP_CHANNELS_LAST", None)

    benchmark.pedantic(both, rounds=1, iterations=1)
    row["pair"] = ",".join(PAIR)
    row["delta_db"] = row["b_psnr"] - row["a_psnr"]
    benchmark.extra_info.update(row)
    _ROWS.append(row)
    print(f"\n{kind} {image} seed {seed}: {PAIR[0]} {row['a_psnr']:.2f} dB ({row['a_steps']} steps, "
          f"{row['a_seconds']:.0f} s), {PAIR[1]} {row['b_psnr']:.2f} dB ({row['b_steps']} steps, "
          f"{row['b_seconds']:.0f} s): {row['delta_db']:+.2f} dB")


def summary(rows: list[dict]) -> dict[str, dict]:
    """Per task: cases, mean and worst |ΔPSNR| (dB, second configuration minus first), mean Δ,
    time ratio first/second, and ``safe``."""
    out = {}
    for kind in dict.fromkeys(r["task"] for r in rows):
        sel = [r for r in rows if r["task"] == kind]
        deltas = [abs(r["delta_db"]) for r in sel]
        mean_abs, worst = sum(deltas) / len(deltas), max(deltas)
        out[kind] = {"cases": len(sel), "mean_abs_db": mean_abs, "worst_abs_db": worst,
                     "mean_db": sum(r["delta_db"] for r in sel) / len(sel),
                     "speedup": sum(r["a_seconds"] for r in sel) / sum(r["b_seconds"] for r in sel),
                     "safe": mean_abs <= MEAN_LIMIT_DB and worst <= WORST_LIMIT_DB}
    return out


def test_summary():
    if not _ROWS:
        pytest.skip("no case ran")
    table = summary(_ROWS)
    print(f"\n{PAIR[1]} against {PAIR[0]}")
    print("task           cases  mean|Δ| dB  worst|Δ| dB  mean Δ dB  time ratio  safe")
    for kind, s in table.items():
        print(f"{kind:<15}{s['cases']:>5}{s['mean_abs_db']:>12.3f}{s['worst_abs_db']:>13.3f}"
              f"{s['mean_db']:>11.3f}{s['speedup']:>12.2f}  {'yes' if s['safe'] else 'NO'}")
    path = os.environ.get("DIP_BENCH_PRECISION_JSON")
    if path:
        with open(path, "w") as fh:
            json.dump({"rows": _ROWS, "summary": table}, fh, indent=1)
