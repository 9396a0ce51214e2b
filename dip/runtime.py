"""Process-level settings and the hardware-dependent choices of the fit.

Deep Image Prior spends its whole run in one step (forward, loss, backward, Adam) repeated
thousands of times, so this module gathers what makes that step cheap:

* :func:`configure_allocator` — glibc ``mallopt``: raise the mmap threshold and the trim
  threshold so that large CPU tensors are served from the heap instead of fresh ``mmap``
  regions that are page-faulted anew on every allocation. The standard skip network's
  activations at 256² are 32 MiB each (128 channels, fp32), at or above glibc's largest dynamic
  threshold, so with the default allocator every activation, every gradient and every
  temporary of that size costs a round of page faults on every step. Process-wide; call it
  once at start-up of a fitting process (the fit/CLI entry points).
* :func:`set_threads` — intra-op thread count (``torch.set_num_threads``) with checking.
* :func:`autocast_context` — bf16 autocast for the generator ("fp32" → no autocast).
  :func:`bf16_is_native` says whether the CPU has bf16 arithmetic (AVX512-BF16 or AMX); on CPUs
  without it, oneDNN emulates bf16 and bf16 convolutions are many times *slower* than fp32.
* :func:`use_channels_last` — whether to run the generator in channels_last (NHWC) layout: it
  pays on AVX-512 CPUs, for bf16 and on CUDA, and costs ≈ 2x on AVX2-only CPUs in fp32.

The step itself (fused Adam, :class:`FastStep`) lives in :mod:`dip.engine.step`;
``dip.runtime.FastStep``, ``make_adam`` and ``load_optimizer_state`` remain as aliases.

Each CPU-dependent choice has one switch that forces it, so that tests cover every branch on
any CPU: ``DIP_CHANNELS_LAST=0|1`` (:func:`use_channels_last`), ``DIP_BF16_NATIVE=0|1``
(:func:`bf16_is_native`), ``DIP_CPU_ISA`` (the native kernels' instruction-set copy, see
``dip.ops``). Unset (or ``auto``) means: decide from the hardware.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import platform
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from dip.engine.config import PRECISIONS as CONFIG_PRECISIONS
from dip.switches import forced_choice

log = logging.getLogger(__name__)

__all__ = [
    "PRECISIONS",
    "autocast_context",
    "bf16_is_native",
    "check_precision",
    "choose_precision",
    "configure_allocator",
    "forced_choice",
    "glibc_version",
    "large_allocations_mmapped",
    "set_threads",
    "use_channels_last",
]

PRECISIONS = ("fp32", "bf16")
#: what a fit may ask for: a precision, or "auto" (``choose_precision``); FitConfig's list
PRECISION_CHOICES = CONFIG_PRECISIONS
#: tasks for which bf16 is proven as good as fp32, the only ones for which "auto" picks bf16: a
#: task is proven when its returned images in bf16 are within 0.1 dB of fp32 on average and
#: 0.3 dB at worst (|ΔPSNR| over the built-in images x 2 seeds at 128² where bf16 is native,
#: benchmarks/test_bench_precision.py). Denoising is: sigma 25, the recipe's automatic stopping,
#: 128² crops, AMX CPU, one thread a fit: mean |ΔPSNR| 0.05 dB, worst 0.15, mean ΔPSNR +0.01,
#: 2.5x faster a step (README, "Precision"; at 64² the same check gave 0.24 / 0.56, the rounding
#: control alone 0.19 / 0.42: the smaller the image, the more any change of rounding moves a
#: result). Super-resolution and inpainting failed the check (``BF16_FAILED_TASKS``); the other
#: tasks are not measured.
BF16_PROVEN_TASKS: frozenset[str] = frozenset({"denoise"})
#: tasks for which the same check failed, with what it measured (the reason auto gives for fp32).
#: Super-resolution x4: 128² crops of the five built-in images, one seed, 1000 steps, AMD EPYC
#: (Zen 5, AVX512-BF16 without AMX), one thread a fit: |ΔPSNR| 0.09, 0.09, 0.40, 0.11, 0.04 dB
#: (bf16 2.1x faster a fit). Inpainting (text mask), the same settings, four of the images:
#: +0.29, -0.04, -0.19, -0.66 dB (bf16 2.0x faster a fit).
BF16_FAILED_TASKS: Mapping[str, str] = MappingProxyType({
    "sr": "bf16 missed fp32's quality for sr in the check (x4, 128²: mean |ΔPSNR| 0.15 dB, worst 0.40; "
          "the bar is 0.1 / 0.3)",
    "inpaint": "bf16 missed fp32's quality for inpaint in the check (text mask, 128²: mean |ΔPSNR| "
               "0.30 dB, worst 0.66; the bar is 0.1 / 0.3)",
})

# glibc mallopt parameter numbers (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

# 1 GiB: every activation of the paper's networks up to 1024² fp32 stays on the heap.
DEFAULT_MMAP_THRESHOLD = 1 << 30
# Just under 2 GiB (mallopt takes an int): freed memory at the top of the heap is kept for the
# next step instead of being returned to the system and faulted in again.
DEFAULT_TRIM_THRESHOLD = (1 << 31) - 1


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def glibc_version() -> str | None:
    """The running glibc's version ("2.36"), or None when the C library is not glibc."""
    if platform.system() != "Linux":
        return None
    libc = _libc()
    if libc is None or not hasattr(libc, "gnu_get_libc_version"):
        return None
    fn = libc.gnu_get_libc_version
    fn.restype = ctypes.c_char_p
    return fn().decode()


