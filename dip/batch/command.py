"""The ``dip batch`` command: a thin layer over ``dip.batch.run_batch``.

    dip batch denoise photos/ -o restored/ --workers 2 --steps 2000
    dip batch inpaint 'scans/*.png' -o out/ --masks masks/ --mask-pattern '{stem}.png'
    dip batch sr lowres/ -o out/ --factor 4 --gt truth/ --ray auto --checkpoint-every 500
    dip batch deblur shaken/ -o out/ --kernel motion:9,30
    dip batch denoise tiles/ -o out/ --pack 4 --device cuda --precision bf16
"""
from __future__ import annotations

import argparse
import collections
import sys

from dip import cli
from dip.batch.core import run_batch
from dip.batch.manifest import MANIFEST_NAME, SUMMARY_NAME, format_table
from dip.batch.plan import BATCH_TASKS, DEFAULT_MASK_PATTERN, BatchError
from dip.cli.argtypes import seed_value, steps_count, threads_count
from dip.engine.config import PRECISIONS

#: (option, argparse keyword arguments): single-image fit options a batch passes to fresh fits
_PASSED = (
    ("--recipe", {"help": "preset (default: the task's; see 'dip info')"}),
    ("--factor", {"help": "sr: enlargement factor (default 4)"}),
    ("--kernel", {"metavar": "SPEC", "help": "deblur (required there): the blur of every image: gaussian:SIGMA, "
                                           "box:SIZE, motion:LENGTH,ANGLE or a .npy / image file"}),
    ("--kernel-size", {"metavar": "K|KhxKw", "help": "deblur, blind (instead of --kernel): the size of every "
                                                     "image's unknown blur, K x K or Kh rows x Kw columns (e.g. "
                                                     "9x15); each estimate goes beside its output "
                                                     "(NAME.png.kernel.png)"}),
    ("--kernel-lr", {"metavar": "RATE", "help": "deblur, blind: Adam learning rate of the kernel generator"}),
    ("--kernel-warmup", {"metavar": "STEPS", "help": "deblur, blind: steps the kernel is held at its start"}),
    ("--kernel-steps", {"metavar": "STEPS", "help": "deblur, blind: steps the kernel is fitted after its warm-up "
                                                    "('all': to the end)"}),
    ("--padding", {"choices": ("valid", "reflect", "replicate"), "help": "deblur: boundary model"}),
    ("--lr", {"help": "Adam learning rate"}),
    ("--reg-noise", {"metavar": "STD", "help": "std of the noise added to the input code every step"}),
    ("--net", {"help": "generator: skip, unet, resnet, decoder"}),
    ("--seed", {"type": seed_value, "help": "random seed of every fit (default the recipe's)"}),
    ("--stop", {"choices": ("auto", "steps"), "help": "stopping rule"}),
    ("--precision", {"choices": PRECISIONS, "help": "arithmetic of the network"}),
    ("--bit-depth", {"choices": ("8", "16"), "help": "bits per sample of the outputs"}),
    ("--max-megapixels", {"metavar": "MP", "help": "refuse images whose restored size exceeds MP megapixels"}),
)


