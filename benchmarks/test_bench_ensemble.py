"""Ensembles and packed batches, end to end: quality of K averaged fits, and the rate of a pack
of K images against K fits in a row.

Quality (``test_ensemble_quality``): each built-in image, denoised at sigma 25 (and 50) with
the recipe's automatic stopping by one ensemble of the largest K (seeds 0..K-1,
``dip.denoise(..., ensemble=K)``). Its members are the fits of their seeds (member k follows
the single fit of seed k), so its first k members are the ensemble of k: one run gives K = 1
(member 0 alone), 2, 4, ... Reported: PSNR of the mean and of the median of the first k
members' images, the members' own PSNRs, steps and the wall time of the run, and the members'
error correlation with the ceiling of averaging it implies (:func:`error_ceiling`: the PSNR
gain over member 0 of an ensemble of infinitely many members like these), which tells
whether a target gain is within reach of more members at all.

Dihedral members (``DIP_BENCH_ENSEMBLE_TRANSFORMS=dihedral``, square crops): member k fits
the observation turned by the k-th symmetry of the square (identity, flip left-right, flip
up-down, rotate 180, transpose, rotate 90, rotate 270, anti-transpose; seeds 0..K-1 as
before) and its image is turned back before the members are combined. A flip or rotation
moves the stride-2 sampling lattice and the padding onto other pixels, so the members' errors
may be less alike than with the seed alone; member 0 is the same fit both ways, so the rows
compare with the seeds-only rows of the same image. A benchmark only: the library's
ensembles fit the observation as it is. Measured at 128², sigma 25, bf16, one thread per
ensemble (Intel Xeon with AMX), dihedral against seeds only: rocket K = 2, 4, 8 32.22 / 32.46 /
32.61 against 32.32 / 32.48 / 32.60 dB; immunohistochemistry 30.36 / 30.56 / 30.61 against
30.31 / 30.49 / 30.56. The turned members' errors are about as alike as the seeds' (K = 8:
+0.03 dB on average), so the library keeps seeds alone.

Members that see part of the observation (measured with scripts, not kept here: member k
fitted with the inpainting loss on a random subset of the pixels, the ensemble combined as
usual) decorrelate far more, but each member is much worse and the ensemble ends below the
seeds-only one. 64², sigma 25, bf16, 2 threads (AMD EPYC Zen 4): with 70 % of the pixels
kept at random and automatic stopping, the five images' K = 1 / 2 / 4 means are 27.94 /
28.98 / 29.46 dB (seeds only: 29.30 / 29.80 / 30.03), the members stopping at 450-600
steps. Fixed 1600-step runs scored every 25 steps (each pixel hidden from exactly one of
four members) peak at 275-400 steps: the best K = 4 ensembles are 28.71 (astronaut) and
29.09 dB (rocket) against 29.02 and 29.52 for seeds only, and the hidden pixels alone
(each taken from the member that did not see it) peak at 25.9 and 25.5 dB: a DIP
inpainting of a pixel is a poor estimate of it, and fitting the rest of the noise spoils it
further (21.3 dB by step 1600).

Packed batch (``test_pack_against_fits_in_a_row``): K different images (each its own noisy
observation) fitted one after another, then as one pack of K (``fit_packed`` with K
observations): each image's PSNR both ways and the images restored per hour.

Settings (environment):
    DIP_BENCH_ENSEMBLE_SIZE     crop side (default 64)
    DIP_BENCH_ENSEMBLE_K        ensemble sizes (default 2,4)
    DIP_BENCH_ENSEMBLE_SIGMAS   noise levels (default 25)
    DIP_BENCH_ENSEMBLE_IMAGES   built-in images (default all five)
    DIP_BENCH_ENSEMBLE_TRANSFORMS  seeds (default) or dihedral (see above)
    DIP_BENCH_PACK_K            images per pack (default 4)
    DIP_BENCH_PRECISION         fp32 (default) or bf16
    DIP_BENCH_THREADS           threads (default 2)

    PYTHONPATH=. python -m pytest benchmarks/test_bench_ensemble.py -q -s
"""
from __future__ import annotations

import dataclasses
import math
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
TRANSFORMS = os.environ.get("DIP_BENCH_ENSEMBLE_TRANSFORMS", "seeds")
#: the symmetries of the square as (quarter turns, flip left-right first), identity first
DIHEDRAL = ((0, False), (0, True), (2, True), (2, False), (1, True), (1, False), (3, False), (3, True))
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


