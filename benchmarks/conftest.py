"""Benchmark-wide fixtures: results shared across a run, and a summary table of step speed.

``step_results`` (session) maps (configuration, size) to the median ms/step and its extra
information; at the end of the run the table of ms, GFLOP/s and ratios to the baselines of the
same size (``original``: the original-style step as shipped, ``original+malloc``: with the
allocator setting) is printed.
"""
from __future__ import annotations

import pytest

_RESULTS: dict = {}
_BASELINES = ("original", "original+malloc")


@pytest.fixture(scope="session")
def step_results() -> dict:
    return _RESULTS


def _summary_lines(results: dict) -> list[str]:
    lines = [f"{'config':<18}{'size':>6}{'ms/step':>10}{'GFLOP':>8}{'GFLOP/s':>9}"
             f"{'x orig':>8}{'x orig+m':>9}{'peak MiB':>10}{'thr':>5}"]
    for (config, size), r in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        ratios = []
        for base in _BASELINES:
            b = results.get((base, size))
            ratios.append(f"{b['ms'] / r['ms']:.2f}" if b else "-")
        peak = f"{r['peak_mib']:.0f}" if "peak_mib" in r else "-"
        lines.append(f"{config:<18}{size:>6}{r['ms']:>10.1f}{r['gflop']:>8.1f}"
                     f"{r['gflop'] / r['ms'] * 1e3:>9.1f}{ratios[0]:>8}{ratios[1]:>9}{peak:>10}"
                     f"{r['threads']:>5}")
    return lines


def pytest_terminal_summary(terminalreporter):
    if not _RESULTS:
        return
    terminalreporter.section("one optimisation step (ratios: baseline ms / this ms, same run)")
    for line in _summary_lines(_RESULTS):
        terminalreporter.write_line(line)
