"""Loading of the native library dip._C: status, build information, fallback, requirement."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

import dip.ops as ops
from dip.ops import _loader


def test_native_required_by_environment_is_loaded():
    if not _loader.required() and not ops.has_native():
        pytest.skip(f"{ops.REQUIRE_ENV} not set and no native library: {ops.native_status()}")
    assert ops.has_native(), ops.native_status()
    assert ops.native_status().startswith("loaded from ")


def test_build_info(native):
    info = ops.build_info()
    assert info["torch"] == torch.__version__
    assert info["compiler"] and info["cuda"] == ("none" if torch.version.cuda is None
                                                 else info["cuda"])


def test_registered_ops_are_read_from_the_dispatcher(native):
    """The op list is the library's (csrc/ops/<op>.cpp registers the schemas), and every
    registered op has a fake kernel from its op's module dip/ops/_<op>.py and a CPU kernel."""
    names = _loader.registered_ops()
    assert {"downsample", "downsample_adjoint", "masked_mse", "bn_leaky_relu"} <= set(names)
    for name in names:
        fake = torch._library.simple_registry.singleton.find(f"dip::{name}").fake_impl.kernel
        assert fake is not None, f"dip::{name} has no fake kernel"
        assert f"dip/ops/_{name.removesuffix('_backward').removesuffix('_adjoint')}.py" in (
            fake.source), fake.source
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"dip::{name}", "CPU"), name


_SCRIPT = textwrap.dedent("""
    import importlib, importlib.abc, os, sys
    import torch

    class Block(importlib.abc.MetaPathFinder):
        def __init__(self, error):
            self.error = error
        def find_spec(self, name, path=None, target=None):
            if name != "dip._C":
                return None
            if self.error is None:
                raise ModuleNotFoundError("No module named 'dip._C'", name="dip._C")
            raise ImportError(self.error)

    # 1. library absent: reference fallback, status says why
    sys.meta_path.insert(0, Block(None))
    import dip.ops as ops
    assert not ops.has_native(), ops.native_status()
    assert "dip._C not found" in ops.native_status(), ops.native_status()
    x = torch.rand(1, 2, 16, 16, dtype=torch.float64)
    taps = torch.full((4,), 0.25, dtype=torch.float64)
    y = ops.downsample(x, taps, 4, "none")
    assert torch.allclose(y, torch.nn.functional.avg_pool2d(x, 4)), "reference fallback"
    # 2. required but absent: import fails with the reason
    os.environ["DIP_REQUIRE_NATIVE"] = "1"
    try:
        importlib.reload(ops._loader)
    except ImportError as exc:
        assert "DIP_REQUIRE_NATIVE" in str(exc) and "not found" in str(exc), exc
    else:
        raise AssertionError("no ImportError with DIP_REQUIRE_NATIVE=1")
    # 3. present but broken (e.g. built against another torch): status carries the error
    os.environ["DIP_REQUIRE_NATIVE"] = "0"
    sys.meta_path[0] = Block("undefined symbol: _ZN3c10bogus")
    loader = importlib.reload(ops._loader)
    assert loader.NATIVE is None and "undefined symbol" in loader.STATUS, loader.STATUS
    print("ok")
""")


def test_missing_or_broken_library_is_reported():
    result = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True,
                            timeout=120, env={"PYTHONPATH": ":".join(sys.path),
                                              "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
