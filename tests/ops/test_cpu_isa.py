"""The CPU kernels' two compiled copies: AVX2+FMA (chosen at run time where the CPU has it) and
the baseline ISA (forced with DIP_CPU_ISA=baseline). The comparisons against the reference
run again in a child process that uses the baseline copies."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path


import dip.ops as ops

ROOT = Path(__file__).resolve().parents[2]


def _cpu_has_avx2_fma() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx2" in flags and " fma" in flags


def test_cpu_isa_reported(native):
    isa = ops.build_info()["cpu_isa"]
    if os.environ.get("DIP_CPU_ISA") == "baseline":
        assert isa == "baseline"
    elif sys.platform.startswith("linux") and os.uname().machine == "x86_64":
        assert isa == ("avx2" if _cpu_has_avx2_fma() else "baseline")
    else:
        assert isa in ("avx2", "baseline")


def test_baseline_kernels_match_reference(native):
    """The native-vs-reference tests of the three ops, in a child process with the baseline
    kernels (on this CPU the parent runs the AVX2 ones)."""
    tests = ROOT / "tests" / "ops"
    env = dict(os.environ, DIP_CPU_ISA="baseline", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    selection = ("native_matches_reference and not random or cpu_isa_reported")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", selection,
           str(tests / "test_downsample.py"), str(tests / "test_masked_mse.py"),
           str(tests / "test_bn_leaky_relu.py"), str(tests / "test_cpu_isa.py")]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    report = run.stdout[-4000:] + run.stderr[-2000:]
    assert run.returncode == 0, report
    summary = run.stdout.strip().splitlines()[-1]  # e.g. "87 passed, 64 deselected in 5.2s"
    assert re.search(r"\d+ passed", summary) and "skipped" not in summary, report
