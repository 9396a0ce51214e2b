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


def _child_env(env_isa: str) -> dict[str, str]:
    return dict(os.environ, DIP_CPU_ISA=env_isa, OMP_NUM_THREADS="1",
                PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))


def _child(env_isa: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=_child_env(env_isa), capture_output=True,
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


@pytest.fixture(scope="module")
def copy_runs():
    """copy -> the child pytest run of the native-vs-reference tests forced to that copy, for
    every copy this CPU supports. The children start together, so a second core runs one while
    the first runs another; each is (returncode, stdout, stderr)."""
    if not ops.has_native():
        pytest.skip(f"native library unavailable: {ops.native_status()}")
    selection = "native_matches_reference and not random and not cuda or active_copy"
    started = {copy: subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k",
                                       selection, str(ROOT / "tests" / "ops")], cwd=ROOT, env=_child_env(copy),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for copy in _supported()}
    try:
        outputs = {copy: proc.communicate(timeout=600) for copy, proc in started.items()}
        return {copy: (started[copy].returncode, *outputs[copy]) for copy in started}
    finally:
        for proc in started.values():
            if proc.poll() is None:
                proc.kill()


@pytest.mark.slow
@pytest.mark.parametrize("copy", COPIES)
def test_copy_matches_reference(copy_runs, copy):
    """The native-vs-reference tests of every op, in a child process forced to `copy`."""
    if copy not in copy_runs:
        pytest.skip(f"this CPU lacks the {copy} copy (supports {ops.build_info()['cpu_isas']})")
    returncode, stdout, stderr = copy_runs[copy]
    report = stdout[-4000:] + stderr[-2000:]
    assert returncode == 0, report
    summary = stdout.strip().splitlines()[-1]  # e.g. "87 passed, 64 deselected in 5.2s"
    assert re.search(r"\d+ passed", summary) and "skipped" not in summary, report
