"""Images per hour through the engine: one pack of K images (``fit_packed``) against the same
images fitted one at a time (``fit``), end to end, on the CPU or a CUDA device.

``benchmarks/test_bench_packed.py`` times bare steps (``FastStep``) on the CPU; this benchmark
times what a user runs: the engine's whole step (reg noise, forward, loss, backward, Adam,
averaging, the stopping rule's update and, for a pack, its per-member bookkeeping), the single
fit with every device-dependent choice it makes by default (a CUDA graph of its step on a GPU),
the pack with its own (no graph: each member's rule and recovery run eagerly). It is the
measure of item 5b and of the GPU clause of the packing issue (128², K = 32 at least 10× the
rate of one image at a time).

Per size: K different noisy images (smooth test images, sigma 25, each with its own seed) fitted
with the ``denoise`` recipe's generator and settings for a fixed ``DIP_BENCH_RATE_STEPS`` steps
(``stop="steps"``: every fit does the same work; a fit that stops automatically stops the same
way alone and packed). The single fit's ms per step is the mean over ``DIP_BENCH_RATE_SINGLES``
images, each fitted alone; each pack size runs once. Every configuration is run first for a few
steps unmeasured (CUDA context, cuDNN's algorithm search, first-call allocations). Reported:
ms per pack step, images per hour at the recipe's step budget (3600 K / (budget * s per step);
an automatically stopped fit, about a third of the budget, restores about 3x as many), and
``x alone`` = K * (single ms per step) / (pack ms per step), the rate against one at a time.

Environment: ``DIP_BENCH_RATE_DEVICE`` (default ``cuda`` where available, else ``cpu``),
``DIP_BENCH_RATE_SIZES`` (default 128), ``DIP_BENCH_RATE_K`` (default 1,2,4,8,16,32,64 on
CUDA, 1,2,4 on the CPU), ``DIP_BENCH_RATE_STEPS`` (default 200 on CUDA, 20 on the CPU),
``DIP_BENCH_RATE_SINGLES`` (default 3), ``DIP_BENCH_PRECISION`` (default ``auto``: the
engine's choice for denoising on the device), ``DIP_BENCH_THREADS`` (CPU threads, default 2).

    DIP_BENCH_RATE_SIZES=128 PYTHONPATH=. python -m pytest benchmarks/test_bench_pack_rate.py -q -s

Not yet run on a GPU (no device has been lent since the packed engine was written).
"""
from __future__ import annotations

import os

import pytest
import torch

from dip import recipes, runtime
from dip.engine import fit
from dip.engine.packed_loop import fit_packed
from tests import oracle

DEVICE = os.environ.get("DIP_BENCH_RATE_DEVICE", "cuda" if torch.cuda.is_available() else "cpu")
ON_CUDA = DEVICE.startswith("cuda")
SIZES = [int(s) for s in os.environ.get("DIP_BENCH_RATE_SIZES", "128").split(",")]
KS = [int(k) for k in os.environ.get("DIP_BENCH_RATE_K", "1,2,4,8,16,32,64" if ON_CUDA else "1,2,4").split(",")]
STEPS = int(os.environ.get("DIP_BENCH_RATE_STEPS", "200" if ON_CUDA else "20"))
SINGLES = int(os.environ.get("DIP_BENCH_RATE_SINGLES", "3"))
PRECISION = os.environ.get("DIP_BENCH_PRECISION", "auto")
THREADS = int(os.environ.get("DIP_BENCH_THREADS", "2"))
WARM_UP_STEPS = 5


def _observation(size: int, seed: int) -> torch.Tensor:
    """A smooth test image with sigma-25 noise, (3, size, size) float32 in [0, 1]."""
    return oracle.noisy_smooth_image(size, seed=1000 + seed)[1]


def _recipe(steps: int, seed: int = 0) -> recipes.Recipe:
    return recipes.get("denoise", steps=steps, stop="steps", device=DEVICE, precision=PRECISION, seed=seed)


def _single_ms(size: int, image: int, steps: int) -> float:
    recipe = _recipe(steps, seed=image)
    y, physics, generator, z = recipes.build(recipe, _observation(size, image))
    return fit(y, physics, generator, z, recipe.fit).ms_per_step


def _packed_ms(size: int, k: int, steps: int) -> float:
    built = [recipes.build(_recipe(steps, seed=i), _observation(size, i)) for i in range(k)]
    result = fit_packed([b[0] for b in built], [b[1] for b in built], [b[2] for b in built],
                        [b[3] for b in built], _recipe(steps).fit, seeds=list(range(k)))
    return 1000.0 * result.seconds / result.steps_run


@pytest.mark.parametrize("size", SIZES)
def test_pack_rate(benchmark, size):
    if ON_CUDA and not torch.cuda.is_available():
        pytest.skip(f"DIP_BENCH_RATE_DEVICE={DEVICE} but no CUDA device is available")
    runtime.configure_allocator()
    torch.set_num_threads(THREADS)
    budget = recipes.get("denoise").fit.steps
    rows: dict = {}

    def run() -> None:
        _single_ms(size, 0, WARM_UP_STEPS)
        single = sum(_single_ms(size, i, STEPS) for i in range(SINGLES)) / SINGLES
        rows["alone"] = {"k": 1, "ms": single}
        for k in KS:
            _packed_ms(size, k, WARM_UP_STEPS)
            rows[k] = {"k": k, "ms": _packed_ms(size, k, STEPS)}
        for row in rows.values():
            row["images_per_hour"] = 3600.0 * row["k"] / (budget * row["ms"] / 1e3)
            row["x_alone"] = row["k"] * single / row["ms"]

    benchmark.pedantic(run, rounds=1, iterations=1)
    device = torch.cuda.get_device_name() if ON_CUDA else f"CPU ({torch.backends.cpu.get_cpu_capability()}, " \
        f"{THREADS} threads)"
    print(f"\n{size}², {DEVICE} = {device}, precision {PRECISION}, {STEPS} steps a fit, "
          f"images per hour at the denoise budget of {budget} steps:")
    print(f"{'fit':>10}{'ms/step':>10}{'images/h':>10}{'x alone':>9}")
    for name, row in rows.items():
        label = "alone" if name == "alone" else f"pack {name}"
        print(f"{label:>10}{row['ms']:>10.1f}{row['images_per_hour']:>10.1f}{row['x_alone']:>9.2f}")
    benchmark.extra_info.update({str(name): row for name, row in rows.items()})
