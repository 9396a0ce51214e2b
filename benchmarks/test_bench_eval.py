"""Benchmarks of automatic stopping: its per-step cost, and the quality benchmark of `dip eval`.

Run:  OMP_NUM_THREADS=1 python -m pytest benchmarks/test_bench_eval.py --benchmark-only

1. ``test_bench_stopper_update``: one ``WindowedVarianceStopper.update`` on a 3x256x256 float32
   output with a full window (W = 100); baselines in the same run: the direct O(W*n) windowed
   variance (what a non-incremental rule costs per step), and one optimisation step of the
   standard skip generator at 256x256 (the cost the rule is added to).  The ratio of interest is
   update / network step.

2. ``test_bench_eval_denoise25``: the quality benchmark of issue "automatic stopping": `dip eval`
   on the five built-in denoise sigma=25 crops at 128x128, the recipe's fixed 3000 steps versus
   auto-stop, over 3 seeds (15 fits of 3000 steps: hours on a 2-core CPU, so it runs only with
   DIP_BENCH_EVAL=1).  Scale it with DIP_BENCH_EVAL_SIZE, _STEPS, _SEEDS (comma list), _IMAGES
   (comma list of built-in names), _WINDOW, _PATIENCE, _DEVICE; _PLOTS (directory) and _CSV
   (file) keep the plots and the table.  Its table is printed and stored in
   the benchmark's extra_info, with: auto within 0.5 dB of the run's peak (count), mean auto
   PSNR and mean fixed PSNR.
"""
import os

import numpy as np
import pytest
import torch

from dip.stopping import WindowedVarianceStopper, windowed_variance

torch.set_num_threads(int(os.environ.get("DIP_BENCH_THREADS", "1")))

SHAPE = (1, 3, 256, 256)
WINDOW = 100


@pytest.fixture(scope="module")
def outputs():
    g = torch.Generator().manual_seed(0)
    return [torch.rand(SHAPE, generator=g) for _ in range(8)]


@pytest.mark.parametrize("policy", ["plain", "window-mean"])
def test_bench_stopper_update(benchmark, outputs, policy):
    """Incremental ES-WMV update (W = 100, 3x256x256), window already full; "window-mean" is
    the policy of averaging recipes (return_mean, return_delay = W - 1)."""
    kw = {"return_mean": True, "return_delay": WINDOW - 1} if policy == "window-mean" else {}
    stopper = WindowedVarianceStopper(window=WINDOW, patience=10 ** 9, **kw)
    for t in range(WINDOW + 5):
        stopper.update(t, outputs[t % len(outputs)])
    state = {"t": WINDOW + 5}

    def step():
        t = state["t"]
        stopper.update(t, outputs[t % len(outputs)])
        state["t"] = t + 1

    benchmark.pedantic(step, rounds=300, iterations=1, warmup_rounds=10)
    benchmark.extra_info.update(threads=torch.get_num_threads(), window=WINDOW, shape=SHAPE, policy=policy)


def test_bench_stopper_direct_baseline(benchmark):
    """Baseline: the windowed variance computed from scratch over the 100 stored outputs."""
    stack = torch.rand((WINDOW,) + SHAPE, generator=torch.Generator().manual_seed(1))
    benchmark.pedantic(windowed_variance, args=(stack,), rounds=5, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(threads=torch.get_num_threads(), window=WINDOW, shape=SHAPE)


def test_bench_network_step_256(benchmark):
    """Baseline: one optimisation step (reg-noise, forward, MSE, backward, Adam) of the denoise
    recipe's generator (the standard skip network) at 256x256, channels_last as the engine runs it."""
    from dip import recipes

    y = torch.rand(SHAPE[1:], generator=torch.Generator().manual_seed(2))
    _, _, net, z = recipes.build(recipes.get("denoise"), y)
    net = net.to(memory_format=torch.channels_last).train()
    z = z.contiguous(memory_format=torch.channels_last)
    target = y[None]
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    noise = torch.empty_like(z)

    def step():
        opt.zero_grad(set_to_none=True)
        out = net(z + noise.normal_() / 30)
        loss = torch.nn.functional.mse_loss(out[..., :256, :256], target)
        loss.backward()
        opt.step()

    benchmark.pedantic(step, rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(threads=torch.get_num_threads())


@pytest.mark.slow
def test_bench_eval_denoise25(benchmark):
    if os.environ.get("DIP_BENCH_EVAL") != "1":
        pytest.skip("hours on a CPU: set DIP_BENCH_EVAL=1 (and DIP_BENCH_EVAL_* to scale it)")
    from dip import evaluate as ev

    size = int(os.environ.get("DIP_BENCH_EVAL_SIZE", "128"))
    steps = int(os.environ.get("DIP_BENCH_EVAL_STEPS", "3000"))
    seeds = [int(s) for s in os.environ.get("DIP_BENCH_EVAL_SEEDS", "0,1,2").split(",")]
    names = os.environ.get("DIP_BENCH_EVAL_IMAGES")
    device = os.environ.get("DIP_BENCH_EVAL_DEVICE", "cpu")
    images = ev.builtin_images(size, names.split(",") if names else None)
    plots = os.environ.get("DIP_BENCH_EVAL_PLOTS")
    window = os.environ.get("DIP_BENCH_EVAL_WINDOW")
    patience = os.environ.get("DIP_BENCH_EVAL_PATIENCE")

    def run():
        return ev.evaluate(["denoise25"], images, steps=steps, seeds=seeds, plots=plots, device=device,
                           stop_window=int(window) if window else None,
                           stop_patience=int(patience) if patience else None)

    rows = benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
    table = ev.format_table(rows)
    print("\n" + table)
    if os.environ.get("DIP_BENCH_EVAL_CSV"):
        ev.write_csv(rows, os.environ["DIP_BENCH_EVAL_CSV"])
    within = sum(1 for r in rows if r["peak_psnr"] - r["auto_psnr"] <= 0.5)
    benchmark.extra_info.update(
        size=size, steps=steps, seeds=seeds, images=[n for n, _ in images], device=device,
        auto_within_half_db_of_peak=f"{within}/{len(rows)}",
        mean_auto_psnr=float(np.mean([r["auto_psnr"] for r in rows])),
        mean_fixed_psnr=float(np.mean([r["fixed_psnr"] for r in rows])),
        mean_peak_psnr=float(np.mean([r["peak_psnr"] for r in rows])),
        mean_auto_steps=float(np.mean([r["auto_steps"] for r in rows])),
        table=table)