def error_ceiling(images: list[torch.Tensor], gt: torch.Tensor) -> dict:
    """How far averaging members of this kind can go, from the members' errors alone.

    ``images``: K >= 2 member images (1, C, H, W) float; ``gt``: the truth (C, H, W) or
    (1, C, H, W). With e_k = image_k - gt and G_ij = mean(e_i * e_j) (the Gram matrix of the
    errors, per pixel), the mean of any k members has squared error (1/k^2) * the sum of their
    G block; for members drawn alike (seeds) that is d / k + (1 - 1/k) c = c + (d - c) / k,
    d the mean of G's diagonal (a member's MSE), c the mean of its off-diagonal. So c is the
    squared error of an ensemble of infinitely many such members: the ceiling of averaging.
    Returns ``rho`` = c / d (the members' error correlation), ``ceiling_db`` = 10 log10(d / c)
    (the infinite ensemble over the average member) and ``ceiling_over_member0_db`` (over
    member 0, as the benchmark's K = 1 column), ``mse_member_mean`` (d), ``mse_shared`` (c).
    """
    if len(images) < 2:
        raise ValueError(f"the error correlation needs at least 2 members, got {len(images)}")
    errors = torch.stack([(img.float() - gt.float().reshape(img.shape)).flatten() for img in images])
    gram = errors.double() @ errors.double().T / errors.shape[1]
    k = len(images)
    d = gram.diagonal().mean().item()
    c = (gram.sum().item() - gram.diagonal().sum().item()) / (k * (k - 1))
    return {"rho": c / d, "ceiling_db": 10 * math.log10(d / c),
            "ceiling_over_member0_db": 10 * math.log10(gram[0, 0].item() / c),
            "mse_member_mean": d, "mse_shared": c}


def _turn(x: torch.Tensor, k: int, inverse: bool = False) -> torch.Tensor:
    """``x`` (..., H, W) under the k-th symmetry of :data:`DIHEDRAL` (or its inverse)."""
    turns, flip = DIHEDRAL[k]
    if inverse:
        x = torch.rot90(x, -turns, (-2, -1))
        return x.flip(-1) if flip else x
    x = x.flip(-1) if flip else x
    return torch.rot90(x, turns, (-2, -1))


def _dihedral_members(case, recipe_name: str, members: int) -> list:
    """Member k fitted to the observation under symmetry k (seed k); its image turned back."""
    if members > len(DIHEDRAL):
        raise ValueError(f"a square has {len(DIHEDRAL)} symmetries, got ensemble K = {members}")
    recipe = recipes.get(recipe_name, precision=PRECISION)
    config = recipe.fit.updated(precision=runtime.choose_precision(PRECISION, "cpu", recipe.task)[0])
    # member k as recipes.run(ensemble=K) builds it (seed + k), on the turned observation
    built = [recipes.build(dataclasses.replace(recipe, fit=config.updated(seed=config.seed + k)),
                           _turn(case.observation, k)) for k in range(members)]
    packed = fit_packed([b[0] for b in built], [b[1] for b in built], [b[2] for b in built],
                        [b[3] for b in built], config, gt=[_turn(case.gt, k) for k in range(members)])
    for k, member in enumerate(packed.members):
        member.image = _turn(member.image, k, inverse=True)
    return packed.members


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
        if TRANSFORMS == "dihedral":
            members = _dihedral_members(case, recipe, max(KS))
        else:
            members = dip.denoise(case.observation, recipe=recipe, gt=case.gt, precision=PRECISION,
                                  ensemble=max(KS)).members
        row["seconds"] = time.perf_counter() - start
        row["members"] = [m.psnr for m in members]
        row["steps"] = [m.steps_run for m in members]
        for k in sorted({1, *KS}):
            images = [m.image for m in members[:k]]
            row[k] = {"psnr": psnr(combine(images, "mean"), case.gt[None]),
                      "psnr_median": psnr(combine(images, "median"), case.gt[None])}
        row["ceiling"] = error_ceiling([m.image for m in members], case.gt)

    benchmark.pedantic(run, rounds=1, iterations=1)
    _QUALITY.append(row)
    parts = [f"K={k} mean {row[k]['psnr']:.2f} / median {row[k]['psnr_median']:.2f}" for k in sorted({1, *KS})]
    bm3d_note = f", CBM3D {row['bm3d']:.2f}" if row["bm3d"] is not None else ""
    print(f"\n{image} sigma {sigma} {SIZE}² {TRANSFORMS}{bm3d_note}: " + "; ".join(parts)
          + f" dB (members {', '.join(f'{p:.2f}' for p in row['members'])}; steps "
          f"{', '.join(map(str, row['steps']))}; {row['seconds']:.0f} s; error correlation "
          f"{row['ceiling']['rho']:.3f}, ceiling of averaging {row['ceiling']['ceiling_over_member0_db']:+.2f} dB "
          f"over member 0)")


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
        rho = sum(r["ceiling"]["rho"] for r in rows) / len(rows)
        ceiling = sum(r["ceiling"]["ceiling_over_member0_db"] for r in rows) / len(rows)
        line.append(f"error correlation {rho:.3f} on average, ceiling of averaging {ceiling:+.2f} dB over K=1")
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
          f"one pack {rows['packed_seconds']:.0f} s: x{rate:.2f} the rate; "
          f"ΔPSNR mean {sum(deltas) / len(deltas):+.3f}, "
          f"worst {max(deltas, key=abs):+.3f} dB")
    benchmark.extra_info.update({"rate_ratio": rate, "delta_db": deltas})
