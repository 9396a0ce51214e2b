"""The options of the fit commands and of ``dip resume``, declared once.

``add_fit_options`` gives a fit command (denoise, jpeg, sr, inpaint, restore, flash, deblur) its output
and fit options; ``add_resume_options`` gives ``dip resume`` the same output options and the
device and thread options. The few help texts that differ (where the output and the checkpoint
go by default, which device is the default) come from the command's ``Variant``; the option
names, types and destinations are the same for both.
"""
from __future__ import annotations

import argparse
import dataclasses

from dip.cli.argtypes import nonneg_float, positive_float, positive_int, seed_value, steps_count, threads_count
from dip.engine.config import PRECISIONS

FIT_EPILOG = ("The progress bar (step, loss, PSNR with --gt, steps/s, time left) shows when stderr is a "
              "terminal; DIP_PROGRESS=1 shows it anyway. Exit codes: 0 done, 2 bad input or options "
              "(nothing written), 1 unexpected failure (--debug shows the traceback).")


@dataclasses.dataclass(frozen=True)
class Variant:
    """What the options of one kind of command say differently."""

    output_required: bool
    output_help: str
    checkpoint_help: str
    #: where --checkpoint-every writes without --checkpoint
    checkpoint_default: str
    device_default: str | None
    device_help: str


FIT = Variant(
    output_required=True,
    output_help="restored image; format from the suffix (.png .jpg .tif .bmp .webp); "
                "keeps the input's mode and bit depth",
    checkpoint_help="save a checkpoint of the fit (for 'dip export' and 'dip resume'); "
                    "default when one is needed: OUT.ckpt",
    checkpoint_default="OUT.ckpt",
    device_default="auto",
    device_help="where to fit (default: cuda when available)",
)
RESUME = Variant(
    output_required=False,
    output_help="restored image (default: the output recorded in the checkpoint, replaced)",
    checkpoint_help="where checkpoints go from now on (default: CKPT itself, updated in place)",
    checkpoint_default="CKPT",
    device_default=None,
    device_help="device (default: the one the fit ran on; the result is bit-exact only there)",
)


def add_output_options(p: argparse.ArgumentParser, variant: Variant) -> None:
    """The "output" group: -o, --bit-depth, --force, --gt, --report, --plot, --save-every,
    --frames, --checkpoint, --checkpoint-every, --quiet, --debug."""
    out = p.add_argument_group("output")
    out.add_argument("-o", "--output", required=variant.output_required, metavar="OUT", help=variant.output_help)
    out.add_argument("--bit-depth", type=int, choices=(8, 16),
                     help="bits per sample of the output (default: the input's; 16 needs .png or .tif)")
    out.add_argument("--force", action="store_true", help="overwrite existing output files")
    out.add_argument("--gt", metavar="FILE", help="ground-truth image: PSNR/SSIM are shown and reported")
    out.add_argument("--report", metavar="FILE", help="write a JSON report of the run")
    out.add_argument("--plot", metavar="FILE", help="write loss and PSNR curves as a PNG")
    out.add_argument("--save-every", type=positive_int, metavar="N",
                     help="save the current image every N steps (needs --frames)")
    out.add_argument("--frames", metavar="DIR", help="folder for --save-every images (created if missing)")
    out.add_argument("--checkpoint", metavar="FILE", help=variant.checkpoint_help)
    out.add_argument("--checkpoint-every", type=positive_int, metavar="N",
                     help=f"also save the checkpoint every N steps (to --checkpoint or {variant.checkpoint_default})")
    out.add_argument("--quiet", "-q", action="store_true", help="no progress bar or summary")
    out.add_argument("--debug", action="store_true", help="show the traceback of unexpected errors")


def add_machine_options(group, variant: Variant) -> None:
    """--device and --threads."""
    group.add_argument("--device", choices=("cpu", "cuda", "auto"), default=variant.device_default,
                       help=variant.device_help)
    group.add_argument("--threads", type=threads_count,
                       help="CPU threads, at most the CPUs available (default: torch's; dip resume: the fit's)")


def add_fit_options(p: argparse.ArgumentParser) -> None:
    """Everything a fit command takes besides its inputs: output options and the "fit" group."""
    p.epilog = FIT_EPILOG
    add_output_options(p, FIT)
    fit = p.add_argument_group("fit")
    fit.add_argument("--recipe", help="preset (see 'dip info'); default: denoise, jpeg, sr2/sr4/sr8 "
                                      "(sr4's settings for other factors), inpaint-text, restore-50, flash, deblur")
    fit.add_argument("--steps", type=steps_count, help="number of optimisation steps (default: the recipe's)")
    fit.add_argument("--lr", type=positive_float, help="Adam learning rate (default: the recipe's)")
    fit.add_argument("--reg-noise", type=nonneg_float, metavar="STD",
                     help="std of the noise added to the input code every step")
    fit.add_argument("--net", help="generator: skip, unet, resnet, decoder (default: the recipe's)")
    fit.add_argument("--seed", type=seed_value, help="random seed of weights, code and noise")
    fit.add_argument("--stop", choices=("auto", "steps"),
                     help="'auto': stop when the output stops improving (windowed variance); "
                          "'steps': run all steps")
    fit.add_argument("--precision", choices=PRECISIONS,
                     help="arithmetic of the network (default auto: bf16 where the hardware does bf16 "
                          "natively and bf16 is proven for the task, else fp32; dip info --full says which)")
    fit.add_argument("--compile", action="store_true", help="compile the step with torch.compile")
    fit.add_argument("--no-cuda-graph", dest="cuda_graph", action="store_false", default=None,
                     help="on CUDA, run every step eagerly instead of replaying it as a CUDA graph")
    fit.add_argument("--ensemble", type=positive_int, metavar="K",
                     help="fit K networks (seeds SEED to SEED+K-1) at once in one packed network, each stopping "
                          "on its own, and write the mean of their images: less noise (denoising: see the "
                          "README's ensemble table) for K times the work; the checkpoint holds every member")
    add_machine_options(fit, FIT)
    fit.add_argument("--max-megapixels", type=positive_float, metavar="MP",
                     help="refuse images whose restored size exceeds MP megapixels")


def add_resume_options(p: argparse.ArgumentParser) -> None:
    """``dip resume CKPT``: the checkpoint, --steps, the output options and --device/--threads."""
    p.epilog = FIT_EPILOG
    p.add_argument("checkpoint_in", metavar="CKPT", help="checkpoint of the fit (e.g. OUT.ckpt)")
    p.add_argument("--steps", type=steps_count,
                   help="total number of steps to reach (default: the steps the fit was started with)")
    add_output_options(p, RESUME)
    add_machine_options(p.add_argument_group("fit"), RESUME)
