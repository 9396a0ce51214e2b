"""What every fitting command does once its inputs are checked: ``Job`` and ``execute``.

A fit command (``dip.cli.fit_command``) or ``dip resume`` (``dip.cli.resume_command``)
checks and loads everything into a ``Job``; ``execute`` fits it with the progress bar and
frames as callbacks, then writes the image, the report, the plot and the checkpoint
(each atomically), and on SIGINT/SIGTERM the image so far and the checkpoint. Its steps
(``announce``, ``write_outputs``, ``conclude``) also serve a batch's pack of images fitted
together (``dip.batch._pack``), so each image's files are a single fit's.
"""
from __future__ import annotations

import dataclasses
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dip.cli.checks import hw
from dip.cli.errors import EXIT_FAILURE, EXIT_OK, say
from dip.cli.memory import format_bytes
from dip.cli.progress import FrameSaver, ProgressBar
from dip.cli.report import build_report, fitted_kernel, report_bytes, written_form
from dip.cli.rescue import Saver


@dataclasses.dataclass
class Job:
    """Everything a fit command checked and loaded before fitting."""

    task: str
    recipe: Any
    observation: Any  # (C, h, w)
    info: Any  # ImageInfo of the image whose form the output takes
    out_hw: tuple[int, int]
    mask: Any = None  # (1, H, W)
    flash: Any = None  # (C, H, W)
    kernel: Any = None  # (Kh, Kw) point-spread function of deblur
    kernel_out: Path | None = None  # where a blind deblur writes its estimated kernel
    gt: Any = None  # (C, H, W)
    output: Path | None = None
    report: Path | None = None
    plot: Path | None = None
    frames: Path | None = None
    device: str = "cpu"
    precision_reason: str = ""  # why the fit runs at its precision (``checks.resolve_precision``)
    memory_estimate: int | None = None
    allocator_tuned: bool = False
    inputs: dict[str, str] = dataclasses.field(default_factory=dict)
    #: where checkpoints go (--checkpoint, or OUT.ckpt); written at the end only when
    #: ``checkpoint_requested``, mid-fit every ``checkpoint_every`` steps, and on interruption
    checkpoint_path: Path | None = None
    checkpoint_requested: bool = False
    checkpoint_every: int | None = None
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: runs the fit: ``runner(callbacks, **fit_kwargs) -> FitResult``
    runner: Callable[..., Any] | None = None
    title: str = ""
    ensemble: int = 1  # members fitted at once and averaged (``--ensemble``)
    #: a batch's pack this image was fitted in (``dip.batch._pack``): size, index, images
    pack: dict[str, Any] | None = None
    #: ``dip resume``: the ``dip.resume.ResumableFit`` it continues (a pack continues several)
    resumed: Any = None


def tune_process(args) -> bool:
    """Process-wide speed settings for a command-line fit; False when not applied."""
    if not getattr(args, "process_wide", False):
        return False
    from dip import runtime

    return bool(runtime.configure_allocator())


def checkpoint_payload(job: Job, result) -> dict:
    """The checkpoint of ``result`` (finished, interrupted or mid-fit)."""
    from dip import checkpoint

    make = checkpoint.payload_from_ensemble if hasattr(result, "members") else checkpoint.payload_from_result
    return make(result, recipe=job.recipe, observation=job.observation[None], image_info=job.info,
                options=job.options)


def save_checkpoint(job: Job, result, path: Path | None = None) -> None:
    """Write ``result`` to ``path`` (default: the job's checkpoint), atomically."""
    from dip import checkpoint

    checkpoint.save(path or job.checkpoint_path, checkpoint_payload(job, result))


def periodic_checkpoint(job: Job, partial) -> None:
    """--checkpoint-every: a save that fails (full disk) is a warning; the fit goes on, and its
    end writes the checkpoint again (elsewhere if need be)."""
    try:
        save_checkpoint(job, partial)
    except OSError as exc:
        sys.stderr.write(f"dip: warning: cannot save the checkpoint {job.checkpoint_path} at step "
                         f"{partial.steps_run} ({exc.strerror or exc}); the fit goes on\n")


