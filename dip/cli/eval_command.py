"""``dip eval``: DIP against classical baselines on built-in cases (the work is ``dip.evaluate``)."""
from __future__ import annotations

import argparse
import logging
import sys

from dip import evaluate
from dip.cli.argtypes import steps_count

log = logging.getLogger("dip.evaluate")


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _name_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``dip eval`` options to ``parser``."""
    parser.add_argument("--cases", type=_name_list, default=list(evaluate.TASKS),
                        help=f"comma-separated cases (default all): {', '.join(evaluate.TASKS)}")
    parser.add_argument("--images", metavar="DIR", default=None,
                        help="evaluate the ground-truth images in DIR instead of the built-in crops")
    parser.add_argument("--builtin", type=_name_list, default=None, metavar="NAMES",
                        help=f"built-in images to use (default all): {', '.join(evaluate.BUILTIN_IMAGES)}")
    parser.add_argument("--size", type=int, default=128,
                        help="crop size in pixels (built-in images; larger --images are centre-cropped)")
    parser.add_argument("--steps", type=steps_count, default=None,
                        help="steps of the fixed run and cap of the auto run (default: each recipe's)")
    parser.add_argument("--seeds", type=_int_list, default=[0], metavar="S0,S1,...",
                        help="comma-separated seeds (degradation and fit), default 0")
    parser.add_argument("--metric", choices=("rgb", "y"), default="rgb",
                        help="rgb: all channels; y: luma PSNR/SSIM, 4-px border for sr (the paper's)")
    parser.add_argument("--stop-window", type=int, default=None,
                        help="ES-WMV window W (default: the recipe's, 200 for denoising)")
    parser.add_argument("--stop-patience", type=int, default=None,
                        help="ES-WMV patience P (default: the recipe's, 200 for denoising)")
    parser.add_argument("--curve-every", type=int, default=1, help="PSNR-curve sampling in steps")
    parser.add_argument("--csv", metavar="PATH", default=None, help="write the results as CSV")
    parser.add_argument("--plots", metavar="DIR", default=None, help="write a PSNR-vs-step PNG per run")
    parser.add_argument("--curves", metavar="FILE.json", default=None,
                        help="write every run's per-step PSNR (plain, averaged, window means) and "
                             "windowed output variance as JSON, for benchmarks/tune_stopping.py")
    parser.add_argument("--curve-windows", type=_int_list, default=[50, 100, 200], metavar="W0,W1,...",
                        help="with --curves: windows W whose variance and mean are recorded "
                             "(default 50,100,200; the recipe's W is always added)")
    parser.add_argument("--device", default="cpu", help="torch device for the fits (default cpu)")


def run(args: argparse.Namespace) -> int:
    """Run ``dip eval`` with parsed ``args``; prints the table; returns the exit status
    (0 success, 2 bad arguments)."""
    try:
        if args.size is not None and args.size < 8:
            raise ValueError(f"--size must be at least 8 pixels, got {args.size}")
        if args.images is not None:
            images = evaluate.load_images(args.images, args.size)
        else:
            images = evaluate.builtin_images(args.size, args.builtin)

        def progress(row):
            log.info("%s/%s/seed%d: fixed %.2f dB, auto %.2f dB (stop %s, returned step %s), peak %.2f",
                     row["case"], row["image"], row["seed"], row["fixed_psnr"], row["auto_psnr"],
                     row["auto_steps"], row["auto_return_step"], row["peak_psnr"])

        rows = evaluate.evaluate(args.cases, images, steps=args.steps, seeds=args.seeds, metric=args.metric,
                        plots=args.plots, stop_window=args.stop_window,
                        stop_patience=args.stop_patience, curve_every=args.curve_every,
                        curve_windows=args.curve_windows if args.curves else (),
                        progress=progress, device=args.device)
    except ValueError as exc:
        sys.stderr.write(f"dip eval: error: {exc}\n")
        return 2
    sys.stdout.write(evaluate.format_table(rows) + "\n")
    if args.csv:
        evaluate.write_csv(rows, args.csv)
    if args.curves:
        evaluate.write_curves(rows, args.curves)
    return 0
