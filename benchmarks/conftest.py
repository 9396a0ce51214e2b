"""Benchmark-wide fixtures: results shared across a run, and a summary table of step speed.

``step_results`` (session) maps (configuration, size) to the median ms/step and its extra
information; at the end of the run the table of ms, GFLOP/s and ratios to the baselines of the
same size (``original``: the original's step as shipped, ``original+malloc``: with the
allocator setting) is printed. ``packed_results`` (benchmarks/test_bench_packed.py) maps
(size, precision, threads, K, configuration) to ms per step, the ratio to K separate steps and
images per hour;
``stopper_results`` (benchmarks/test_bench_stopping_packed.py) maps (K, policy) to the ms of K
single stopping rules, of one vectorised rule, and their ratio.
Benchmarks marked ``cuda`` are skipped without a CUDA device.
"""
from __future__ import annotations

import pytest

from tests import markers

_RESULTS: dict = {}
_CUDA_RESULTS: dict = {}
_PACKED_RESULTS: dict = {}
_STOPPER_RESULTS: dict = {}
_BASELINES = ("original", "original+malloc")


@pytest.fixture(scope="session")
def step_results() -> dict:
    return _RESULTS


@pytest.fixture(scope="session")
def cuda_results() -> dict:
    """(group, configuration) -> {"ms": ..., ...} of benchmarks/test_bench_cuda.py."""
    return _CUDA_RESULTS


@pytest.fixture(scope="session")
def packed_results() -> dict:
    """(size, precision, threads, K, configuration) -> {"ms", "ms_per_member", "x_separate", ...}."""
    return _PACKED_RESULTS


@pytest.fixture(scope="session")
def stopper_results() -> dict:
    """(K, policy) -> {"singles_ms", "packed_ms", "x_singles", ...}."""
    return _STOPPER_RESULTS


def _stopper_summary_lines(results: dict) -> list[str]:
    lines = [f"{'K':>4}  {'policy':<12}{'singles ms':>11}{'packed ms':>10}{'x singles':>10}"]
    for (k, policy), r in sorted(results.items()):
        lines.append(f"{k:>4}  {policy:<12}{r['singles_ms']:>11.3f}{r['packed_ms']:>10.3f}{r['x_singles']:>10.2f}")
    return lines


def _packed_summary_lines(results: dict) -> list[str]:
    lines = [f"{'size':>5}{'prec':>6}{'thr':>4}{'K':>4}  {'config':<13}{'ms/step':>9}"
             f"{'ms/member':>10}{'x separate':>11}{'images/h':>10}"]
    for (size, prec, thr, k, config), r in sorted(results.items()):
        lines.append(f"{size:>5}{prec:>6}{thr:>4}{k:>4}  {config:<13}{r['ms']:>9.1f}"
                     f"{r['ms_per_member']:>10.1f}{r['x_separate']:>11.2f}{r['images_per_hour']:>10.2f}")
    return lines


def _cuda_summary_lines(results: dict) -> list[str]:
    """Per group: ms, ratio to the group's ``original`` row, TFLOP/s and peak memory if known."""
    lines = [f"{'group':<30}{'config':<12}{'ms':>10}{'x orig':>8}{'TFLOP/s':>9}{'peak MiB':>10}"]
    for (group, config), r in results.items():
        base = results.get((group, "original"))
        ratio = f"{base['ms'] / r['ms']:.2f}" if base and r["ms"] == r["ms"] else "-"
        tflops = f"{r['tflops']:.1f}" if "tflops" in r else "-"
        peak = f"{r['peak_mib']:.0f}" if "peak_mib" in r else "-"
        lines.append(f"{group:<30}{config:<12}{r['ms']:>10.3f}{ratio:>8}{tflops:>9}{peak:>10}"
                     + (f"  ({r['error']})" if "error" in r else ""))
    return lines


def _summary_lines(results: dict) -> list[str]:
    lines = [f"{'config':<18}{'size':>6}{'ms/step':>10}{'GFLOP':>8}{'GFLOP/s':>9}"
             f"{'x orig':>8}{'x orig+m':>9}{'eff':>6}{'peak MiB':>10}{'thr':>5}"]
    for (config, size), r in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        ratios = []
        for base in _BASELINES:
            b = results.get((base, size))
            ratios.append(f"{b['ms'] / r['ms']:.2f}" if b else "-")
        floor = results.get((r.get("floor"), size))
        eff = f"{floor['ms'] / r['ms']:.0%}" if floor else "-"  # same FLOPs: a ratio of times
        peak = f"{r['peak_mib']:.0f}" if "peak_mib" in r else "-"
        lines.append(f"{config:<18}{size:>6}{r['ms']:>10.1f}{r['gflop']:>8.1f}"
                     f"{r['gflop'] / r['ms'] * 1e3:>9.1f}{ratios[0]:>8}{ratios[1]:>9}{eff:>6}{peak:>10}"
                     f"{r['threads']:>5}")
    return lines


def pytest_collection_modifyitems(config, items):
    markers.skip_cuda_without_device(items)


def pytest_terminal_summary(terminalreporter):
    if _CUDA_RESULTS:
        device = next((r["device"] for r in _CUDA_RESULTS.values() if "device" in r), "CUDA")
        terminalreporter.section(f"GPU timings on {device} (ratios: original ms / this ms, same run)")
        for line in _cuda_summary_lines(_CUDA_RESULTS):
            terminalreporter.write_line(line)
    if _PACKED_RESULTS:
        cpu = next(iter(_PACKED_RESULTS.values()))["cpu"]
        terminalreporter.section(f"K fits per step, CPU {cpu} (x separate: K separate steps' ms / "
                                 "this ms, same run)")
        for line in _packed_summary_lines(_PACKED_RESULTS):
            terminalreporter.write_line(line)
    if _STOPPER_RESULTS:
        r = next(iter(_STOPPER_RESULTS.values()))
        terminalreporter.section(f"stopping rules of K members per update, CPU {r['cpu']}, {r['threads']} thread(s) "
                                 "(x singles: K single rules' ms / one vectorised rule's ms, same run)")
        for line in _stopper_summary_lines(_STOPPER_RESULTS):
            terminalreporter.write_line(line)
    if not _RESULTS:
        return
    terminalreporter.section("one optimisation step (ratios: baseline ms / this ms, same run)")
    for line in _summary_lines(_RESULTS):
        terminalreporter.write_line(line)
