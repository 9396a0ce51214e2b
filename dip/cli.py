"""The ``dip`` command: restore an image from the shell.

    dip denoise noisy.png -o clean.png
    dip sr small.png --factor 4 -o large.png --gt truth.png --report run.json --plot curves.png
    dip inpaint photo.png --mask holes.png -o filled.png
    dip resume filled.png.ckpt --steps 6000   # continue an interrupted or finished fit
    dip demo            # restores a bundled example image
    dip info            # version, native ops, torch, threads, CUDA

Every fit command reads its inputs, checks everything that can be checked before fitting
(files, sizes, options, device, memory), and only then fits. A mistake is answered with exit
code 2 and one or two lines on stderr — what is wrong and what to do — and no output file is
created or overwritten. Outputs are written atomically (temporary file, then rename).

Exit codes: 0 success; 1 an unexpected failure (run with ``--debug`` for the traceback);
2 bad input or options; 130 interrupted (SIGINT), 143 terminated (SIGTERM).

Interruption: the first SIGINT (Ctrl-C) or SIGTERM during a fit lets the current step finish,
then the checkpoint (``--checkpoint``, else ``OUT.ckpt`` next to the output) and the image so
far are written and the command exits 130 / 143; ``dip resume OUT.ckpt`` continues the fit
(bit-exact on the CPU). ``--checkpoint-every N`` also saves the checkpoint every N steps.

Memory check: before fitting, the generator is run once at its smallest input size and the
outputs of its leaf modules are counted and scaled to the padded image size: what autograd
keeps for the backward pass, counted once more for the gradients flowing back, plus four
copies of the parameters (weights, gradients, Adam's two moments), times 1.25 for allocator
slack (see ``estimate_fit_memory``). It is rough and errs high; it is compared with the memory
the system reports as available.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io as _stdio
import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
CHECKPOINT_SUFFIX = ".ckpt"

#: task -> (recipe physics kind, default recipe)
TASKS = {
    "denoise": "identity",
    "jpeg": "identity",
    "sr": "downsample",
    "inpaint": "mask",
    "restore": "mask",
    "flash": "identity",
}
#: subcommands implemented in other modules: name -> (module, add-arguments, run, help)
HOOKS = {
    "eval": ("dip.evaluate", "add_arguments", "run",
             "evaluate DIP against baselines on built-in or your own ground-truth images"),
    "export": ("dip.export", "add_export_arguments", "run_export",
               "export a fitted generator from a checkpoint to ONNX / TorchScript / torch.export"),
    "render": ("dip.export", "add_render_arguments", "run_render",
               "render the image of an exported model (.onnx, .pt, .pt2)"),
    "batch": ("dip.batch", "add_arguments", "run",
              "restore many images (files, folders, globs) locally or on a Ray cluster"),
}
DEMO_SIGMA = 25.0
DEMO_STEPS = 400
DEMO_SIZE = 64
_MEMORY_SLACK = 1.25

log = logging.getLogger("dip.cli")


class UsageError(Exception):
    """A problem with the user's input or options: exit code 2, message and hint on stderr."""

    def __init__(self, message: str, hint: Optional[str] = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


# --------------------------------------------------------------------------------------------
# argument parsing
# --------------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse with two-line errors: what is wrong, and where to look."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\nRun '{self.prog} --help' for the options.\n")


def whole_number(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer >= ``minimum``; a bad value gets a message saying why."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = f"whole number >= {minimum}"
    return parse


_positive_int = whole_number(1)


def _factor(text: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 2, got {text!r}") from None
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"must be a whole number >= 2 (e.g. 2, 4, 8), got {text}")
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be at least 2, got {text}")
    return int(value)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


_FIT_EPILOG = ("The progress bar (step, loss, PSNR with --gt, steps/s, time left) shows when stderr is a "
               "terminal; DIP_PROGRESS=1 shows it anyway. Exit codes: 0 done, 2 bad input or options "
               "(nothing written), 1 unexpected failure (--debug shows the traceback).")


def _add_fit_options(p: argparse.ArgumentParser, *, needs_output: bool = True) -> None:
    p.epilog = _FIT_EPILOG
    io = p.add_argument_group("output")
    io.add_argument("-o", "--output", required=needs_output, metavar="OUT",
                    help="restored image; format from the suffix (.png .jpg .tif .bmp .webp); "
                         "keeps the input's mode and bit depth")
    io.add_argument("--bit-depth", type=int, choices=(8, 16),
                    help="bits per sample of the output (default: the input's; 16 needs .png or .tif)")
    io.add_argument("--force", action="store_true", help="overwrite existing output files")
    io.add_argument("--gt", metavar="FILE", help="ground-truth image: PSNR/SSIM are shown and reported")
    io.add_argument("--report", metavar="FILE", help="write a JSON report of the run")
    io.add_argument("--plot", metavar="FILE", help="write loss and PSNR curves as a PNG")
    io.add_argument("--save-every", type=_positive_int, metavar="N",
                    help="save the current image every N steps (needs --frames)")
    io.add_argument("--frames", metavar="DIR", help="folder for --save-every images (created if missing)")
    io.add_argument("--checkpoint", metavar="FILE",
                    help="save a checkpoint of the fit (for 'dip export' and 'dip resume'); "
                         "default when one is needed: OUT.ckpt")
    io.add_argument("--checkpoint-every", type=_positive_int, metavar="N",
                    help="also save the checkpoint every N steps (to --checkpoint or OUT.ckpt)")
    io.add_argument("--quiet", "-q", action="store_true", help="no progress bar or summary")
    io.add_argument("--debug", action="store_true", help="show the traceback of unexpected errors")

    fit = p.add_argument_group("fit")
    fit.add_argument("--recipe", help="preset (see 'dip info'); default: denoise, jpeg, sr2/sr4/sr8 "
                                      "(sr4's settings for other factors), inpaint-text, restore-50, flash")
    fit.add_argument("--steps", type=_positive_int, help="number of optimisation steps (default: the recipe's)")
    fit.add_argument("--lr", type=_positive_float, help="Adam learning rate (default: the recipe's)")
    fit.add_argument("--reg-noise", type=_nonneg_float, metavar="STD",
                     help="std of the noise added to the input code every step")
    fit.add_argument("--net", help="generator: skip, unet, resnet, decoder (default: the recipe's)")
    fit.add_argument("--seed", type=int, help="random seed of weights, code and noise")
    fit.add_argument("--stop", choices=("auto", "steps"),
                     help="'auto': stop when the output stops improving (windowed variance); "
                          "'steps': run all steps")
    fit.add_argument("--precision", choices=("fp32", "bf16"), help="arithmetic of the network (default fp32)")
    fit.add_argument("--compile", action="store_true", help="compile the step with torch.compile")
    fit.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto",
                     help="where to fit (default: cuda when available)")
    fit.add_argument("--threads", type=_positive_int, help="CPU threads (default: torch's)")
    fit.add_argument("--max-megapixels", type=_positive_float, metavar="MP",
                     help="refuse images whose restored size exceeds MP megapixels")


def build_parser(hooked: Optional[str] = None) -> argparse.ArgumentParser:
    """The ``dip`` argument parser. ``hooked`` names the one hooked subcommand (eval, export,
    render) whose module is imported to define its arguments; the others get a placeholder."""
    from dip._version import __version__

    parser = _Parser(prog="dip", description="Deep Image Prior: restore an image by fitting a "
                                             "randomly initialised network to it.")
    parser.add_argument("--version", action="version", version=f"dip {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("denoise", help="remove noise")
    p.add_argument("input", help="noisy image")
    _add_fit_options(p)

    p = sub.add_parser("jpeg", help="remove JPEG compression artefacts")
    p.add_argument("input", help="image with artefacts")
    _add_fit_options(p)

    p = sub.add_parser("sr", help="super-resolution: enlarge by an integer factor")
    p.add_argument("input", help="low-resolution image")
    p.add_argument("--factor", type=_factor, default=4, help="enlargement factor, a whole number >= 2 (default 4)")
    _add_fit_options(p)

    for name, what, default in (("inpaint", "fill masked regions (text, holes)", "inpaint-text"),
                                ("restore", "restore missing pixels", "restore-50")):
        p = sub.add_parser(name, help=what)
        p.add_argument("input", help="image with missing pixels")
        p.add_argument("--mask", required=True, metavar="M",
                       help="mask image of the same size: non-zero = known pixel, zero = missing")
        p.add_argument("--mask-invert", action="store_true", help="non-zero = missing pixel instead")
        _add_fit_options(p)

    p = sub.add_parser("flash", help="flash / no-flash: a no-flash image with the flash image's detail")
    p.add_argument("--flash", required=True, metavar="F", help="image taken with flash (the network's input)")
    p.add_argument("--noflash", required=True, metavar="N", help="image taken without flash (the target)")
    _add_fit_options(p)

    p = sub.add_parser("resume", help="continue an interrupted (or finished) fit from its checkpoint")
    _add_resume_arguments(p)

    p = sub.add_parser("demo", help="restore a bundled example image (noise, sigma 25)",
                       description="Adds Gaussian noise (sigma 25) to a bundled photograph (public domain, "
                                   "NASA), denoises it with the 'denoise' recipe and prints the PSNR gain. "
                                   "Writes dip-demo-{clean,noisy,restored}.png to --outdir, replacing "
                                   "earlier demo images.")
    p.add_argument("--outdir", default=".", help="folder for the demo's images (default: here)")
    p.add_argument("--steps", type=_positive_int, default=DEMO_STEPS,
                   help=f"optimisation steps (default {DEMO_STEPS})")
    p.add_argument("--size", type=_positive_int, default=DEMO_SIZE,
                   help=f"side of the example image in pixels (default {DEMO_SIZE}; the bundled one is 96)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise and the fit")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    p.add_argument("--threads", type=_positive_int)
    p.add_argument("--precision", choices=("fp32", "bf16"))
    p.add_argument("--quiet", "-q", action="store_true")
    p.add_argument("--debug", action="store_true")

    p = sub.add_parser("info", help="version, native ops, torch, threads, CUDA")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.add_argument("--debug", action="store_true")

    for name, (module, add_name, _run, help_text) in HOOKS.items():
        p = sub.add_parser(name, help=help_text, add_help=name == hooked)
        if name == hooked:
            adder = _hook_function(name, add_name)
            adder(p)
        else:
            p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def _hook_function(command: str, attr: str) -> Callable:
    module_name = HOOKS[command][0]
    try:
        import importlib

        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"'dip {command}' is not available: {module_name} cannot be imported ({exc})",
                         "reinstall dip, or install the optional extra it needs (pip install 'dip[export]')")
    fn = getattr(module, attr, None)
    if fn is None:
        raise UsageError(f"'dip {command}' is not available: {module_name} has no {attr}()",
                         "this installation of dip is incomplete; reinstall it")
    return fn


# --------------------------------------------------------------------------------------------
# messages and small helpers
# --------------------------------------------------------------------------------------------
def _err(message: str, hint: Optional[str] = None) -> None:
    sys.stderr.write(f"dip: error: {message}\n")
    if hint:
        sys.stderr.write(f"  {hint}\n")


def _say(args, message: str) -> None:
    if not getattr(args, "quiet", False):
        sys.stderr.write(message + "\n")


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    folder = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _check_output_path(path_text: str, what: str, force: bool, *, image: bool = False) -> Path:
    """Validate a file we are going to write: folder exists, not a directory, exists only with --force."""
    from dip import images as io

    path = Path(path_text)
    if image:
        try:
            io.format_for_path(path)
        except io.ImageError as exc:
            raise UsageError(f"{what} {path}: unsupported format {path.suffix or '(none)'!r}",
                             f"use one of {', '.join(sorted(set(io.SUPPORTED_SUFFIXES)))}") from exc
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError(f"{what} {path}: the folder {folder} does not exist", "create it first or choose another path")
    if path.is_dir():
        raise UsageError(f"{what} {path} is a directory", "give a file name")
    if path.exists() and not force:
        raise UsageError(f"{what} {path} already exists", "use --force to overwrite it or choose another name")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{what} {path}: the folder {folder} is not writable", "choose another folder")
    return path


def _read(path: str, what: str):
    from dip import images as io

    try:
        return io.read_image(path)
    except io.ImageError as exc:
        raise UsageError(f"{what}: {exc}") from None


def _resolve_device(requested: str) -> str:
    import torch

    if requested == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("--device cuda: CUDA is not available on this machine",
                             "use --device cpu (or auto)")
        return "cuda"
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cpu"


def _available_memory(device: str) -> Optional[int]:
    """Bytes of memory available for a fit on ``device``, or None when unknown."""
    if device == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info()
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def estimate_fit_memory(recipe, x_hw: Tuple[int, int], channels: int, in_channels: Optional[int] = None) -> int:
    """Rough peak memory of fitting ``recipe`` to an image of size ``x_hw`` (bytes).

    Runs the generator once, without gradients, at the smallest input it accepts and counts
    the elements of the outputs of its leaf modules; every layer's output scales with the
    number of pixels, so the count is scaled to the padded size of the image. Autograd keeps
    those outputs for the backward pass and as many again flow back as gradients (x2); add
    four copies of the parameters (weights, gradients, two Adam moments), the input code, a
    few image-sized buffers and, with automatic stopping, its window of W outputs; fp32 (4 bytes);
    times 1.25 for allocator slack. It errs high for bf16.
    """
    import torch

    from dip import models
    from dip.fit import generator_geometry

    depth = in_channels if in_channels is not None else recipe.input_depth
    kwargs = {k: v for k, v in recipe.net.items() if k != "name"}
    with torch.random.fork_rng(devices=[]):
        net = models.build(recipe.net["name"], depth, channels, **kwargs)
    net.eval()  # running statistics: the smallest input may have 1x1 maps at the deepest scale
    out_hw, z_hw = generator_geometry(net, x_hw)
    small_out, small_z = generator_geometry(net, (1, 1))
    total = [0]

    def hook(_module, _inp, out):
        if isinstance(out, torch.Tensor):
            total[0] += out.numel()

    handles = [m.register_forward_hook(hook) for m in net.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            net(torch.zeros(1, depth, *small_z))
    finally:
        for h in handles:
            h.remove()
    scale = (out_hw[0] * out_hw[1]) / float(small_out[0] * small_out[1])
    params = sum(p.numel() for p in net.parameters())
    # automatic stopping keeps the last W outputs (its window) on the fit's device
    window = int(recipe.fit.stop_window) if recipe.fit.stop == "auto" else 0
    elements = (2 * total[0] * scale + 4 * params + 2 * depth * z_hw[0] * z_hw[1]
                + (4 + window) * channels * out_hw[0] * out_hw[1])
    return int(_MEMORY_SLACK * 4 * elements)


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


# --------------------------------------------------------------------------------------------
# progress and frames (fit callbacks)
# --------------------------------------------------------------------------------------------
class ProgressBar:
    """A tqdm bar fed by the fit's step events.

    Called every step, it advances the bar without touching the loss tensor; at most every
    ``refresh_s`` seconds it reads the loss (one host sync) and the latest PSNR into the bar's
    text. tqdm shows steps/s and the remaining time.
    """

    every = 1

    def __init__(self, total: int, *, disable: bool = False, refresh_s: float = 0.5, desc: str = "fit"):
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="step", desc=desc, disable=disable, file=sys.stderr,
                        dynamic_ncols=True, leave=False, mininterval=refresh_s)
        self.refresh_s = refresh_s
        self._last = 0.0
        self._step = 0

    def __call__(self, event) -> None:
        self.bar.update(event.step - self._step)
        self._step = event.step
        now = time.monotonic()
        if now - self._last >= self.refresh_s or event.step == event.steps:
            self._last = now
            post = {"loss": f"{float(event.loss):.2e}"}
            if event.psnr is not None:
                post["psnr"] = f"{event.psnr:.2f}"
            self.bar.set_postfix(post, refresh=False)

    def close(self) -> None:
        self.bar.close()


class FrameSaver:
    """Writes the current image (the averaged one where averaging is on) every ``every`` steps
    to ``folder/step_000100.png`` (8-bit PNG)."""

    def __init__(self, folder: Path, every: int):
        self.folder = folder
        self.every = int(every)
        self.written: List[Path] = []

    def __call__(self, event) -> None:
        from dip import images as io

        image = event.output_avg if event.output_avg is not None else event.output
        path = self.folder / f"step_{event.step:06d}.png"
        io.write_image(path, image[0], None)
        self.written.append(path)


# --------------------------------------------------------------------------------------------
# fit commands
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Job:
    """Everything a fit command checked and loaded before fitting."""

    task: str
    recipe: Any
    observation: Any  # (C, h, w)
    info: Any  # ImageInfo of the image whose form the output takes
    out_hw: Tuple[int, int]
    mask: Any = None  # (1, H, W)
    flash: Any = None  # (C, H, W)
    gt: Any = None  # (C, H, W)
    output: Optional[Path] = None
    report: Optional[Path] = None
    plot: Optional[Path] = None
    frames: Optional[Path] = None
    device: str = "cpu"
    memory_estimate: Optional[int] = None
    allocator_tuned: bool = False
    inputs: Dict[str, str] = dataclasses.field(default_factory=dict)
    #: where checkpoints go (--checkpoint, or OUT.ckpt); written at the end only when
    #: ``checkpoint_requested``, mid-fit every ``checkpoint_every`` steps, and on interruption
    checkpoint_path: Optional[Path] = None
    checkpoint_requested: bool = False
    checkpoint_every: Optional[int] = None
    options: Dict[str, Any] = dataclasses.field(default_factory=dict)
    #: runs the fit: ``runner(callbacks, **fit_kwargs) -> FitResult``
    runner: Optional[Callable[..., Any]] = None
    title: str = ""


def recipe_for(task: str, args) -> Any:
    """The recipe a fit command's parsed ``args`` ask for, with their overrides applied.

    Raises UsageError (unknown recipe or net, a recipe of another task, a bad override); used
    by ``dip batch`` to check a batch's options before any fit starts."""
    from dip import models, recipes

    name = args.recipe or recipes.DEFAULT_FOR_TASK[task]
    if task == "sr" and args.recipe is None and f"sr{args.factor}" in recipes.names():
        name = f"sr{args.factor}"
    if name not in recipes.names():
        raise UsageError(f"unknown recipe {name!r}", f"choose one of: {', '.join(recipes.names())}")
    if args.net is not None and args.net not in models.names():
        raise UsageError(f"unknown net {args.net!r}", f"choose one of: {', '.join(models.names())}")
    physics_kind = TASKS[task]
    fit_overrides: Dict[str, Any] = {}
    for arg, field in (("steps", "steps"), ("lr", "lr"), ("reg_noise", "reg_noise_std"), ("seed", "seed"),
                       ("stop", "stop"), ("precision", "precision")):
        value = getattr(args, arg, None)
        if value is not None:
            fit_overrides[field] = value
    if getattr(args, "compile", False):
        from dip.fit import FitConfig

        if "compile" not in {f.name for f in dataclasses.fields(FitConfig)}:
            raise UsageError("--compile is not supported by this version of dip", "run without --compile")
        fit_overrides["compile"] = True
    try:
        recipe = recipes.get(name, net=args.net, factor=getattr(args, "factor", None) if task == "sr" else None,
                             **fit_overrides)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"recipe {name!r}: {exc}") from None
    kind = recipe.physics.get("name")
    if kind != physics_kind or (task == "flash") != (recipe.input_kind == "image"):
        fitting = [n for n in recipes.names() if _recipe_matches(recipes.get(n), task)]
        raise UsageError(f"recipe {name!r} is for the {recipe.task} task, not {task}",
                         f"for '{task}' choose one of: {', '.join(fitting)}")
    return recipe


