"""Build of the optional native library ``dip._C`` (metadata lives in pyproject.toml).

The extension holds the C++ (and, when possible, CUDA) kernels of ``torch.ops.dip.*``. CUDA
sources are compiled when the torch used for the build has CUDA (``torch.version.cuda``) and an
nvcc of the same major version exists under ``CUDA_HOME``; a GPU is not needed. When the build
fails (no C++ compiler, torch missing) the package still installs as pure PyTorch and
``dip.ops.native_status()`` reports why. Environment: ``DIP_FORCE_CPU=1`` skips CUDA sources;
``DIP_REQUIRE_NATIVE=1`` makes a failed build an error.
"""
from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
import warnings

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join("csrc")


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _sources(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _nvcc_version(cuda_home: str) -> str | None:
    nvcc = os.path.join(cuda_home, "bin", "nvcc")
    if not os.path.exists(nvcc):
        return None
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60,
                             check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"release (\d+\.\d+)", out)
    return match.group(1) if match else None


def _openmp(torch_module) -> tuple[list[str], list[str]]:
    """Compile and link flags that make ``at::parallel_for`` in the CPU kernels parallel.

    ATen's parallel_for is a header template: compiled without OpenMP it runs its whole range
    on the calling thread, whatever ``torch.get_num_threads()`` says. The kernels are compiled
    with -fopenmp and linked against the OpenMP runtime torch itself loads (the libgomp in
    torch/lib, by path, so that its soname is recorded and no second runtime with its own
    thread count is loaded); the system's libgomp where torch ships none. Linux only: elsewhere
    the kernels stay single-threaded."""
    if not sys.platform.startswith("linux"):
        return [], []
    torch_lib = os.path.join(os.path.dirname(torch_module.__file__), "lib")
    bundled = sorted(glob.glob(os.path.join(torch_lib, "libgomp*.so*")))
    return ["-fopenmp"], ([bundled[0]] if bundled else ["-fopenmp"])


def _use_cuda(torch_module, cuda_home: str | None) -> tuple[bool, str]:
    """Whether to compile CUDA sources, decided from the toolchain (never from a GPU)."""
    from packaging.version import Version

    if _truthy("DIP_FORCE_CPU"):
        return False, "DIP_FORCE_CPU is set"
    if torch_module.version.cuda is None:
        return False, "the installed torch has no CUDA"
    if cuda_home is None:
        return False, "CUDA_HOME / nvcc not found"
    nvcc = _nvcc_version(cuda_home)
    if nvcc is None:
        return False, f"no usable nvcc under {cuda_home}"
    if Version(nvcc).major != Version(torch_module.version.cuda).major:
        return False, f"nvcc {nvcc} does not match torch's CUDA {torch_module.version.cuda}"
    return True, f"nvcc {nvcc}"


def _extensions_and_cmdclass():
    try:
        import torch
        from torch.utils.cpp_extension import (CUDA_HOME, BuildExtension, CppExtension,
                                               CUDAExtension)
    except ImportError as exc:  # torch absent at build time: pure-Python install
        warnings.warn(f"dip: torch is not importable at build time ({exc}); installing without "
                      "the native library dip._C", stacklevel=1)
        return [], {}

    class OptionalBuildExtension(BuildExtension):
        """Builds dip._C, but lets the install go on without it when compiling fails."""

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as exc:  # noqa: BLE001 - any compiler/toolchain failure
                if _truthy("DIP_REQUIRE_NATIVE"):
                    raise
                warnings.warn(f"dip: building the native library {ext.name} failed ({exc}); "
                              "installing the pure-PyTorch fallback. dip.ops.native_status() "
                              "will say the library is missing.", stacklevel=1)

        def run(self):
            try:
                super().run()
            except Exception as exc:  # noqa: BLE001 - e.g. no compiler found at all
                if _truthy("DIP_REQUIRE_NATIVE"):
                    raise
                warnings.warn(f"dip: the native library could not be built ({exc}); "
                              "installing the pure-PyTorch fallback.", stacklevel=1)

    # per op: ops/<op>.cpp (schemas, autograd), cpu/<op>.cpp, cuda/<op>.cu (device kernels)
    cxx_sources = (_sources("csrc/*.cpp") + _sources("csrc/common/*.cpp")
                   + _sources("csrc/ops/*.cpp") + _sources("csrc/cpu/*.cpp"))
    with_cuda, why = _use_cuda(torch, CUDA_HOME)
    defines = [("DIP_TORCH_VERSION", f'"{torch.__version__}"')]
    # -fno-trapping-math lets the compiler vectorise selects (LeakyReLU); no value changes. No
    # -march flags: the CPU kernels' AVX2 and AVX-512 copies carry per-function target
    # attributes and are chosen at run time (csrc/common/simd.h)
    cxx_flags = ["-O3", "-g0", "-fno-trapping-math"] if os.name != "nt" else ["/O2"]
    openmp_compile, openmp_link = _openmp(torch)
    cxx_flags += openmp_compile
    kwargs = dict(include_dirs=[os.path.join(ROOT, "csrc")], extra_link_args=openmp_link)
    if with_cuda:
        defines += [("DIP_WITH_CUDA", None), ("DIP_CUDA_VERSION", f'"{torch.version.cuda}"')]
        ext = CUDAExtension(
            "dip._C", cxx_sources + _sources("csrc/cuda/*.cu"), define_macros=defines,
            extra_compile_args={"cxx": cxx_flags,
                                "nvcc": ["-O3", "--expt-relaxed-constexpr"]},
            **kwargs)
    else:
        if torch.version.cuda is not None:
            warnings.warn(f"dip: building CPU kernels only ({why})", stacklevel=1)
        ext = CppExtension("dip._C", cxx_sources, define_macros=defines,
                           extra_compile_args={"cxx": cxx_flags}, **kwargs)
    cmdclass = {"build_ext": OptionalBuildExtension.with_options(use_ninja=True)}
    return [ext], cmdclass


EXT_MODULES, CMDCLASS = _extensions_and_cmdclass()

setup(ext_modules=EXT_MODULES, cmdclass=CMDCLASS)
