"""Ensembles and packed batches, end to end: quality of K averaged fits, and the rate of a pack
of K images against K fits in a row.

Quality (``test_ensemble_quality``): each built-in image, denoised at sigma 25 (and 50) with
the recipe's automatic stopping by one ensemble of the largest K (seeds 0..K-1,
``dip.denoise(..., ensemble=K)``). Its members are the fits of their seeds (member k follows
the single fit of seed k), so its first k members are the ensemble of k: one run gives K = 1
(member 0 alone), 2, 4, ... Reported: PSNR of the mean and of the median of the first k
members' images, the members' own PSNRs, steps and the wall time of the run.

Packed batch (``test_pack_against_fits_in_a_row``): K different images (each its own noisy
observation) fitted one after another, then as one pack of K (``fit_packed`` with K
observations): each image's PSNR both ways and the images restored per hour.

Settings (environment):
    DIP_BENCH_ENSEMBLE_SIZE     crop side (default 64)
    DIP_BENCH_ENSEMBLE_K        ensemble sizes (default 2,4)
    DIP_BENCH_ENSEMBLE_SIGMAS   noise levels (default 25)
    DIP_BENCH_ENSEMBLE_IMAGES   built-in images (default all five)
    DIP_BENCH_PACK_K            images per pack (default 4)
    DIP_BENCH_PRECISION         fp32 (default) or bf16
    DIP_BENCH_THREADS           threads (default 2)

    PYTHONPATH=. python -m pytest benchmarks/test_bench_ensemble.py -q -s
"""
from __future__ import annotations

import os
import time

import pytest
import torch

import dip
from dip import evaluate, recipes, runtime
from dip.engine.packed_loop import fit_packed
from dip.metrics import psnr

SIZE = int(os.environ.get("DIP_BENCH_ENSEMBLE_SIZE", "64"))
KS = [int(k) for k in os.environ.get("DIP_BENCH_ENSEMBLE_K", "2,4").split(",")]
SIGMAS = [int(s) for s in os.environ.get("DIP_BENCH_ENSEMBLE_SIGMAS", "25").split(",")]
IMAGES = os.environ.get("DIP_BENCH_ENSEMBLE_IMAGES", ",".join(evaluate.BUILTIN_IMAGES)).split(",")
PACK_K = int(os.environ.get("DIP_BENCH_PACK_K", "4"))
PRECISION = os.environ.get("DIP_BENCH_PRECISION", "fp32")
THREADS = int(os.environ.get("DIP_BENCH_THREADS", "2"))
_QUALITY: list[dict] = []


def _case(image: str, sigma: int):
    (name, gt), = evaluate.builtin_images(SIZE, [image])
    return evaluate.make_case(f"denoise{sigma}", name, gt, seed=0)


def _bm3d(case) -> float | None:
    try:
        import bm3d  # type: ignore[import-not-found]
    except ImportError:
        return None
    noisy = case.observation.permute(1, 2, 0).numpy()
    sigma = evaluate.TASKS[case.kind]["sigma"] / 255.0
    out = bm3d.bm3d_rgb(noisy, sigma) if noisy.shape[2] == 3 else bm3d.bm3d(noisy[..., 0], sigma)
    return psnr(torch.from_numpy(out).float().reshape(noisy.shape).permute(2, 0, 1)[None].clamp(0, 1), case.gt[None])


