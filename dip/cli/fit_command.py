"""The fit commands: ``dip denoise | jpeg | sr | inpaint | restore | flash | deblur``.

``prepare`` reads the inputs and checks everything that can be checked before fitting (files,
sizes, options, device, memory) into a ``Job``; ``run`` hands it to ``dip.cli.job.execute``.
"""
from __future__ import annotations

import dataclasses
import logging
import sys
from typing import Any

from dip.cli import checks, kernel_options, memory, space
from dip.cli.argtypes import factor
from dip.cli.errors import UsageError
from dip.cli.job import Job, execute
from dip.cli.kernel_options import blind
from dip.cli.options import add_fit_options

#: fit command -> the physics kind its recipes must have
TASKS = {
    "denoise": "identity",
    "jpeg": "identity",
    "sr": "downsample",
    "inpaint": "mask",
    "restore": "mask",
    "flash": "identity",
    "deblur": "blur",
}

log = logging.getLogger("dip.cli")


def add_parsers(sub) -> None:
    """One subparser per fit command, each with its inputs and ``add_fit_options``."""
    p = sub.add_parser("denoise", help="remove noise")
    p.add_argument("input", help="noisy image")
    add_fit_options(p)
    p.hints = {"--sigma": "the fit needs no noise level: its automatic stopping finds when to stop; for "
                          "heavy noise, sigma about 50 of 255, give --recipe denoise-50"}

    p = sub.add_parser("jpeg", help="remove JPEG compression artefacts")
    p.add_argument("input", help="image with artefacts")
    add_fit_options(p)
    p.hints = {"--quality": "the fit needs no JPEG quality: it fits the image as it is and stops on its own"}

    p = sub.add_parser("sr", help="super-resolution: enlarge by an integer factor")
    p.add_argument("input", help="low-resolution image")
    p.add_argument("--factor", type=factor, default=4, help="enlargement factor, a whole number >= 2 (default 4)")
    add_fit_options(p)

    for name, what in (("inpaint", "fill masked regions (text, holes)"), ("restore", "restore missing pixels")):
        p = sub.add_parser(name, help=what)
        p.add_argument("input", help="image with missing pixels")
        p.add_argument("--mask", required=True, metavar="M",
                       help="mask image of the same size: non-zero = known pixel, zero = missing")
        p.add_argument("--mask-invert", action="store_true", help="non-zero = missing pixel instead")
        add_fit_options(p)

    p = sub.add_parser("flash", help="flash / no-flash: a no-flash image with the flash image's detail")
    p.add_argument("--flash", required=True, metavar="F", help="image taken with flash (the network's input)")
    p.add_argument("--noflash", required=True, metavar="N", help="image taken without flash (the target)")
    add_fit_options(p)

    p = sub.add_parser("deblur", help="remove a blur: a known one (--kernel) or an unknown one (--kernel-size)")
    p.add_argument("input", help="blurred image")
    kernel_options.add_kernel_options(p)
    p.add_argument("--padding", choices=("valid", "reflect", "replicate"),
                   help="boundary model: 'valid' (default: the fit also renders the margin the scene blurred in "
                        "from), or the image padded by reflection / edge replication")
    add_fit_options(p)


def _recipe_matches(recipe, task: str) -> bool:
    kinds = (TASKS[task], "blind_blur") if task == "deblur" else (TASKS[task],)
    return recipe.physics.get("name") in kinds and (task == "flash") == (recipe.input_kind == "image")