def _recipe_matches(recipe, task: str) -> bool:
    return recipe.physics.get("name") == TASKS[task] and (task == "flash") == (recipe.input_kind == "image")


def _prepare(task: str, args) -> _Job:
    """All checks and loading before the fit; raises UsageError."""
    import torch

    from dip import images as io

    force = bool(args.force)
    if args.save_every is not None and args.frames is None:
        raise UsageError("--save-every needs --frames DIR", "add --frames FOLDER for the intermediate images")
    if args.frames is not None and args.save_every is None:
        raise UsageError("--frames needs --save-every N", "add --save-every N (e.g. 100)")

    recipe = recipe_for(task, args)
    output = _check_output_path(args.output, "output", force, image=True)
    if args.bit_depth == 16 and io.format_for_path(output) not in ("PNG", "TIFF"):
        raise UsageError(f"--bit-depth 16: {output.suffix} files hold 8 bits per sample", "write a .png or .tif")
    report = _check_output_path(args.report, "report", force) if args.report else None
    plot = _check_output_path(args.plot, "plot", force) if args.plot else None
    if plot is not None and plot.suffix.lower() != ".png":
        raise UsageError(f"plot {plot}: the plot is written as PNG", "give it a .png name")
    checkpoint = _check_output_path(args.checkpoint, "checkpoint", force) if args.checkpoint else None
    checkpoint_path = checkpoint if checkpoint is not None else _implicit_checkpoint(output, force)
    frames = _frames_folder(args.frames)
    written = {p.resolve() for p in (output, report, plot, checkpoint) if p is not None}
    if len(written) != len([p for p in (output, report, plot, checkpoint) if p is not None]):
        raise UsageError("two outputs (-o, --report, --plot, --checkpoint) name the same file",
                         "give each its own name")

    device = _resolve_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    inputs: Dict[str, str] = {}
    mask = flash = None
    if task == "flash":
        noflash, info = _read(args.noflash, "--noflash")
        flash, _ = _read(args.flash, "--flash")
        inputs = {"flash": args.flash, "noflash": args.noflash}
        if flash.shape[-2:] != noflash.shape[-2:]:
            raise UsageError(f"the flash image is {_hw(flash)} but the no-flash image is {_hw(noflash)}",
                             "both must have the same size")
        if flash.shape[0] != noflash.shape[0]:
            flash = _match_channels(flash, noflash.shape[0])
        observation = noflash
    else:
        observation, info = _read(args.input, "input")
        inputs = {"input": args.input}
        if task in ("inpaint", "restore"):
            try:
                mask = io.read_mask(args.mask, invert=args.mask_invert)
            except io.ImageError as exc:
                raise UsageError(f"--mask: {exc}") from None
            inputs["mask"] = args.mask
            if mask.shape[-2:] != observation.shape[-2:]:
                raise UsageError(f"the mask is {_hw(mask)} but the image is {_hw(observation)}",
                                 "the mask must have the image's size (non-zero = known pixel)")
            if float(mask.sum()) == 0:
                raise UsageError("the mask marks no pixel as known (it is all zero)",
                                 "non-zero = known pixel; use --mask-invert if your mask marks the missing pixels")

    h, w = (int(s) for s in observation.shape[-2:])
    factor = int(recipe.physics.get("factor", 1)) if recipe.physics.get("name") == "downsample" else 1
    out_hw = (h * factor, w * factor)
    if factor > 1:
        _check_operator(recipe, (h, w), out_hw)
    megapixels = out_hw[0] * out_hw[1] / 1e6
    if args.max_megapixels is not None and megapixels > args.max_megapixels:
        raise UsageError(f"the restored image would be {out_hw[1]}x{out_hw[0]} = {megapixels:.2f} megapixels, "
                         f"over --max-megapixels {args.max_megapixels:g}", "use a smaller image or raise the limit")

    gt = None
    if args.gt is not None:
        gt, _ = _read(args.gt, "--gt")
        inputs["gt"] = args.gt
        if tuple(gt.shape[-2:]) != out_hw:
            raise UsageError(f"the ground truth is {_hw(gt)} but the restored image will be {out_hw[1]}x{out_hw[0]}",
                             "give the ground truth at the output size")
        if gt.shape[0] != observation.shape[0]:
            gt = _match_channels(gt, observation.shape[0])

    in_channels = int(flash.shape[0]) if flash is not None else None
    try:
        estimate = estimate_fit_memory(recipe, out_hw, int(observation.shape[0]), in_channels)
    except Exception as exc:  # the estimate is advisory: never block a fit because it failed
        log.debug("memory estimate failed: %s", exc)
        estimate = None
    available = _available_memory(device)
    if estimate is not None and available is not None and estimate > available:
        raise UsageError(f"the image is too large for this machine: fitting {out_hw[1]}x{out_hw[0]} needs about "
                         f"{_fmt_bytes(estimate)}, {_fmt_bytes(available)} of {device} memory is available",
                         "use a smaller image (crop or resize), or a machine with more memory")

    recipe.fit = recipe.fit.updated(device=device)
    job = _Job(task=task, recipe=recipe, observation=observation, info=info, out_hw=out_hw, mask=mask,
               flash=flash, gt=gt, output=output, report=report, plot=plot,
               frames=frames, device=device, memory_estimate=estimate, inputs=inputs,
               checkpoint_path=checkpoint_path,
               checkpoint_requested=checkpoint is not None or args.checkpoint_every is not None,
               checkpoint_every=args.checkpoint_every, options=_recorded_options(args, task),
               title=f"dip {task} ({recipe.name})")
    mask4 = None if mask is None else mask[None]

    def runner(callbacks, **fit_kwargs):
        from dip import recipes

        return recipes.run(job.recipe, job.observation, mask=mask4, flash=job.flash, gt=job.gt,
                           callbacks=callbacks, **fit_kwargs)

    job.runner = runner
    return job


