"""The CPU kernels' compiled copies (avx512, avx2, baseline): the run-time choice, the
DIP_CPU_ISA switch that forces one, and every copy this CPU supports against the reference.

Each supported copy reruns the op tests' native-vs-reference comparisons (every
``test_*native_matches_reference*`` test under tests/ops, whatever the file) in a child
process started with DIP_CPU_ISA set to it; a copy the CPU lacks is skipped with the reason.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import dip.ops as ops
from dip.ops._loader import NATIVE

ROOT = Path(__file__).resolve().parents[2]
COPIES = ("avx512", "avx2", "baseline")  # best first, as the library chooses
# the CPU features each copy is compiled for (as /proc/cpuinfo names them)
FEATURES = {"avx512": ("avx512f", "avx512vl", "avx512bw", "avx512dq", "avx2", "fma"),
            "avx2": ("avx2", "fma"), "baseline": ()}


def _cpuinfo_flags() -> set[str] | None:
    """The CPU's feature flags on x86-64 Linux, else None (no independent check)."""
    if not (sys.platform.startswith("linux") and os.uname().machine == "x86_64"):
        return None
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


def _supported() -> list[str]:
    return ops.build_info()["cpu_isas"].split(",")


def test_supported_copies_match_the_cpu(native):
    supported = _supported()
    assert supported[-1] == "baseline" and set(supported) <= set(COPIES)
    flags = _cpuinfo_flags()
    if flags is not None:
        assert supported == [c for c in COPIES if set(FEATURES[c]) <= flags]


def test_active_copy_is_the_best_or_the_forced_one(native):
    forced = os.environ.get("DIP_CPU_ISA")
    assert ops.build_info()["cpu_isa"] == (forced or _supported()[0])


@pytest.mark.parametrize("copy", COPIES)
def test_choice_of_a_copy(native, copy):
    # the library's own rule (simd::choose_isa), exposed for this test: it runs on any CPU
    assert NATIVE.choose_cpu_isa("") == _supported()[0]
    if copy in _supported():
        assert NATIVE.choose_cpu_isa(copy) == copy
    else:
        with pytest.raises(RuntimeError, match=f"DIP_CPU_ISA={copy} asks .* supports only"):
            NATIVE.choose_cpu_isa(copy)
    with pytest.raises(RuntimeError, match="DIP_CPU_ISA must be one of avx512, avx2, baseline"):
        NATIVE.choose_cpu_isa("sse5")


def _child(env_isa: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, DIP_CPU_ISA=env_isa, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


_BAD_REQUEST = """
import torch, dip.ops as ops
info = ops.build_info()
assert info["cpu_isa"] == "invalid" and "sse5" in info["cpu_isa_error"], info
x = torch.randn(1, 1, 8, 8)
try:
    ops.masked_mse(x, x, torch.ones(1, 1, 8, 8))
except RuntimeError as exc:
    assert "DIP_CPU_ISA must be one of" in str(exc), exc
else:
    raise AssertionError("an invalid DIP_CPU_ISA ran a kernel")
print("ok")
"""


def test_invalid_request_is_an_error_at_the_first_kernel_call(native):
    run = _child("sse5", "-c", _BAD_REQUEST)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("copy", COPIES)
def test_copy_matches_reference(native, copy):
    """The native-vs-reference tests of every op, in a child process forced to `copy`."""
    if copy not in _supported():
        pytest.skip(f"this CPU lacks the {copy} copy (supports {ops.build_info()['cpu_isas']})")
    selection = "native_matches_reference and not random and not cuda or active_copy"
    run = _child(copy, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", selection,
                 str(ROOT / "tests" / "ops"))
    report = run.stdout[-4000:] + run.stderr[-2000:]
    assert run.returncode == 0, report
    summary = run.stdout.strip().splitlines()[-1]  # e.g. "87 passed, 64 deselected in 5.2s"
    assert re.search(r"\d+ passed", summary) and "skipped" not in summary, report