def _fit(job: Job, args, stop_event=None):
    """Run the job's fit with the progress bar (and --save-every frames) as callbacks."""
    callbacks: list[Callable] = []
    bar = ProgressBar.for_command(job.recipe.fit.steps, quiet=bool(args.quiet), desc=job.task)
    callbacks.append(bar)
    if job.frames is not None:
        job.frames.mkdir(exist_ok=True)
        callbacks.append(FrameSaver(job.frames, args.save_every))
    fit_kwargs: dict[str, Any] = {"stop_event": stop_event}
    if job.checkpoint_every is not None:
        fit_kwargs["checkpoint_every"] = job.checkpoint_every
        fit_kwargs["on_checkpoint"] = lambda partial: periodic_checkpoint(job, partial)
    try:
        return job.runner(callbacks, **fit_kwargs)
    finally:
        bar.close()


def _baseline(job: Job):
    """What the restoration is compared with: the observation itself, or for super-resolution
    its bicubic enlargement. (C, H, W) at the output size."""
    import torch

    if tuple(job.observation.shape[-2:]) == tuple(job.out_hw):
        return job.observation
    up = torch.nn.functional.interpolate(job.observation[None], size=job.out_hw, mode="bicubic",
                                         align_corners=False)
    return up[0].clamp(0, 1)


def _fallback_folders(job: Job) -> list[Path]:
    """Where a file that cannot be written goes instead: beside the report, the checkpoint, the image."""
    return [p.parent if str(p.parent) else Path(".") for p in (job.report, job.checkpoint_path, job.output)
            if p is not None]


def _write_image(job: Job, args, image, path: Path) -> None:
    from dip import images

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", images.ImageWarning)
        images.write_image(path, image, job.info, bit_depth=args.bit_depth)
    for w in caught:  # shown even with --quiet: the file differs from what was asked
        sys.stderr.write(f"dip: note: {w.message}\n")


def write_outputs(job: Job, args, result) -> tuple[float | None, Saver]:
    """The image, then the report, plot and checkpoint as asked, each through a ``Saver`` (a
    file that cannot be written goes to a fallback folder); returns the input's PSNR against
    --gt (None without it) and the Saver. When the image goes elsewhere the checkpoint is
    written too, so the fit can be exported or resumed (and always for an interrupted fit)."""
    from dip import checkpoint, metrics
    from dip.files import atomic_write
    from dip.plots import fit_curves_png

    interrupted = result.stop_reason == "interrupted"
    saver = Saver(_fallback_folders(job))
    image = result.image[0].clamp(0, 1)
    saver.write("image", job.output, lambda p: _write_image(job, args, image, p))
    psnr_input = metrics.psnr(_baseline(job), job.gt) if job.gt is not None else None
    estimate = fitted_kernel(result)
    if job.kernel_out is not None and estimate is not None:
        from dip.physics.blur_kernels import kernel_bytes

        content = kernel_bytes(estimate, job.kernel_out.suffix)
        saver.write("kernel", job.kernel_out, lambda p: atomic_write(p, content))
    if job.report is not None:
        data = report_bytes(build_report(job, args, result, psnr_input))
        saver.write("report", job.report, lambda p: atomic_write(p, data))
    if job.plot is not None:
        stop_step = result.returned_step if result.stop_reason == "auto" else None
        png = fit_curves_png(result.history, title=job.title, stop_step=stop_step, input_psnr=psnr_input,
                             returned_step=result.returned_step, returned_psnr=result.psnr)
        saver.write("plot", job.plot, lambda p: atomic_write(p, png))
    if job.checkpoint_requested or interrupted or saver.failed:
        payload = checkpoint_payload(job, result)
        saver.write("checkpoint", job.checkpoint_path, lambda p: checkpoint.save(p, payload))
    return psnr_input, saver


def _report_rescue(saver: Saver) -> int:
    """Tell where the files went that could not be written; exit code 1."""
    for note in saver.notes:
        sys.stderr.write(f"dip: error: {note}\n")
    ckpt = saver.written.get("checkpoint")
    if saver.written.get("image") is None and ckpt is not None:
        sys.stderr.write(f"dip: the fitted generator is kept in the checkpoint {ckpt} (see 'dip export')\n")
    return EXIT_FAILURE