def configure_allocator(mmap_threshold: int = DEFAULT_MMAP_THRESHOLD,
                        trim_threshold: int = DEFAULT_TRIM_THRESHOLD) -> bool:
    """Raise glibc malloc's mmap and trim thresholds (bytes) for this whole process.

    Allocations below ``mmap_threshold`` come from the heap and freed heap memory is kept up to
    ``trim_threshold``, so the large tensors that a fit allocates and frees on every step reuse
    memory that is already mapped instead of faulting in fresh pages. Measured on the
    original-style denoise step (``benchmarks/test_bench_step.py``, 2 threads, AVX2 CPU):
    1.10x faster at 128², 1.51x at 256² (32 MiB activations), 2.43x at 512² (128 MiB). The
    price: peak RSS grows (256²: 1.14 GiB instead of 1.0; 512²: 3.3 GiB instead of 2.7), and up
    to ``trim_threshold`` bytes of freed memory stay with the process.

    The setting cannot be undone: glibc's default threshold is dynamic, and setting it by hand
    switches the dynamic adjustment off for the rest of the process.

    Returns True when both settings were applied; False (with a logged reason, and nothing
    changed) when the C library is not glibc or mallopt refused a value.
    Raises ValueError for a threshold outside 0 .. 2**31 - 1.
    """
    for name, value in (("mmap_threshold", mmap_threshold), ("trim_threshold", trim_threshold)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int number of bytes, got {value!r}")
        if not 0 <= value <= (1 << 31) - 1:
            raise ValueError(f"{name} must be between 0 and 2**31 - 1 bytes (mallopt takes an "
                             f"int), got {value}")
    version = glibc_version()
    if version is None:
        log.info("allocator not configured: the C library is not glibc (platform %s)",
                 platform.system())
        return False
    libc = _libc()
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    ok_mmap = libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1
    ok_trim = libc.mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1
    if not (ok_mmap and ok_trim):
        log.info("allocator only partly configured: glibc %s refused mallopt "
                 "(mmap threshold %s, trim threshold %s)", version,
                 "ok" if ok_mmap else "refused", "ok" if ok_trim else "refused")
        return False
    log.debug("glibc %s: mmap threshold %d bytes, trim threshold %d bytes",
              version, mmap_threshold, trim_threshold)
    return True


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def large_allocations_mmapped(nbytes: int = 64 << 20) -> bool | None:
    """Whether a CPU tensor of ``nbytes`` gets its own mmap region right now (glibc only).

    True for glibc's default settings (threshold at most 32 MiB), False after
    :func:`configure_allocator`; None when it cannot be told (not glibc, or glibc < 2.33
    without ``mallinfo2``). Allocates and frees one tensor of ``nbytes``.
    """
    libc = _libc() if glibc_version() is not None else None
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    libc.mallinfo2.restype = _Mallinfo2
    before = libc.mallinfo2().hblkhd
    t = torch.empty(nbytes, dtype=torch.uint8)
    after = libc.mallinfo2().hblkhd
    del t
    return after - before >= nbytes


def set_threads(n: int | None) -> int:
    """Set torch's intra-op thread count; ``None`` keeps torch's default (OMP_NUM_THREADS).

    Returns the thread count in effect. Raises ValueError for n < 1, TypeError for a non-int.
    More threads than free cores is slow: two OpenMP threads on two busy cores can run two
    orders of magnitude slower than one.
    """
    if n is None:
        return torch.get_num_threads()
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"threads must be an int >= 1 or None, got {n!r}")
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    torch.set_num_threads(n)
    return torch.get_num_threads()


