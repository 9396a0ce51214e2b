"""``dip resume CKPT``: continue an interrupted (or finished) fit from its checkpoint.

The checkpoint records the command's options (output, recipe, ...); ``prepare`` checks the
new run's outputs with the same checks as a fit command (``dip.cli.checks``), with the
recorded output and the checkpoint itself allowed to be replaced.
"""
from __future__ import annotations

from pathlib import Path

from dip.cli import checks, space
from dip.cli.errors import UsageError
from dip.cli.job import Job, execute
from dip.cli.options import add_resume_options


def add_parser(sub) -> None:
    p = sub.add_parser("resume", help="continue an interrupted (or finished) fit from its checkpoint")
    add_resume_options(p)


def _load(source: Path, steps):
    """The checkpoint at ``source`` (``dip.resume.load``) and the total steps to reach."""
    from dip import resume

    if not source.is_file():
        raise UsageError(f"checkpoint {source} does not exist", "give the .ckpt file a fit wrote")
    loaded = resume.load(source)
    if not loaded.options.get("task"):
        raise UsageError(f"checkpoint {source} records no command (it was written from Python)",
                         "continue it from Python with dip.resume.run(dip.resume.load(path))")
    total = steps if steps is not None else loaded.config.steps
    if total <= loaded.steps_run:
        raise UsageError(f"the fit in {source} already ran {loaded.steps_run} steps (of {loaded.config.steps} planned)",
                         f"ask for more with --steps N (N > {loaded.steps_run})")
    return loaded, total


def _outputs(args, source: Path, recorded_output):
    """``check_outputs`` for a resumed run: the recorded output and CKPT may be replaced."""
    if args.output is None and not recorded_output:
        raise UsageError(f"checkpoint {source} records no output file", "give one with -o OUT")
    force = bool(args.force)
    same_output = args.output is None or (
        bool(recorded_output) and Path(args.output).resolve() == Path(recorded_output).resolve())
    same_checkpoint = bool(args.checkpoint) and Path(args.checkpoint).resolve() == source.resolve()
    return checks.check_outputs(args, args.output or recorded_output, output_force=force or same_output,
                                checkpoint_force=force or same_checkpoint)


def _device(args, source: Path, recorded: str) -> str:
    import torch

    device = checks.resolve_device(args.device) if args.device is not None else recorded
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"the fit in {source} ran on CUDA, which is not available here", "add --device cpu")
    return device


def _recipe(loaded):
    """The checkpoint's recipe, or one rebuilt from its generator and fit settings."""
    if loaded.recipe is not None:
        return loaded.recipe
    from dip import recipes

    return recipes.Recipe(name="(from checkpoint)", task=loaded.task, net=dict(loaded.generator.config),
                          input_kind="noise", input_depth=int(loaded.z.shape[1]), physics={}, fit=loaded.config)


def _check_space(loaded, args, outputs, source: Path, x_hw, info, total: int) -> None:
    """Free disk space for what the resumed run writes (``dip.cli.space``)."""
    from dip.engine import generator_geometry

    padded_hw = tuple(generator_geometry(loaded.generator, x_hw)[0])
    space.check_free_space(space.Plan(
        out_hw=x_hw, channels=int(loaded.y.shape[1]), bits=args.bit_depth or info.bit_depth,
        params=sum(p.numel() for p in loaded.generator.parameters()), steps=total, padded_hw=padded_hw,
        output=outputs.output, report=outputs.report, plot=outputs.plot,
        checkpoint=outputs.checkpoint or source, frames=outputs.frames, save_every=args.save_every))


def _kernel_out(loaded, outputs, source: Path) -> Path | None:
    """Where a resumed blind fit writes its kernel: the recorded --kernel-out (replaced), or
    OUT.kernel.png beside the output; None for a fit with a known kernel."""
    from dip.physics import BlindBlur

    if not isinstance(loaded.physics, BlindBlur):
        return None
    recorded = loaded.options.get("kernel_out")
    path = Path(recorded) if recorded else outputs.output.with_name(outputs.output.name + ".kernel.png")
    checks.check_not_input(path, {"checkpoint": str(source)}, "--kernel-out")
    return path


def prepare(args) -> Job:
    """All checks and loading before the resumed fit; raises UsageError."""
    from dip import images, resume
    from dip.engine.geometry import image_box

    source = Path(args.checkpoint_in)
    loaded, total = _load(source, args.steps)
    outputs = _outputs(args, source, loaded.options.get("output"))
    for flag, path in (("-o", outputs.output), ("--report", outputs.report), ("--plot", outputs.plot)):
        if path is not None:
            checks.check_not_input(path, {"checkpoint": str(source)}, flag)
    device = _device(args, source, loaded.config.device)
    # the fit's own thread count (recorded with its options) unless --threads says otherwise
    recorded_threads = loaded.options.get("threads")
    threads = checks.apply_threads(args.threads if args.threads is not None else
                                   recorded_threads if isinstance(recorded_threads, int) else None)

    observation = loaded.y[0]
    _, _, h, w = image_box(loaded.physics, (int(observation.shape[-2]), int(observation.shape[-1])))
    x_hw = (h, w)  # the restored image's size
    info = images.ImageInfo.from_dict(loaded.image_info) if loaded.image_info else None
    if info is None:
        info = images.ImageInfo("L" if observation.shape[0] == 1 else "RGB", 8)
    gt = None
    if args.gt is not None:
        gt = checks.read_ground_truth(args.gt, x_hw, int(observation.shape[0]))
    recipe = _recipe(loaded)
    _check_space(loaded, args, outputs, source, x_hw, info, total)
    recipe.fit = loaded.config.updated(steps=total, device=device)
    kernel_out = _kernel_out(loaded, outputs, source)
    job = Job(task=loaded.task, recipe=recipe, observation=observation, info=info, out_hw=x_hw,
              gt=gt, output=outputs.output, report=outputs.report, plot=outputs.plot, frames=outputs.frames,
              device=device, precision_reason="as the checkpoint recorded", inputs={"checkpoint": str(source)},
              checkpoint_path=outputs.checkpoint or source, checkpoint_requested=True,
              checkpoint_every=args.checkpoint_every,
              options=dict(loaded.options, output=str(outputs.output), threads=threads,
                           **({"kernel_out": str(kernel_out)} if kernel_out is not None else {})),
              kernel_out=kernel_out,
              title=f"dip resume {loaded.task} ({recipe.name})",
              ensemble=len(getattr(loaded, "members", [loaded])), resumed=loaded)

    def runner(callbacks, **fit_kwargs):
        return resume.run(loaded, steps=total, device=device, gt=gt, callbacks=callbacks, **fit_kwargs)

    job.runner = runner
    return job


def run(args) -> int:
    """``dip resume CKPT ...``: prepare, then fit and write."""
    return execute(prepare(args), args)