def _frames_folder(text: Optional[str]) -> Optional[Path]:
    """The --frames folder: an existing folder, or a new one whose parent exists."""
    if text is None:
        return None
    frames = Path(text)
    if frames.exists() and not frames.is_dir():
        raise UsageError(f"--frames {frames} is a file, not a folder", "give a folder name")
    if not frames.exists() and not (frames.parent if str(frames.parent) else Path(".")).is_dir():
        raise UsageError(f"--frames {frames}: its parent folder does not exist", "create it first")
    return frames


def _implicit_checkpoint(output: Path, force: bool) -> Path:
    """OUT.ckpt: where a checkpoint goes when --checkpoint is not given. It must not silently
    replace the checkpoint of an earlier, interrupted fit of the same output."""
    path = output.with_name(output.name + CHECKPOINT_SUFFIX)
    if path.exists() and not force:
        raise UsageError(f"{path} exists (the checkpoint of an earlier fit of {output.name}?)",
                         f"continue that fit with 'dip resume {path}', or add --force to start afresh")
    return path


def _recorded_options(args, task: str) -> Dict[str, Any]:
    """The command's options as JSON-like values, recorded in checkpoints."""
    options = {k: v for k, v in vars(args).items()
               if k not in ("argv", "process_wide") and isinstance(v, (str, int, float, bool, type(None)))}
    options["task"] = task
    return options


