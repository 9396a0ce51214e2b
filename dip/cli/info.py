"""``dip info``: version, recipes and packages without loading torch (well under a second);
``dip info --full`` also loads torch and the native library: native ops, threads, CUDA, the
CPU's choices, the nets."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

from dip.cli.errors import EXIT_OK


def example_image_path() -> Path:
    """Path of the bundled example image (96x96 RGB PNG, public domain; see dip/data/README.md)."""
    return Path(__file__).resolve().parents[1] / "data" / "astronaut.png"


def native_status() -> tuple[bool, str]:
    """Whether the native ops are loaded, and ``dip.ops.native_status()``'s account of it."""
    try:
        from dip import ops

        return bool(ops.has_native()), str(ops.native_status())
    except Exception as exc:  # reporting must not fail a finished fit
        return False, f"unknown ({exc})"


def recipe_settings(recipe) -> dict[str, Any]:
    """What ``dip info`` says of a recipe: its task, network, steps, learning rate and stopping rule."""
    return {"task": recipe.task, "net": recipe.net.get("name"), "steps": recipe.fit.steps,
            "lr": recipe.fit.lr, "stop": recipe.fit.stop}


def native_library_file() -> str | None:
    """Path of the built native library ``dip._C`` next to the package, or None (not loaded)."""
    package = Path(__file__).resolve().parents[1]
    found = sorted(package.glob("_C.*.so")) + sorted(package.glob("_C.*.pyd"))
    return str(found[0]) if found else None


def quick_info_dict() -> dict[str, Any]:
    """What ``dip info`` shows: nothing that needs torch (its version is read from the
    package metadata, the native library is found, not loaded)."""
    from dip._version import __version__
    from dip.recipe_table import _table

    table = _table()
    return {
        "dip": __version__,
        "python": platform.python_version(),
        "torch": _version("torch"),
        "native_library": native_library_file(),
        "cpu_count": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "example_image": str(example_image_path()),
        "recipes": list(table),
        "recipe_settings": {name: recipe_settings(r) for name, r in table.items()},
        "packages": {name: _version(name) for name in DEPENDENCIES},
        "optional": {name: _version(name) for name in OPTIONAL},
    }


def info_dict() -> dict[str, Any]:
    """What ``dip info --full`` shows."""
    import torch

    from dip._version import __version__

    native, why = native_status()
    cuda = torch.cuda.is_available()
    out: dict[str, Any] = {
        "dip": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "native_ops": native,
        "native_status": why,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu_count": os.cpu_count(),
        "cuda_available": cuda,
        "cuda_version": torch.version.cuda,
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "example_image": str(example_image_path()),
    }
    try:
        from dip import models, recipes

        out["recipes"] = recipes.names()
        out["recipe_settings"] = {name: recipe_settings(recipes.get(name)) for name in recipes.names()}
        out["nets"] = models.names()
    except Exception as exc:  # info must work on a damaged install
        out["recipes_error"] = str(exc)
    out["cpu"] = cpu_choices()
    out["packages"] = {name: _version(name) for name in DEPENDENCIES}
    out["optional"] = {name: _version(name) for name in OPTIONAL}
    return out


# dependencies whose presence the user may want to see; optional packages with their extra
DEPENDENCIES = ("onnx", "onnxscript", "onnxruntime", "safetensors", "tifffile", "imageio")
OPTIONAL = {"ray": "dip[ray]", "bm3d": "dip[bm3d]"}


def _version(name: str) -> str | None:
    """The installed version of distribution ``name`` (read from its metadata, not imported)."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cpu_choices() -> dict[str, Any]:
    """The hardware-dependent choices of a CPU fit and the switches that force them: torch's
    CPU capability, the native kernels' ISA copy, native bf16, channels_last for fp32."""
    import torch

    from dip import ops, runtime

    probe = torch.nn.Conv2d(1, 1, 1)
    info = ops.build_info() if ops.has_native() else {}
    choices: dict[str, Any] = {"capability": torch.backends.cpu.get_cpu_capability(),
                               "kernel_isa": info.get("cpu_isa"),
                               "kernel_threads": info.get("cpu_threads")}
    try:
        choices["bf16_native"] = runtime.bf16_is_native("cpu")
        choices["channels_last_fp32"] = runtime.use_channels_last(probe, "fp32", "cpu")
        choices["precision_auto"], choices["precision_auto_reason"] = runtime.choose_precision("auto", "cpu")
        choices["precision_auto_bf16_tasks"] = sorted(runtime.BF16_PROVEN_TASKS)
    except ValueError as exc:  # a bad DIP_* switch
        choices["error"] = str(exc)
    choices["forced"] = {k: os.environ[k] for k in ("DIP_CHANNELS_LAST", "DIP_BF16_NATIVE", "DIP_CPU_ISA",
                                                      "DIP_BRANCH_FREE")
                         if os.environ.get(k)}
    return choices


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="version, recipes, packages (--full: native ops, threads, CUDA, CPU)")
    p.add_argument("--full", action="store_true",
                   help="also load torch and the native library: native ops, threads, CUDA, the CPU's choices")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.add_argument("--debug", action="store_true")