_positive_int = cli.whole_number(1)
_count = cli.whole_number(0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``dip batch`` arguments to ``parser``."""
    parser.description = ("Restore many images, one fit each, with the task's recipe. Writes OUTDIR/<stem>.<ext>, "
                          "<stem>.json (report), <stem>.ckpt (checkpoint), <stem>.log, manifest.jsonl (one line per "
                          "attempt) and summary.csv. Rerunning the same command skips the images already done and "
                          "resumes the interrupted ones from their checkpoints.")
    parser.epilog = ("Ctrl-C (SIGINT) or SIGTERM stops the running fits after their current step; they save "
                     "their checkpoints, and the batch exits with 130/143. Exit codes: 0 every image restored, "
                     "1 some image failed (see the table and <stem>.log), 2 bad input or options (nothing run).")
    parser.add_argument("task", choices=BATCH_TASKS, help="what every image needs")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image files, folders (their images, not recursive) or quoted glob patterns")
    parser.add_argument("-o", "--outdir", required=True, metavar="OUTDIR", help="output folder (created if missing)")
    parser.add_argument("--ext", default="png",
                        help="format of the outputs: png (default: lossless, keeps 16 bits and alpha), tif, "
                             "jpg, bmp, webp, or 'same' (the input's)")
    parser.add_argument("--gt", metavar="DIR", help="ground truths, matched by file stem: PSNR per image")
    parser.add_argument("--masks", metavar="DIR", help="inpaint/restore: folder of the masks (default: next to "
                                                       "each image)")
    parser.add_argument("--mask-pattern", default=DEFAULT_MASK_PATTERN,
                        help="inpaint/restore: mask file name, with {stem}, {name}, {suffix} "
                             f"(default {DEFAULT_MASK_PATTERN!r}); mask files are not inputs")
    parser.add_argument("--mask-invert", action="store_true", help="masks mark the missing pixels (non-zero)")
    parser.add_argument("--redo", "--force", dest="redo", action="store_true",
                        help="fit every image from scratch, replacing earlier results")

    run = parser.add_argument_group("where")
    run.add_argument("--workers", type=_positive_int, default=1, help="fits at the same time on this machine "
                                                                      "(default 1)")
    run.add_argument("--threads", type=threads_count,
                     help="CPU threads per fit (default: CPUs // workers; 1 on a Ray cluster)")
    run.add_argument("--ray", metavar="ADDRESS",
                     help="run on Ray: 'local' (a private instance on this machine, loopback only), "
                          "'auto' (the cluster this machine belongs to) or a cluster address; needs dip[ray]")
    run.add_argument("--retries", type=_count, default=3, help="Ray: reruns of a task whose worker died "
                                                               "(default 3)")
    run.add_argument("--pack", type=_positive_int, default=1, metavar="K",
                     help="fit up to K images of the same size (and mode) together in one packed fit, each "
                          "with its own files, seed, optimiser and stopping rule, as when alone (others alone; "
                          "default 1: every image alone); meant for GPUs and bf16; an interrupted pack "
                          "continues as a pack")
    run.add_argument("--device", choices=("cpu", "cuda", "auto"),
                     help="device of every fit; cuda makes each Ray task ask for one GPU")

    fit = parser.add_argument_group("fit (passed to every image's fit)")
    fit.add_argument("--steps", type=steps_count, help="steps per image (default: the recipe's)")
    fit.add_argument("--checkpoint-every", type=_positive_int, metavar="N",
                     help="save each fit's checkpoint every N steps (a fit whose worker dies resumes from it)")
    for option, kwargs in _PASSED:
        fit.add_argument(option, **kwargs)
    fit.add_argument("--compile", action="store_true", help="compile each fit's step with torch.compile")
    fit.add_argument("--no-cuda-graph", dest="cuda_graph", action="store_false", default=None,
                     help="on CUDA, run every step of each fit eagerly instead of replaying it as a CUDA graph")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar, table or summary")
    parser.add_argument("--debug", action="store_true", help="show the traceback of unexpected errors")


def fit_arguments(args: argparse.Namespace) -> list[str]:
    """The single-image options of a fresh fit, from the parsed ``dip batch`` arguments."""
    out: list[str] = []
    for option, _ in _PASSED:
        value = getattr(args, option.lstrip("-").replace("-", "_"), None)
        if value is not None:
            if option == "--factor" and args.task != "sr":
                raise BatchError(f"--factor {value}: only the sr task has a factor", "drop --factor")
            if (option.startswith("--kernel") or option == "--padding") and args.task != "deblur":
                raise BatchError(f"{option} {value}: only the deblur task has a blur kernel", f"drop {option}")
            out += [option, str(value)]
    if args.compile:
        out.append("--compile")
    if args.cuda_graph is False:
        out.append("--no-cuda-graph")
    return out


def _summary(result) -> str:
    counts = collections.Counter(r["status"] for r in result.records)
    parts = [f"{counts[s]} {s}" for s in ("done", "skipped", "failed", "interrupted", "pending") if counts[s]]
    line = (f"{len(result.records)} image(s): {', '.join(parts)}; in {result.outdir} "
            f"({MANIFEST_NAME}, {SUMMARY_NAME})")
    if result.signal:
        line += "\nstopped by a signal: checkpoints are saved; run the same command again to continue"
    return line


def run(args: argparse.Namespace) -> int:
    """Run ``dip batch`` with parsed ``args``; returns the exit code (0 every image restored,
    1 some failed, 2 bad input, 130/143 stopped by SIGINT/SIGTERM)."""
    from dip.cli import UsageError

    try:
        result = run_batch(args.task, args.inputs, args.outdir, workers=args.workers, threads=args.threads,
                           ray_address=args.ray, retries=args.retries, fit_args=fit_arguments(args),
                           steps=args.steps, checkpoint_every=args.checkpoint_every, device=args.device,
                           gt_dir=args.gt, masks_dir=args.masks, mask_pattern=args.mask_pattern,
                           mask_invert=args.mask_invert, ext=args.ext, redo=args.redo, pack=args.pack,
                           progress=not args.quiet)
    except BatchError as exc:
        raise UsageError(exc.message, exc.hint) from None
    for record in result.records:
        if record["status"] == "failed":
            sys.stderr.write(f"dip batch: {record['image']} failed (exit {record['exit_code']}): "
                             f"{record['error']}\n")
    if not args.quiet:
        print(format_table(result.records))
        print(_summary(result))
    return result.exit_code
