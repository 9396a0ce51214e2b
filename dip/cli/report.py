"""The JSON report of a run (``--report``) and the form an output image is written in."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from dip.cli.info import native_status


def written_form(path: Path, info, bit_depth: int | None) -> tuple[str, int]:
    """Channel layout and bit depth that ``images.write_image`` gives ``path`` for ``info``."""
    from dip import images

    fmt = images.format_for_path(path)
    bits = bit_depth or info.bit_depth
    if fmt not in ("PNG", "TIFF"):
        bits = 8
    mode = info.mode
    if fmt not in ("PNG", "TIFF", "WEBP"):
        mode = mode.rstrip("A")
    return mode, bits


def fitted_kernel(result):
    """The kernel a blind fit estimated, float64 numpy (Kh, Kw) summing to 1, or None when the
    fit's operator was not fitted (``result.physics`` is the returned image's operator)."""
    from dip.physics import BlindBlur

    physics = getattr(result, "physics", None)
    if not isinstance(physics, BlindBlur):
        return None
    k = physics.kernel[0].detach().cpu().double().numpy()
    return k / k.sum()


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(float(value), digits)


def build_report(job, args, result, psnr_input: float | None) -> dict[str, Any]:
    """The report of ``job`` (a ``dip.cli.job.Job``) fitted to ``result`` (a FitResult, or an
    EnsembleResult: then ``ensemble`` lists every member and ``psnr_curve`` is member 0's).

    ``psnr_input``: PSNR (dB) of the observation, for sr of its bicubic enlargement, against --gt.
    """
    import torch

    from dip._version import __version__

    native, native_why = native_status()
    fit = result.config if getattr(result, "config", None) is not None else job.recipe.fit
    mode, bits = written_form(job.output, job.info, args.bit_depth)
    report: dict[str, Any] = {
        "task": job.task,
        "recipe": job.recipe.name,
        "steps": int(result.steps_run),
        "steps_planned": int(fit.steps),
        "seconds": round(float(result.seconds), 4),
        "ms_per_step": round(float(result.ms_per_step), 3),
        "psnr": _rounded(result.psnr, 4),
        "ssim": _rounded(result.ssim, 5),
        "psnr_input": _rounded(psnr_input, 4),
        "stop_reason": result.stop_reason,
        "stop_step": int(result.returned_step),
        "native": native,
        "native_status": native_why,
        "device": job.device,
        "precision": fit.precision,
        "precision_reason": job.precision_reason or "asked for",
        "net": job.recipe.net.get("name"),
        "lr": fit.lr,
        "reg_noise_std": fit.reg_noise_std,
        "seed": fit.seed,
        "backtracks": int(getattr(result, "backtracks", 0)),
        "recoveries": int(getattr(result, "recoveries", 0)),
        "stop_detail": getattr(result, "stop_detail", ""),
        "steps_run": int(result.steps_run),
        "inputs": job.inputs,
        "output": str(job.output),
        "size_in": [int(job.observation.shape[-2]), int(job.observation.shape[-1])],
        "size_out": list(job.out_hw),
        "mode": mode,
        "bit_depth": bits,
        "memory_estimate_bytes": job.memory_estimate,
        "allocator_tuned": job.allocator_tuned,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "dip": __version__,
        "command": ["dip"] + list(getattr(args, "argv", [])),
    }
    members = getattr(result, "members", None)
    if members is not None:
        report["ensemble"] = {
            "members": len(members), "mode": "mean", "psnr_median": _rounded(result.psnr_median, 4),
            "each": [{"seed": m.config.seed, "psnr": _rounded(m.psnr, 4), "ssim": _rounded(m.ssim, 5),
                      "steps": int(m.steps_run), "stop_reason": m.stop_reason, "stop_step": int(m.returned_step),
                      "recoveries": int(m.recoveries)} for m in members]}
    if getattr(job, "pack", None):
        report["pack"] = dict(job.pack)
    estimate = fitted_kernel(result)
    if estimate is not None:
        # size: [rows, columns]; lr, warmup_steps and fit_steps (null: to the end): the kernel
        # generator's (--kernel-lr, --kernel-warmup, --kernel-steps)
        report["kernel"] = {"size": [int(s) for s in estimate.shape], "file": str(getattr(job, "kernel_out", None)),
                            "lr": fit.lr if fit.physics_lr is None else fit.physics_lr,
                            "warmup_steps": int(fit.physics_warmup_steps),
                            "fit_steps": None if fit.physics_steps is None else int(fit.physics_steps),
                            "rows": [[float(f"{v:.6g}") for v in row] for row in estimate.tolist()]}
    hist = result.history
    if hist.get("psnr_step"):
        report["psnr_curve"] = {"step": list(hist["psnr_step"]), "psnr": list(hist["psnr"]),
                                "psnr_avg": list(hist.get("psnr_avg", []))}
    return report


def json_safe(value: Any) -> Any:
    """NaN/inf (e.g. the loss of a recovered step) as null: reports stay strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def report_bytes(report: dict[str, Any]) -> bytes:
    """The report file's content: indented strict JSON and a final newline."""
    return (json.dumps(json_safe(report), indent=2) + "\n").encode()