def _lines(data: dict[str, Any]) -> list:
    lines = [
        f"dip {data['dip']}  (python {data['python']}, torch {data['torch']})",
        "native ops: " + (data["native_status"] if data["native_ops"] else f"not loaded — {data['native_status']}"),
        f"threads: {data['threads']} (interop {data['interop_threads']}, OMP_NUM_THREADS="
        f"{data['omp_num_threads'] or 'unset'}, {data['cpu_count']} CPUs)",
        "CUDA: " + (f"available, CUDA {data['cuda_version']}: {', '.join(data['cuda_devices'])}"
                    if data["cuda_available"] else
                    f"not available (torch built with CUDA {data['cuda_version']})" if data["cuda_version"]
                    else "not available (CPU-only torch)"),
    ]
    if "recipes" in data:
        lines += _recipe_lines(data)
        lines.append(f"nets: {', '.join(data['nets'])}")
    else:
        lines.append(f"recipes: unavailable ({data['recipes_error']})")
    cpu = data["cpu"]
    forced = ", ".join(f"{k}={v}" for k, v in cpu["forced"].items())
    threads = {"openmp": "", "single": " on one thread"}.get(cpu.get("kernel_threads") or "", "")
    lines.append(f"cpu: torch {cpu['capability']}, kernels {cpu['kernel_isa'] or '-'}{threads}, bf16 "
                 f"{'native' if cpu.get('bf16_native') else 'emulated'}, fp32 layout "
                 f"{'channels_last' if cpu.get('channels_last_fp32') else 'NCHW'}"
                 + (f" (forced: {forced})" if forced else "") + (f"; {cpu['error']}" if "error" in cpu else ""))
    if "precision_auto" in cpu:
        proven = cpu["precision_auto_bf16_tasks"]
        if cpu["precision_auto"] == "bf16":  # native bf16: the tasks decide
            auto = (f"bf16 for {', '.join(proven)}, fp32 for the other tasks" if proven
                    else "fp32 (bf16 is native here but not yet proven as good as fp32 "
                         "for any task; --precision bf16 asks for it)")
        else:
            auto = f"fp32 ({cpu['precision_auto_reason'].removeprefix('auto: ')})"
        lines.append(f"precision auto (the default): {auto}")
    lines += _package_lines(data)
    return lines


def _recipe_lines(data: dict[str, Any]) -> list[str]:
    lines = ["recipes:"]
    width = max(len(n) for n in data["recipes"])
    for name, r in data["recipe_settings"].items():
        lines.append(f"  {name:<{width}}  {r['task']}: {r['net']} net, {r['steps']} steps, lr {r['lr']:g}, "
                     f"stop {r['stop']}")
    return lines


def _package_lines(data: dict[str, Any]) -> list[str]:
    return ["packages: " + ", ".join(f"{k} {v}" if v else f"{k} MISSING (reinstall dip)"
                                     for k, v in data["packages"].items()),
            "optional: " + ", ".join(f"{k} {v}" if v else f"{k} missing (pip install '{OPTIONAL[k]}')"
                                     for k, v in data["optional"].items())]


def _quick_lines(data: dict[str, Any]) -> list[str]:
    library = data["native_library"]
    return [
        f"dip {data['dip']}  (python {data['python']}, torch {data['torch'] or 'MISSING (pip install torch==2.13.0)'})",
        "native library: " + (f"{library} (not loaded yet)" if library else
                              "not built (pure PyTorch; `dip info --full` says why)"),
        f"CPUs: {data['cpu_count']} (OMP_NUM_THREADS={data['omp_num_threads'] or 'unset'})",
        *_recipe_lines(data),
        *_package_lines(data),
        "dip info --full: loads torch and the native operators; their status, threads, CUDA, "
        "the CPU's choices, the nets",
    ]


def run(args) -> int:
    """``dip info [--full] [--json]``."""
    data = info_dict() if args.full else quick_info_dict()
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print("\n".join(_lines(data) if args.full else _quick_lines(data)))
    return EXIT_OK