def _check_operator(recipe, lr_hw: Tuple[int, int], hr_hw: Tuple[int, int]) -> None:
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


def _hw(t) -> str:
    return f"{int(t.shape[-1])}x{int(t.shape[-2])}"


def _match_channels(img, channels: int):
    """Grey <-> colour so a companion image matches the main one (luma for colour -> grey)."""
    if img.shape[0] == channels:
        return img
    if channels == 1:
        weights = img.new_tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
        return (img * weights).sum(0, keepdim=True)
    return img.expand(3, -1, -1).contiguous()


def _fit(job: _Job, args, stop_event=None):
    callbacks: List[Callable] = []
    bar = ProgressBar(job.recipe.fit.steps, disable=bool(args.quiet) or not sys.stderr.isatty()
                      and not os.environ.get("DIP_PROGRESS"), desc=job.task)
    callbacks.append(bar)
    saver = None
    if job.frames is not None:
        job.frames.mkdir(exist_ok=True)
        saver = FrameSaver(job.frames, args.save_every)
        callbacks.append(saver)
    fit_kwargs: Dict[str, Any] = {"stop_event": stop_event}
    if job.checkpoint_every is not None:
        fit_kwargs["checkpoint_every"] = job.checkpoint_every
        fit_kwargs["on_checkpoint"] = lambda partial: _save_checkpoint(job, args, partial)
    try:
        result = job.runner(callbacks, **fit_kwargs)
    finally:
        bar.close()
    return result