@pytest.mark.parametrize("sigma", SIGMAS)
@pytest.mark.parametrize("image", IMAGES)
def test_ensemble_quality(benchmark, image, sigma):
    from dip.engine.packed_result import combine

    runtime.configure_allocator()
    torch.set_num_threads(THREADS)
    case = _case(image, sigma)
    recipe = evaluate.TASKS[case.kind]["recipe"]
    row: dict = {"image": image, "sigma": sigma, "size": SIZE, "bm3d": _bm3d(case)}

    def run() -> None:
        start = time.perf_counter()
        ens = dip.denoise(case.observation, recipe=recipe, gt=case.gt, precision=PRECISION, ensemble=max(KS))
        row["seconds"] = time.perf_counter() - start
        row["members"] = [m.psnr for m in ens.members]
        row["steps"] = [m.steps_run for m in ens.members]
        for k in sorted({1, *KS}):
            images = [m.image for m in ens.members[:k]]
            row[k] = {"psnr": psnr(combine(images, "mean"), case.gt[None]),
                      "psnr_median": psnr(combine(images, "median"), case.gt[None])}

    benchmark.pedantic(run, rounds=1, iterations=1)
    _QUALITY.append(row)
    parts = [f"K={k} mean {row[k]['psnr']:.2f} / median {row[k]['psnr_median']:.2f}" for k in sorted({1, *KS})]
    bm3d_note = f", CBM3D {row['bm3d']:.2f}" if row["bm3d"] is not None else ""
    print(f"\n{image} sigma {sigma} {SIZE}²{bm3d_note}: " + "; ".join(parts)
          + f" dB (members {', '.join(f'{p:.2f}' for p in row['members'])}; steps "
          f"{', '.join(map(str, row['steps']))}; {row['seconds']:.0f} s)")


def test_ensemble_summary():
    if not _QUALITY:
        pytest.skip("no quality case ran")
    for sigma in SIGMAS:
        rows = [r for r in _QUALITY if r["sigma"] == sigma]
        base = sum(r[1]["psnr"] for r in rows) / len(rows)
        line = [f"sigma {sigma}, {len(rows)} images: K=1 {base:.2f} dB"]
        for k in KS:
            mean = sum(r[k]["psnr"] for r in rows) / len(rows)
            median = sum(r[k]["psnr_median"] for r in rows) / len(rows)
            line.append(f"K={k} mean {mean:.2f} ({mean - base:+.2f}), median {median:.2f} ({median - base:+.2f})")
        members = [p for r in rows for p in r["members"]]
        line.append(f"members alone {sum(members) / len(members):.2f} on average")
        print("\n" + "; ".join(line))


def test_pack_against_fits_in_a_row(benchmark):
    runtime.configure_allocator()
    torch.set_num_threads(THREADS)
    cases = [_case(image, SIGMAS[0]) for image in IMAGES[:PACK_K]]
    recipe = recipes.get(evaluate.TASKS[cases[0].kind]["recipe"], precision=PRECISION)
    rows: dict = {}

    def run() -> None:
        start = time.perf_counter()
        rows["single"] = []
        for c in cases:
            rows["single"].append(recipes.run(recipe, c.observation, gt=c.gt))
            print(f"\n{c.image} alone: {rows['single'][-1].psnr:.2f} dB, {rows['single'][-1].steps_run} steps, "
                  f"{time.perf_counter() - start:.0f} s so far", flush=True)
        rows["single_seconds"] = time.perf_counter() - start
        built = [recipes.build(recipe, c.observation) for c in cases]
        start = time.perf_counter()
        rows["packed"] = fit_packed([b[0] for b in built], [b[1] for b in built], [b[2] for b in built],
                                    [b[3] for b in built], recipe.fit, seeds=[recipe.fit.seed] * len(cases),
                                    gt=[c.gt for c in cases]).members
        rows["packed_seconds"] = time.perf_counter() - start

    benchmark.pedantic(run, rounds=1, iterations=1)
    deltas = [p.psnr - s.psnr for p, s in zip(rows["packed"], rows["single"], strict=True)]
    rate = rows["single_seconds"] / rows["packed_seconds"]
    for c, s, p in zip(cases, rows["single"], rows["packed"], strict=True):
        print(f"\n{c.image}: alone {s.psnr:.2f} dB ({s.steps_run} steps), packed {p.psnr:.2f} dB ({p.steps_run} steps)")
    print(f"\n{len(cases)} images {SIZE}² {PRECISION} {THREADS} threads: in a row {rows['single_seconds']:.0f} s, "
          f"one pack {rows['packed_seconds']:.0f} s: x{rate:.2f} the rate; ΔPSNR mean {sum(deltas) / len(deltas):+.3f}, "
          f"worst {max(deltas, key=abs):+.3f} dB")
    benchmark.extra_info.update({"rate_ratio": rate, "delta_db": deltas})