def _summary(job: Job, args, result, psnr_input: float | None) -> str:
    """The line printed after a finished fit: what was written, how long it took, PSNR/SSIM."""
    mode, bits = written_form(job.output, job.info, args.bit_depth)
    line = (f"wrote {job.output} ({job.out_hw[1]}x{job.out_hw[0]}, {mode}, {bits}-bit): "
            f"{result.steps_run} steps in {result.seconds:.1f} s ({result.ms_per_step:.0f} ms/step)")
    if result.stop_reason == "auto":
        line += f", stopped automatically; image of step {result.returned_step}"
    if result.recoveries:
        line += f", {result.recoveries} recover{'y' if result.recoveries == 1 else 'ies'}"
    members = getattr(result, "members", None)
    if members is not None:
        line += f"; the mean of {len(members)} members' images"
    if result.psnr is not None:
        base = "bicubic" if job.task == "sr" else "input"
        line += f"; PSNR {result.psnr:.2f} dB" + (f" ({base} {psnr_input:.2f} dB)" if psnr_input is not None else "")
        if result.ssim is not None:
            line += f", SSIM {result.ssim:.4f}"
        if members is not None:
            psnrs = sorted(m.psnr for m in members)
            line += f"; members alone {psnrs[0]:.2f} to {psnrs[-1]:.2f} dB"
    return line


def announce(job: Job, args) -> None:
    """The line a fit command prints before fitting: sizes, recipe, steps, device, precision."""
    fit_config = job.recipe.fit
    recipe = job.recipe.name
    factor = job.recipe.physics.get("factor") if job.task == "sr" else None
    if factor is not None and recipe != f"sr{factor}":  # e.g. x3: sr4's settings, the operator of x3
        recipe += f" (its settings at x{factor})"
    say(args, f"{job.task}: {hw(job.observation)} -> {job.out_hw[1]}x{job.out_hw[0]}, recipe {recipe}, "
              + (f"ensemble of {job.ensemble}, " if job.ensemble > 1 else "") +
              f"{fit_config.steps} steps (stop: {fit_config.stop}), {job.device}, {fit_config.precision}"
              + (f" ({job.precision_reason})" if job.precision_reason.startswith("auto") else "")
              + (f", about {format_bytes(job.memory_estimate)}" if job.memory_estimate else ""))


def conclude(job: Job, args, result, stop, psnr_input: float | None, saver: Saver) -> int:
    """What the command tells once the files are written, and its exit code: where files went
    that could not be written (1), how to continue an interrupted fit (130/143), a diverged
    fit's warning and the summary line (0)."""
    if saver.failed:
        return _report_rescue(saver)
    if result.stop_reason == "interrupted":
        sys.stderr.write(f"dip: {stop.signal_name or 'stop requested'}: stopped after step {result.steps_run} of "
                         f"{result.config.steps}; wrote the image so far to {job.output} and the checkpoint "
                         f"{job.checkpoint_path}\ndip: continue with: dip resume {job.checkpoint_path}\n")
        return stop.exit_code
    if result.stop_reason == "diverged":
        sys.stderr.write(f"dip: warning: the fit diverged ({result.stop_detail}); wrote the last good result\n")
    if not args.quiet:
        print(_summary(job, args, result, psnr_input))
    return EXIT_OK


def execute(job: Job, args) -> int:
    """Fit, then write the image, report, plot and checkpoint; on SIGINT/SIGTERM during the fit,
    the image so far and the checkpoint, then exit 130/143."""
    from dip.interrupt import SignalStop

    job.allocator_tuned = tune_process(args)
    announce(job, args)
    with SignalStop() as stop:  # signals during the writing below wait for it to finish, too
        result = _fit(job, args, stop_event=stop)
        psnr_input, saver = write_outputs(job, args, result)
    return conclude(job, args, result, stop, psnr_input, saver)