def _native_status() -> Tuple[bool, str]:
    try:
        from dip import ops

        return bool(ops.has_native()), str(ops.native_status())
    except Exception as exc:  # reporting must not fail a finished fit
        return False, f"unknown ({exc})"


def _report(job: _Job, args, result, psnr_input: Optional[float]) -> Dict[str, Any]:
    import torch

    from dip._version import __version__

    native, native_why = _native_status()
    fit = result.config if getattr(result, "config", None) is not None else job.recipe.fit
    info = job.info
    report: Dict[str, Any] = {
        "task": job.task,
        "recipe": job.recipe.name,
        "steps": int(result.steps_run),
        "steps_planned": int(fit.steps),
        "seconds": round(float(result.seconds), 4),
        "ms_per_step": round(float(result.ms_per_step), 3),
        "psnr": None if result.psnr is None else round(float(result.psnr), 4),
        "ssim": None if result.ssim is None else round(float(result.ssim), 5),
        # PSNR of the observation (of its bicubic enlargement for sr) against --gt
        "psnr_input": None if psnr_input is None else round(float(psnr_input), 4),
        "stop_reason": result.stop_reason,
        "stop_step": int(result.returned_step),
        "native": native,
        "native_status": native_why,
        "device": job.device,
        "precision": fit.precision,
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
        "mode": _written_form(job.output, info, args.bit_depth)[0],
        "bit_depth": _written_form(job.output, info, args.bit_depth)[1],
        "memory_estimate_bytes": job.memory_estimate,
        "allocator_tuned": job.allocator_tuned,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "dip": __version__,
        "command": ["dip"] + list(getattr(args, "argv", [])),
    }
    hist = result.history
    if hist.get("psnr_step"):
        report["psnr_curve"] = {"step": list(hist["psnr_step"]), "psnr": list(hist["psnr"]),
                                "psnr_avg": list(hist.get("psnr_avg", []))}
    return report