def check_precision(precision: str) -> str:
    """Return ``precision`` if it is "fp32" or "bf16", else raise ValueError."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    return precision


def choose_precision(requested: str, device: torch.device | str = "cpu",
                     task: str | None = None) -> tuple[str, str]:
    """The precision a fit runs at, and why, for ``requested`` "auto", "fp32" or "bf16".

    "auto" is bf16 where the hardware does bf16 natively (``bf16_is_native``) and the task is
    in ``BF16_PROVEN_TASKS`` (``task`` None, the engine called without a task: the hardware
    alone decides), else fp32 (the reason says what the check measured for a task in
    ``BF16_FAILED_TASKS``, that bf16 is not proven for any other). Returns
    (precision, reason), e.g. ("bf16", "auto: bf16 is native on this cpu").
    """
    if requested in PRECISIONS:
        return requested, "asked for"
    if requested != "auto":
        raise ValueError(f"precision must be one of {list(PRECISION_CHOICES)}, got {requested!r}")
    kind = torch.device(device).type
    if not bf16_is_native(device):
        return "fp32", f"auto: this {kind} has no native bf16 arithmetic"
    if task in BF16_FAILED_TASKS:
        return "fp32", f"auto: {BF16_FAILED_TASKS[task]}"
    if task is not None and task not in BF16_PROVEN_TASKS:
        return "fp32", f"auto: bf16 is not proven as good as fp32 for {task}"
    proven = "" if task is None else f" and proven as good as fp32 for {task}"
    return "bf16", f"auto: bf16 is native on this {kind}{proven}"


def bf16_is_native(device: torch.device | str = "cpu") -> bool:
    """Whether bf16 convolutions run on bf16 hardware on ``device``.

    CPU: AVX512-BF16 or AMX (without them oneDNN emulates bf16: on an AVX2-only CPU a bf16
    3x3 conv ran 9x slower than fp32 channels_last and over 100x slower NCHW, and the whole
    denoise step at 256² 18x slower than fp32).
    CUDA: compute capability 8.0 or newer.
    ``DIP_BF16_NATIVE=0|1`` forces the answer for CPUs (tests use it to cover both branches).
    """
    device = torch.device(device)
    if device.type == "cpu":
        forced = forced_choice("DIP_BF16_NATIVE")
        if forced is not None:
            return forced
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, name, lambda: False)() for name in checks)


def autocast_context(precision: str, device: torch.device | str = "cpu"):
    """Context manager running the enclosed ops at ``precision`` on ``device``'s type.

    "fp32": ``contextlib.nullcontext()``; "bf16": ``torch.autocast(device_type, torch.bfloat16)``
    (convolutions and matmuls in bf16, parameters stay fp32). Raises ValueError for another
    precision.
    """
    check_precision(precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def use_channels_last(generator: nn.Module, precision: str = "fp32",
                      device: torch.device | str = "cpu", optimizer: str = "adam") -> bool:
    """Whether the fast path should run ``generator`` in channels_last (NHWC) layout.

    False for LBFGS (it flattens gradients with ``view``, which needs NCHW parameters) and for
    networks without 2-D convolutions. CUDA: True. CPU: True for bf16 (oneDNN's bf16
    convolutions need NHWC: NCHW bf16 ran over 100x slower than fp32 on an AVX2 CPU), and for
    fp32 only on CPUs with AVX-512 (torch's CPU capability "AVX512"): there a 3x3 conv
    132→128 at 256² forward+backward ran ≈ 1.4x faster channels_last, while on an AVX2-only CPU
    (2 threads) the same conv took 1448 ms channels_last against 593 ms NCHW (oneDNN's NHWC
    weight gradient: ≈ 1320 ms against ≈ 270 ms), and torch's channels_last BatchNorm is less
    accurate in fp32.

    ``DIP_CHANNELS_LAST=0|1`` forces the layout for the CPU and CUDA alike (LBFGS and networks
    without convolutions still get NCHW), so tests cover both layouts on any machine.
    """
    check_precision(precision)
    if optimizer == "lbfgs":
        return False
    if not any(isinstance(m, nn.Conv2d) for m in generator.modules()):
        return False
    device = torch.device(device)
    forced = forced_choice("DIP_CHANNELS_LAST")
    if forced is not None and device.type in ("cpu", "cuda"):
        return forced
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    if precision == "bf16":
        return True
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


_MOVED_TO_ENGINE = ("FastStep", "make_adam", "load_optimizer_state")


def __getattr__(name: str) -> Any:
    """``dip.runtime.FastStep`` (and ``make_adam``, ``load_optimizer_state``): their home is
    :mod:`dip.engine.step`; imported on first use, since that module builds on this one."""
    if name in _MOVED_TO_ENGINE:
        from dip.engine import step

        return getattr(step, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