def _fit_overrides(args) -> dict[str, Any]:
    """The FitConfig fields the command line sets."""
    overrides: dict[str, Any] = {}
    for arg, field in (("steps", "steps"), ("lr", "lr"), ("reg_noise", "reg_noise_std"), ("seed", "seed"),
                       ("stop", "stop"), ("precision", "precision")):
        value = getattr(args, arg, None)
        if value is not None:
            overrides[field] = value
    if (getattr(args, "ensemble", None) or 1) > 1 and getattr(args, "kernel_size", None) is not None:
        raise UsageError("--ensemble does not combine with --kernel-size (blind deblurring fits a kernel "
                         "generator with each image, which a pack cannot hold)", "drop one of them")
    if getattr(args, "compile", False):
        if (getattr(args, "ensemble", None) or 1) > 1:
            raise UsageError("--compile does not combine with --ensemble (the pack is rebuilt as members stop)",
                             "drop one of them")
        from dip.engine import FitConfig

        if "compile" not in {f.name for f in dataclasses.fields(FitConfig)}:
            raise UsageError("--compile is not supported by this version of dip", "run without --compile")
        overrides["compile"] = True
    if getattr(args, "cuda_graph", None) is False:
        overrides["cuda_graph"] = False
    return overrides


def recipe_for(task: str, args) -> Any:
    """The recipe a fit command's parsed ``args`` ask for, with their overrides applied.

    Raises UsageError (unknown recipe or net, a recipe of another task, a bad override); used
    by ``dip batch`` to check a batch's options before any fit starts."""
    from dip import models, recipes

    name = args.recipe or ("deblur-blind" if task == "deblur" and blind(args) else recipes.DEFAULT_FOR_TASK[task])
    if task == "deblur":
        kernel_options.check_kernel_options(args)
    if task == "sr" and args.recipe is None and f"sr{args.factor}" in recipes.names():
        name = f"sr{args.factor}"
    if name not in recipes.names():
        raise UsageError(f"unknown recipe {name!r}", f"choose one of: {', '.join(recipes.names())}")
    if args.net is not None and args.net not in models.names():
        raise UsageError(f"unknown net {args.net!r}", f"choose one of: {', '.join(models.names())}")
    fit_overrides = _fit_overrides(args)
    if task == "deblur":
        fit_overrides.update(kernel_options.kernel_fit_overrides(args))
    try:
        recipe = recipes.get(name, net=args.net, factor=getattr(args, "factor", None) if task == "sr" else None,
                             **fit_overrides)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"recipe {name!r}: {exc}") from None
    if not _recipe_matches(recipe, task):
        fitting = [n for n in recipes.names() if _recipe_matches(recipes.get(n), task)]
        raise UsageError(f"recipe {name!r} is for the {recipe.task} task, not {task}",
                         f"for '{task}' choose one of: {', '.join(fitting)}")
    if task == "deblur":
        _deblur_physics(recipe, args)
    return _dense_psnr_curve(recipe) if getattr(args, "gt", None) else recipe


def _deblur_physics(recipe, args) -> None:
    """--padding and --kernel-size into the recipe's operator; the recipe must be of the kind
    (blind or not) the options ask for."""
    wanted = "blind_blur" if blind(args) else "blur"
    if recipe.physics.get("name") != wanted:
        raise UsageError(f"recipe {recipe.name!r} is for {'non-blind' if blind(args) else 'blind'} deblurring: "
                         f"it needs {'--kernel SPEC' if blind(args) else '--kernel-size K'}")
    if getattr(args, "padding", None) is not None:
        recipe.physics = {**recipe.physics, "padding": args.padding}
    if blind(args):
        recipe.physics = {**recipe.physics, "kernel_size": kernel_options.kernel_size_setting(args)}