def _plot(path: Path, result, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    hist = result.history
    fig = Figure(figsize=(9, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2, 1)
    ax.plot(hist["step"], hist["loss"], lw=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("fit loss")
    ax.grid(alpha=0.3)
    ax2 = fig.add_subplot(1, 2, 2)
    if hist.get("psnr_step"):
        ax2.plot(hist["psnr_step"], hist["psnr"], label="output", lw=1)
        if hist.get("psnr_avg") and any(a != b for a, b in zip(hist["psnr_avg"], hist["psnr"])):
            ax2.plot(hist["psnr_step"], hist["psnr_avg"], label="averaged", lw=1)
        ax2.set_ylabel("PSNR (dB)")
        ax2.legend(loc="lower right")
    else:
        ax2.text(0.5, 0.5, "no ground truth (--gt):\nno PSNR", ha="center", va="center", transform=ax2.transAxes)
        ax2.set_xticks([])
        ax2.set_yticks([])
    if result.stop_reason == "auto":
        for a in (ax, ax2):
            a.axvline(result.returned_step, color="grey", ls="--", lw=0.8)
    ax2.set_xlabel("step")
    ax2.set_title("PSNR vs ground truth")
    ax2.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = _stdio.BytesIO()
    fig.savefig(buf, format="png")
    _atomic_write_bytes(path, buf.getvalue())


def _written_form(path: Path, info, bit_depth: Optional[int]) -> Tuple[str, int]:
    """Channel layout and bit depth that ``io.write_image`` gives ``path`` for ``info``."""
    from dip import images as io

    fmt = io.format_for_path(path)
    bits = bit_depth or info.bit_depth
    if fmt not in ("PNG", "TIFF"):
        bits = 8
    mode = info.mode
    if fmt not in ("PNG", "TIFF", "WEBP"):
        mode = mode.rstrip("A")
    return mode, bits


def _save_checkpoint(job: _Job, args, result) -> None:
    """Write ``result`` (finished, interrupted or mid-fit) to the job's checkpoint, atomically."""
    from dip import checkpoint

    payload = checkpoint.payload_from_result(result, recipe=job.recipe, observation=job.observation[None],
                                             image_info=job.info, options=job.options)
    checkpoint.save(job.checkpoint_path, payload)


def _tune_process(args) -> bool:
    """Process-wide speed settings for a command-line fit; False when not applied."""
    if not getattr(args, "process_wide", False):
        return False
    from dip import runtime

    return bool(runtime.configure_allocator())


def _baseline(job: _Job):
    """What the restoration is compared with: the observation itself, or for super-resolution
    its bicubic enlargement. (C, H, W) at the output size."""
    import torch

    if tuple(job.observation.shape[-2:]) == tuple(job.out_hw):
        return job.observation
    up = torch.nn.functional.interpolate(job.observation[None], size=job.out_hw, mode="bicubic",
                                         align_corners=False)
    return up[0].clamp(0, 1)


def _run_fit(task: str, args) -> int:
    job = _prepare(task, args)
    return _execute(job, args)


def _execute(job: _Job, args) -> int:
    """Fit, then write the image, report, plot and checkpoint; on SIGINT/SIGTERM during the fit,
    the image so far and the checkpoint, then exit 130/143."""
    from dip import images as io, metrics
    from dip.interrupt import SignalStop

    task = job.task
    job.allocator_tuned = _tune_process(args)
    fit_config = job.recipe.fit
    _say(args, f"{task}: {_hw(job.observation)} -> {job.out_hw[1]}x{job.out_hw[0]}, recipe {job.recipe.name}, "
               f"{fit_config.steps} steps (stop: {fit_config.stop}), {job.device}, {fit_config.precision}"
               + (f", about {_fmt_bytes(job.memory_estimate)}" if job.memory_estimate else ""))
    with SignalStop() as stop:  # signals during the writing below wait for it to finish, too
        result = _fit(job, args, stop_event=stop)
        interrupted = result.stop_reason == "interrupted"

        image = result.image[0].clamp(0, 1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", io.ImageWarning)
            io.write_image(job.output, image, job.info, bit_depth=args.bit_depth)
        for w in caught:  # shown even with --quiet: the file differs from what was asked
            sys.stderr.write(f"dip: note: {w.message}\n")

        psnr_input = None
        if job.gt is not None:
            psnr_input = metrics.psnr(_baseline(job), job.gt)
        if job.report is not None:
            report = _report(job, args, result, psnr_input)
            _atomic_write_bytes(job.report, (json.dumps(_json_safe(report), indent=2) + "\n").encode())
        if job.plot is not None:
            _plot(job.plot, result, job.title)
        if job.checkpoint_requested or interrupted:
            _save_checkpoint(job, args, result)

    if interrupted:
        sys.stderr.write(f"dip: {stop.signal_name or 'stop requested'}: stopped after step {result.steps_run} of "
                         f"{result.config.steps}; wrote the image so far to {job.output} and the checkpoint "
                         f"{job.checkpoint_path}\ndip: continue with: dip resume {job.checkpoint_path}\n")
        return stop.exit_code
    if result.stop_reason == "diverged":
        sys.stderr.write(f"dip: warning: the fit diverged ({result.stop_detail}); wrote the last good result\n")
    mode, bits = _written_form(job.output, job.info, args.bit_depth)
    line = (f"wrote {job.output} ({job.out_hw[1]}x{job.out_hw[0]}, {mode}, {bits}-bit): "
            f"{result.steps_run} steps in {result.seconds:.1f} s ({result.ms_per_step:.0f} ms/step)")
    if result.stop_reason == "auto":
        line += f", stopped automatically; image of step {result.returned_step}"
    if result.recoveries:
        line += f", {result.recoveries} recover{'y' if result.recoveries == 1 else 'ies'}"
    if result.psnr is not None:
        base = "bicubic" if task == "sr" else "input"
        line += f"; PSNR {result.psnr:.2f} dB" + (f" ({base} {psnr_input:.2f} dB)" if psnr_input is not None else "")
        if result.ssim is not None:
            line += f", SSIM {result.ssim:.4f}"
    if not args.quiet:
        print(line)
    return EXIT_OK


def _json_safe(value: Any) -> Any:
    """NaN/inf (e.g. the loss of a recovered step) as null: reports stay strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------
# resume
# --------------------------------------------------------------------------------------------
def _add_resume_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint_in", metavar="CKPT", help="checkpoint of the fit (e.g. OUT.ckpt)")
    p.add_argument("--steps", type=_positive_int,
                   help="total number of steps to reach (default: the steps the fit was started with)")
    io = p.add_argument_group("output")
    io.add_argument("-o", "--output", metavar="OUT",
                    help="restored image (default: the output recorded in the checkpoint, replaced)")
    io.add_argument("--bit-depth", type=int, choices=(8, 16), help="bits per sample of the output")
    io.add_argument("--force", action="store_true", help="overwrite existing output files")
    io.add_argument("--gt", metavar="FILE", help="ground-truth image: PSNR/SSIM are shown and reported")
    io.add_argument("--report", metavar="FILE", help="write a JSON report of the run")
    io.add_argument("--plot", metavar="FILE", help="write loss and PSNR curves as a PNG")
    io.add_argument("--save-every", type=_positive_int, metavar="N", help="save the current image every N steps")
    io.add_argument("--frames", metavar="DIR", help="folder for --save-every images")
    io.add_argument("--checkpoint", metavar="FILE",
                    help="where checkpoints go from now on (default: CKPT itself, updated in place)")
    io.add_argument("--checkpoint-every", type=_positive_int, metavar="N", help="save the checkpoint every N steps")
    io.add_argument("--quiet", "-q", action="store_true", help="no progress bar or summary")
    io.add_argument("--debug", action="store_true", help="show the traceback of unexpected errors")
    run = p.add_argument_group("fit")
    run.add_argument("--device", choices=("cpu", "cuda", "auto"), default=None,
                     help="device (default: the one the fit ran on; the result is bit-exact only there)")
    run.add_argument("--threads", type=_positive_int, help="CPU threads (default: torch's)")


def _prepare_resume(args) -> _Job:
    import torch

    from dip import images as io, resume

    source = Path(args.checkpoint_in)
    if not source.is_file():
        raise UsageError(f"checkpoint {source} does not exist", "give the .ckpt file a fit wrote")
    loaded = resume.load(source)
    recorded = loaded.options
    if not recorded.get("task"):
        raise UsageError(f"checkpoint {source} records no command (it was written from Python)",
                         "continue it from Python with dip.resume.run(dip.resume.load(path))")
    total = args.steps if args.steps is not None else loaded.config.steps
    if total <= loaded.steps_run:
        raise UsageError(f"the fit in {source} already ran {loaded.steps_run} steps (of {loaded.config.steps} planned)",
                         f"ask for more with --steps N (N > {loaded.steps_run})")
    force = bool(args.force)
    recorded_output = recorded.get("output")
    if args.output is None and not recorded_output:
        raise UsageError(f"checkpoint {source} records no output file", "give one with -o OUT")
    same_output = args.output is None or (recorded_output and Path(args.output).resolve() == Path(recorded_output).resolve())
    output = _check_output_path(args.output or recorded_output, "output", force or bool(same_output), image=True)
    report = _check_output_path(args.report, "report", force) if args.report else None
    plot = _check_output_path(args.plot, "plot", force) if args.plot else None
    if (args.save_every is None) != (args.frames is None):
        raise UsageError("--save-every and --frames go together", "give both, or neither")
    frames = _frames_folder(args.frames)
    checkpoint = None
    if args.checkpoint:
        same = Path(args.checkpoint).resolve() == source.resolve()
        checkpoint = _check_output_path(args.checkpoint, "checkpoint", force or same)
    device = _resolve_device(args.device) if args.device is not None else loaded.config.device
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"the fit in {source} ran on CUDA, which is not available here", "add --device cpu")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    info = io.ImageInfo.from_dict(loaded.image_info) if loaded.image_info else None
    observation = loaded.y[0]
    x_hw = loaded.physics.x_size(tuple(observation.shape[-2:]))
    if info is None:
        info = io.ImageInfo("L" if observation.shape[0] == 1 else "RGB", 8)
    gt = None
    gt_path = args.gt
    if gt_path is not None:
        gt, _ = _read(gt_path, "--gt")
        if tuple(gt.shape[-2:]) != tuple(x_hw):
            raise UsageError(f"the ground truth is {_hw(gt)} but the restored image is {x_hw[1]}x{x_hw[0]}",
                             "give the ground truth at the output size")
        if gt.shape[0] != observation.shape[0]:
            gt = _match_channels(gt, observation.shape[0])
    options = dict(recorded, output=str(output))
    recipe = loaded.recipe
    if recipe is None:
        from dip import recipes

        recipe = recipes.Recipe(name="(from checkpoint)", task=loaded.task, net=dict(loaded.generator.config),
                                input_kind="noise", input_depth=int(loaded.z.shape[1]), physics={},
                                fit=loaded.config)
    recipe.fit = loaded.config.updated(steps=total, device=device)
    job = _Job(task=loaded.task, recipe=recipe, observation=observation, info=info, out_hw=tuple(x_hw),
               gt=gt, output=output, report=report, plot=plot, frames=frames,
               device=device, inputs={"checkpoint": str(source)},
               checkpoint_path=checkpoint if checkpoint is not None else source, checkpoint_requested=True,
               checkpoint_every=args.checkpoint_every, options=options,
               title=f"dip resume {loaded.task} ({recipe.name})")

    def runner(callbacks, **fit_kwargs):
        return resume.run(loaded, steps=total, device=device, gt=gt, callbacks=callbacks, **fit_kwargs)

    job.runner = runner
    return job


def _run_resume(args) -> int:
    return _execute(_prepare_resume(args), args)


# --------------------------------------------------------------------------------------------
# demo and info
# --------------------------------------------------------------------------------------------
def example_image_path() -> Path:
    """Path of the bundled example image (96x96 RGB PNG, public domain; see dip/data/README.md)."""
    return Path(__file__).resolve().parent / "data" / "astronaut.png"


def _run_demo(args) -> int:
    import torch

    from dip import images as io, metrics, recipes

    outdir = Path(args.outdir)
    if not outdir.is_dir():
        raise UsageError(f"--outdir {outdir} does not exist", "create it first or choose another folder")
    device = _resolve_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.size < 16:
        raise UsageError(f"--size {args.size} is too small", "use 16 or more")
    _tune_process(args)
    clean, info = io.read_image(example_image_path())
    if tuple(clean.shape[-2:]) != (args.size, args.size):
        clean = torch.nn.functional.interpolate(clean[None], size=(args.size, args.size), mode="bicubic",
                                                antialias=True, align_corners=False)[0].clamp(0, 1)
    gen = torch.Generator().manual_seed(args.seed)
    noisy = (clean + torch.randn(clean.shape, generator=gen) * (DEMO_SIGMA / 255.0)).clamp(0, 1)
    overrides: Dict[str, Any] = {"steps": args.steps, "seed": args.seed, "device": device}
    if args.precision:
        overrides["precision"] = args.precision
    recipe = recipes.get("denoise", **overrides)
    _say(args, f"demo: denoising a {_hw(clean)} photograph with Gaussian noise (sigma {DEMO_SIGMA:g}), "
               f"{recipe.fit.steps} steps on {device}")
    bar = ProgressBar(recipe.fit.steps, disable=bool(args.quiet) or not sys.stderr.isatty()
                      and not os.environ.get("DIP_PROGRESS"), desc="demo")
    try:
        result = recipes.run(recipe, noisy, gt=clean, callbacks=[bar])
    finally:
        bar.close()
    restored = result.image[0]
    paths = {name: outdir / f"dip-demo-{name}.png" for name in ("clean", "noisy", "restored")}
    for name, img in (("clean", clean), ("noisy", noisy), ("restored", restored)):
        io.write_image(paths[name], img, info)
    before = metrics.psnr(noisy, clean)
    after = metrics.psnr(restored, clean)
    print(f"PSNR {before:.2f} dB (noisy) -> {after:.2f} dB (restored): gain {after - before:+.2f} dB "
          f"in {result.steps_run} steps, {result.seconds:.1f} s")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return EXIT_OK


def info_dict() -> Dict[str, Any]:
    """What ``dip info`` shows."""
    import torch

    from dip._version import __version__

    native, why = _native_status()
    cuda = torch.cuda.is_available()
    out: Dict[str, Any] = {
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
        out["nets"] = models.names()
    except Exception as exc:  # info must work on a damaged install
        out["recipes_error"] = str(exc)
    for name in ("onnx", "onnxruntime", "safetensors", "tifffile", "imageio"):
        try:
            module = __import__(name)
            out.setdefault("optional", {})[name] = getattr(module, "__version__", "installed")
        except ImportError:
            out.setdefault("optional", {})[name] = None
    return out


def _run_info(args) -> int:
    data = info_dict()
    if args.json:
        print(json.dumps(data, indent=2))
        return EXIT_OK
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
        lines.append(f"recipes: {', '.join(data['recipes'])}")
        lines.append(f"nets: {', '.join(data['nets'])}")
    else:
        lines.append(f"recipes: unavailable ({data['recipes_error']})")
    opt = ", ".join(f"{k} {v}" if v else f"{k} missing" for k, v in data["optional"].items())
    lines.append(f"optional: {opt}")
    print("\n".join(lines))
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------
def _first_command(argv: Sequence[str]) -> Optional[str]:
    for token in argv:
        if not token.startswith("-"):
            return token
    return None


def _dispatch(args) -> int:
    command = args.command
    if command in TASKS:
        return _run_fit(command, args)
    if command == "resume":
        return _run_resume(args)
    if command == "demo":
        return _run_demo(args)
    if command == "info":
        return _run_info(args)
    if command in HOOKS:
        run = _hook_function(command, HOOKS[command][2])
        return int(run(args) or 0)
    raise UsageError(f"unknown command {command!r}", "run 'dip --help' for the commands")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``dip`` command with ``argv`` (default: ``sys.argv[1:]``); returns the exit code.

    Run as the process's command line (``argv`` None), fit commands first raise glibc's mmap
    threshold (``dip.runtime.configure_allocator``: large activations are reused instead of
    page-faulted afresh every step; process-wide and permanent). Called with an explicit
    ``argv`` (from Python) they leave the process's allocator alone.
    """
    process_wide = argv is None  # a real command line: process-wide speed settings are ours to make
    argv = list(sys.argv[1:] if argv is None else argv)
    first = _first_command(argv)
    try:
        parser = build_parser(hooked=first if first in HOOKS else None)
    except UsageError as exc:
        _err(exc.message, exc.hint)
        return EXIT_FAILURE
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help, --version, usage errors
        return int(exc.code or 0) if isinstance(exc.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    args.argv = argv
    args.process_wide = process_wide
    debug = bool(getattr(args, "debug", False))
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    if debug:
        logging.getLogger("dip").setLevel(logging.DEBUG)
    try:
        return _dispatch(args)
    except UsageError as exc:
        _err(exc.message, exc.hint)
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("dip: interrupted; no output was written for the unfinished fit\n")
        return EXIT_INTERRUPTED
    except Exception as exc:
        from dip import images as io

        checkpoint_error = _checkpoint_error_type()
        if isinstance(exc, io.ImageError) or (checkpoint_error is not None and isinstance(exc, checkpoint_error)):
            _err(str(exc))
            return EXIT_USAGE
        if debug:
            raise
        _err(f"{type(exc).__name__}: {exc}", "this is a bug or an environment problem; "
                                             "run again with --debug for the traceback")
        return EXIT_FAILURE


def _checkpoint_error_type():
    try:
        from dip.checkpoint import CheckpointError
    except Exception:
        return None
    return CheckpointError


if __name__ == "__main__":
    sys.exit(main())