def _dense_psnr_curve(recipe: Any) -> Any:
    """With --gt, PSNR at least 30 times along the fit (the report's and the plot's curve):
    a short fit would otherwise get one point from the recipe's every-50-steps."""
    every = max(1, recipe.fit.steps // 30)
    if every >= recipe.fit.psnr_every:
        return recipe
    return dataclasses.replace(recipe, fit=recipe.fit.updated(psnr_every=every))


@dataclasses.dataclass
class _Inputs:
    observation: Any  # (C, h, w)
    info: Any
    mask: Any = None  # (1, h, w)
    flash: Any = None  # (C, h, w)
    kernel: Any = None  # (Kh, Kw) float64 numpy, sum 1
    files: dict[str, str] = dataclasses.field(default_factory=dict)


def _read_flash(args) -> _Inputs:
    noflash, info = checks.read_image_arg(args.noflash, "--noflash")
    flash, _ = checks.read_image_arg(args.flash, "--flash")
    if flash.shape[-2:] != noflash.shape[-2:]:
        raise UsageError(f"the flash image is {checks.hw(flash)} but the no-flash image is {checks.hw(noflash)}",
                         "both must have the same size")
    return _Inputs(noflash, info, flash=checks.match_channels(flash, noflash.shape[0]),
                   files={"flash": args.flash, "noflash": args.noflash})


def _read_mask(args, observation):
    from dip import images

    try:
        mask = images.read_mask(args.mask, invert=args.mask_invert)
    except images.ImageError as exc:
        raise UsageError(f"--mask: {exc}") from None
    if mask.shape[-2:] != observation.shape[-2:]:
        raise UsageError(f"the mask is {checks.hw(mask)} but the image is {checks.hw(observation)}",
                         "the mask must have the image's size (non-zero = known pixel)")
    if float(mask.sum()) == 0:
        raise UsageError("the mask marks no pixel as known (it is all zero)",
                         "non-zero = known pixel; use --mask-invert if your mask marks the missing pixels")
    if bool((mask != 0).all()):
        log.warning("the mask marks every pixel as known, so nothing is missing and the fit reproduces the "
                    "image; non-zero = known pixel: use --mask-invert if your mask marks the missing pixels")
    return mask


def _read_inputs(task: str, args) -> _Inputs:
    """The observation (and flash image or mask) of ``task``, read and checked against each other."""
    if task == "flash":
        return _read_flash(args)
    observation, info = checks.read_image_arg(args.input, "input")
    inputs = _Inputs(observation, info, files={"input": args.input})
    if task in ("inpaint", "restore"):
        inputs.mask = _read_mask(args, observation)
        inputs.files["mask"] = args.mask
    if task == "deblur" and blind(args):
        kernel_options.kernel_size_arg(args, (int(observation.shape[-2]), int(observation.shape[-1])))
    elif task == "deblur":
        inputs.kernel = _read_kernel(args, observation)
        inputs.files["kernel"] = args.kernel
    return inputs


def _read_kernel(args, observation):
    kernel = kernel_options.kernel_arg(args)
    kh, kw = kernel.shape
    h, w = (int(s) for s in observation.shape[-2:])
    if kh > h or kw > w:
        raise UsageError(f"--kernel {args.kernel}: the kernel is {kw}x{kh} pixels, larger than the image ({w}x{h})")
    return kernel


def _kernel_out(args, outputs, checkpoint_path):
    """Where a blind fit writes its kernel: --kernel-out (.png or .npy) or OUT.kernel.png; checked
    as every output is, and distinct from the others."""
    from pathlib import Path

    from dip.physics.blur_kernels import KERNEL_FILE_SUFFIXES

    text = args.kernel_out or str(outputs.output.with_name(outputs.output.name + ".kernel.png"))
    if Path(text).suffix.lower() not in KERNEL_FILE_SUFFIXES:
        raise UsageError(f"--kernel-out {text}: the kernel is written as .png or .npy, not "
                         f"{Path(text).suffix or '(no suffix)'!r}")
    path = checks.check_output_path(text, "--kernel-out", bool(args.force))
    others = [p.resolve() for p in (outputs.output, outputs.report, outputs.plot, checkpoint_path) if p is not None]
    if path.resolve() in others:
        raise UsageError(f"--kernel-out {path} names the file of another output; give it its own name")
    return path


def _check_operator(recipe, lr_hw: tuple[int, int], hr_hw: tuple[int, int]) -> None:
    """The super-resolution operator must map the output size back to the input size."""
    import torch

    from dip.physics import from_config

    op = from_config(recipe.physics)
    with torch.no_grad():
        got = tuple(op(torch.zeros(1, 1, *hr_hw)).shape[-2:])
    if got != tuple(lr_hw):
        factor = recipe.physics.get("factor")
        raise UsageError(f"--factor {factor}: the downsampling operator maps {hr_hw[1]}x{hr_hw[0]} to "
                         f"{got[1]}x{got[0]}, not to the input's {lr_hw[1]}x{lr_hw[0]}",
                         "use an even factor such as 2, 4 or 8")


def _output_size(recipe, observation, max_megapixels: float | None) -> tuple[int, int]:
    """(H, W) of the restored image; checks the sr operator and --max-megapixels."""
    h, w = (int(s) for s in observation.shape[-2:])
    scale = int(recipe.physics.get("factor", 1)) if recipe.physics.get("name") == "downsample" else 1
    out_hw = (h * scale, w * scale)
    if scale > 1:
        _check_operator(recipe, (h, w), out_hw)
    megapixels = out_hw[0] * out_hw[1] / 1e6
    if max_megapixels is not None and megapixels > max_megapixels:
        raise UsageError(f"the restored image would be {out_hw[1]}x{out_hw[0]} = {megapixels:.2f} megapixels, "
                         f"over --max-megapixels {max_megapixels:g}", "use a smaller image or raise the limit")
    return out_hw


def _fitted_size(recipe, out_hw: tuple[int, int], inputs: _Inputs) -> tuple[int, int]:
    """(H, W) of the image the generator renders for a restored image of ``out_hw``: a "valid"
    blur's fit renders the K - 1 pixels of margin the scene blurs in from as well."""
    physics = recipe.physics
    if physics.get("name") not in ("blur", "blind_blur") or physics.get("padding", "valid") != "valid":
        return out_hw
    if inputs.kernel is not None:
        kh, kw = (int(s) for s in inputs.kernel.shape[-2:])
    else:
        size = physics.get("kernel_size", 1)
        kh, kw = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    return out_hw[0] + kh - 1, out_hw[1] + kw - 1


def _check_memory(recipe, out_hw: tuple[int, int], inputs: _Inputs, device: str, members: int = 1):
    """The fit's ``memory.FitEstimate`` (None when it failed; ``members`` fits packed cost that
    many times one); UsageError when its memory exceeds what is available."""
    in_channels = int(inputs.flash.shape[0]) if inputs.flash is not None else None
    fitted_hw = _fitted_size(recipe, out_hw, inputs)
    try:
        fit_estimate = memory.fit_estimate(recipe, fitted_hw, int(inputs.observation.shape[0]), in_channels)
    except Exception as exc:  # the estimate is advisory: never block a fit because it failed
        log.debug("memory estimate failed: %s", exc)
        return None
    fit_estimate = dataclasses.replace(fit_estimate, memory=fit_estimate.memory * members,
                                       params=fit_estimate.params * members)
    estimate = fit_estimate.memory
    available = memory.available_memory(device)
    if available is not None and estimate > available:
        raise UsageError(f"the image is too large for this machine: fitting {out_hw[1]}x{out_hw[0]} needs about "
                         f"{memory.format_bytes(estimate)}, {memory.format_bytes(available)} of {device} memory "
                         "is available", "use a smaller image (crop or resize), or a machine with more memory")
    return fit_estimate


#: padding that is worth a warning: this many times the image's pixels, costing this much memory
PADDING_RATIO = 4
PADDING_MEMORY = 512 * 1024 * 1024


def _warn_padding(out_hw: tuple[int, int], estimate) -> None:
    """One line when the generator's padded size makes the fit far bigger than the image."""
    if estimate is None:
        return
    ratio = (estimate.padded_hw[0] * estimate.padded_hw[1]) / float(out_hw[0] * out_hw[1])
    if ratio >= PADDING_RATIO and estimate.memory >= PADDING_MEMORY:
        sys.stderr.write(f"dip: warning: the network renders the {out_hw[1]}x{out_hw[0]} image at its padded size "
                         f"{estimate.padded_hw[1]}x{estimate.padded_hw[0]} ({ratio:.0f}x the pixels): about "
                         f"{memory.format_bytes(estimate.memory)} of memory and as much slower per step; "
                         "crop or pad the image nearer a square to fit faster\n")


def _recorded_options(args, task: str) -> dict[str, Any]:
    """The command's options as JSON-like values, recorded in checkpoints."""
    options = {k: v for k, v in vars(args).items()
               if k not in ("argv", "process_wide") and isinstance(v, (str, int, float, bool, type(None)))}
    options["task"] = task
    return options


def prepare(task: str, args) -> Job:
    """All checks and loading before the fit; raises UsageError."""
    recipe = recipe_for(task, args)
    force = bool(args.force)
    outputs = checks.check_outputs(args, args.output, output_force=force, checkpoint_force=force)
    checkpoint_path = outputs.checkpoint or checks.implicit_checkpoint(outputs.output, force)
    device = checks.resolve_device(args.device)
    threads = checks.apply_threads(args.threads)
    precision, precision_reason = checks.resolve_precision(recipe.fit.precision, device, recipe.task)
    recipe.fit = recipe.fit.updated(precision=precision)

    inputs = _read_inputs(task, args)
    out_hw = _output_size(recipe, inputs.observation, args.max_megapixels)
    gt = None
    if args.gt is not None:
        gt = checks.read_ground_truth(args.gt, out_hw, int(inputs.observation.shape[0]))
        inputs.files["gt"] = args.gt
    kernel_out = _kernel_out(args, outputs, checkpoint_path) if task == "deblur" and blind(args) else None
    for flag, path in (("-o", outputs.output), ("--report", outputs.report), ("--plot", outputs.plot),
                       ("--checkpoint", checkpoint_path), ("--kernel-out", kernel_out)):
        if path is not None:
            checks.check_not_input(path, inputs.files, flag)
    ensemble = int(getattr(args, "ensemble", None) or 1)
    estimate = _check_memory(recipe, out_hw, inputs, device, ensemble)
    _warn_padding(out_hw, estimate)
    warning = kernel_options.warmup_warning(args, recipe.fit.steps) if task == "deblur" else None
    if warning is not None:
        sys.stderr.write(f"dip: warning: {warning}\n")
    checkpoint_requested = outputs.checkpoint is not None or args.checkpoint_every is not None
    if estimate is not None:
        space.check_free_space(space.Plan(
            out_hw=out_hw, channels=int(inputs.observation.shape[0]), bits=args.bit_depth or inputs.info.bit_depth,
            params=estimate.params, steps=recipe.fit.steps, padded_hw=estimate.padded_hw, output=outputs.output,
            report=outputs.report, plot=outputs.plot, checkpoint=checkpoint_path if checkpoint_requested else None,
            frames=outputs.frames, save_every=args.save_every))

    recipe.fit = recipe.fit.updated(device=device)
    job = Job(task=task, recipe=recipe, observation=inputs.observation, info=inputs.info, out_hw=out_hw,
              mask=inputs.mask, flash=inputs.flash, kernel=inputs.kernel, gt=gt, output=outputs.output,
              report=outputs.report, plot=outputs.plot, frames=outputs.frames, device=device,
              precision_reason=precision_reason,
              memory_estimate=None if estimate is None else estimate.memory,
              inputs=inputs.files, checkpoint_path=checkpoint_path,
              checkpoint_requested=checkpoint_requested,
              checkpoint_every=args.checkpoint_every,
              options=dict(_recorded_options(args, task), threads=threads,
                           **({"kernel_out": str(kernel_out)} if kernel_out is not None else {})),
              kernel_out=kernel_out,
              title=f"dip {task} ({recipe.name})" + (f", ensemble of {ensemble}" if ensemble > 1 else ""),
              ensemble=ensemble)
    mask4 = None if job.mask is None else job.mask[None]


    def runner(callbacks, **fit_kwargs):
        from dip import recipes

        return recipes.run(job.recipe, job.observation, mask=mask4, flash=job.flash, kernel=job.kernel,
                           gt=job.gt, callbacks=callbacks, ensemble=ensemble, **fit_kwargs)

    job.runner = runner
    return job


def run(task: str, args) -> int:
    """``dip TASK ...``: prepare, then fit and write."""
    return execute(prepare(task, args), args)
