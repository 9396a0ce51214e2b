"""The blur-kernel options of ``dip deblur`` (and ``dip batch deblur``), declared and checked.

- ``--kernel SPEC``: the known blur (non-blind);
- ``--kernel-size K`` or ``KhxKw`` (rows x columns, e.g. ``9x15``): blind deblurring, the
  support of the estimated kernel, each side from ``BLIND_MIN_SIZE`` to ``BLIND_MAX_SIZE`` and
  at most half the image's side along it;
- ``--kernel-out FILE``: where a blind fit writes its estimate;
- ``--kernel-lr RATE``, ``--kernel-warmup STEPS``, ``--kernel-steps STEPS``: the kernel
  generator's Adam learning rate, the steps it is held for first and the steps it is fitted
  for after that (``FitConfig.physics_lr`` / ``physics_warmup_steps`` / ``physics_steps``).

Every value arrives as text (``dip batch`` passes them on unparsed) and a bad one is a
one-line ``UsageError`` naming the option, the value and the fix (exit 2).
"""
from __future__ import annotations

import math
import re
from typing import Any

from dip.cli.argtypes import MAX_STEPS
from dip.cli.errors import UsageError

#: smallest --kernel-size side (dip.physics.blind_blur.MIN_SIZE, mirrored: parsing imports no torch)
BLIND_MIN_SIZE = 3
#: largest (dip.physics.blur_kernels.MAX_SIZE)
BLIND_MAX_SIZE = 129

_SIZE = re.compile(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?")


def add_kernel_options(p) -> None:
    """--kernel, --kernel-size, --kernel-out, --kernel-lr, --kernel-warmup and --kernel-steps on
    ``dip deblur``'s parser."""
    p.add_argument("--kernel", metavar="SPEC",
                   help="the known blur: gaussian:SIGMA, box:SIZE, motion:LENGTH,ANGLE (degrees), or a .npy array / "
                        "image file of the point-spread function (normalised to sum 1)")
    p.add_argument("--kernel-size", metavar="K|KhxKw",
                   help="blind deblurring (instead of --kernel): the unknown blur is estimated with the image, on a "
                        "K x K support or one of Kh rows and Kw columns (e.g. 9x15); each side a whole number from "
                        f"{BLIND_MIN_SIZE} to half the image's side, a little larger than the blur; recipe "
                        "deblur-blind (a round blur: defocus), or --recipe deblur-blind-motion for camera shake "
                        "(give the shake's bounding box)")
    p.add_argument("--kernel-out", metavar="FILE",
                   help="with --kernel-size: where the estimated kernel goes, .png (16-bit grey, its largest value "
                        "white) or .npy (the values, summing to 1); default OUT.kernel.png beside the output; "
                        "--report also lists it")
    p.add_argument("--kernel-lr", metavar="RATE",
                   help="with --kernel-size: Adam learning rate of the kernel generator (default: the recipe's, "
                        "1e-5 for deblur-blind, 1e-4 for deblur-blind-motion)")
    p.add_argument("--kernel-warmup", metavar="STEPS",
                   help="with --kernel-size: steps the kernel is held at its start while the image first fits "
                        "(default: the recipe's, 500 for deblur-blind, 100 for deblur-blind-motion; 0: fitted "
                        "from the first step)")
    p.add_argument("--kernel-steps", metavar="STEPS",
                   help="with --kernel-size: steps the kernel is fitted for after its warm-up, then held while the "
                        "image goes on fitting (default: the recipe's, 'all' for deblur-blind, 500 for "
                        "deblur-blind-motion; 'all': to the end)")


def blind(args) -> bool:
    """Whether ``dip deblur`` is asked to estimate the kernel (--kernel-size, not --kernel)."""
    return getattr(args, "kernel_size", None) is not None


def check_kernel_options(args) -> None:
    """Exactly one of --kernel and --kernel-size, a valid --kernel-size, and --kernel-out,
    --kernel-lr, --kernel-warmup, --kernel-steps only with --kernel-size (one-line UsageErrors; dip batch checks
    here too)."""
    given = [flag for flag, value in (("--kernel", getattr(args, "kernel", None)),
                                      ("--kernel-size", getattr(args, "kernel_size", None))) if value is not None]
    if len(given) != 1:
        raise UsageError("deblur: give exactly one of --kernel SPEC (the known blur) and --kernel-size K (blind: "
                         f"the unknown blur's size), got {' and '.join(given) if given else 'neither'}")
    if getattr(args, "kernel_out", None) is not None and not blind(args):
        raise UsageError("--kernel-out: only a blind fit (--kernel-size K) estimates a kernel to write")
    for flag, dest in (("--kernel-lr", "kernel_lr"), ("--kernel-warmup", "kernel_warmup"),
                       ("--kernel-steps", "kernel_steps")):
        if getattr(args, dest, None) is not None and not blind(args):
            raise UsageError(f"{flag} {getattr(args, dest)}: only a blind fit (--kernel-size K) fits a kernel; "
                             f"drop {flag}, or give --kernel-size instead of --kernel")
    if blind(args):
        kernel_size_arg(args)
    else:
        kernel_arg(args)  # a bad --kernel is an error before anything runs


def kernel_size_arg(args, image_hw: tuple[int, int] | None = None) -> tuple[int, int]:
    """--kernel-size ``K`` or ``KhxKw`` as (Kh, Kw), each side from BLIND_MIN_SIZE to
    BLIND_MAX_SIZE (and to half the side of an image of ``image_hw`` along it); a bad value is
    a one-line UsageError."""
    text = str(args.kernel_size).strip()
    match = _SIZE.fullmatch(text)
    if match is None:
        raise UsageError(f"--kernel-size {args.kernel_size}: not a whole number K or KhxKw; give the blur's size "
                         "in pixels, e.g. --kernel-size 11, or rows x columns, e.g. --kernel-size 9x15")
    kh = int(match.group(1))
    kw = kh if match.group(2) is None else int(match.group(2))
    square = kh == kw and match.group(2) is None
    for side in (kh, kw):
        if not BLIND_MIN_SIZE <= side <= BLIND_MAX_SIZE:
            raise UsageError(f"--kernel-size {text}: {'must be' if square else 'each side must be'} from "
                             f"{BLIND_MIN_SIZE} to {BLIND_MAX_SIZE} pixels")
    if image_hw is not None:
        h, w = image_hw
        if square and kh > min(h, w) // 2:
            raise UsageError(f"--kernel-size {text}: larger than half the image's smaller side ({min(h, w)} "
                             f"pixels), too little image to estimate the blur from; at most {min(h, w) // 2}")
        for what, side, image_side in (("rows", kh, h), ("columns", kw, w)):
            if side > image_side // 2:
                raise UsageError(f"--kernel-size {text}: {side} {what}, more than half the image's {image_side}, "
                                 f"too little image to estimate the blur from; at most {image_side // 2} {what}")
    return kh, kw


def kernel_size_setting(args) -> int | list[int]:
    """--kernel-size as the operator's ``kernel_size`` setting: K for a square, else [Kh, Kw]."""
    kh, kw = kernel_size_arg(args)
    return kh if kh == kw else [kh, kw]


def kernel_fit_overrides(args) -> dict[str, Any]:
    """The FitConfig fields --kernel-lr, --kernel-warmup and --kernel-steps set (``physics_lr``,
    ``physics_warmup_steps``, ``physics_steps``: None for 'all'), checked."""
    overrides: dict[str, Any] = {}
    rate = getattr(args, "kernel_lr", None)
    if rate is not None:
        try:
            value = float(rate)
        except ValueError:
            value = math.nan
        if not (value > 0 and math.isfinite(value)):
            raise UsageError(f"--kernel-lr {rate}: not a positive number; give the kernel generator's Adam "
                             "learning rate, e.g. --kernel-lr 1e-5")
        overrides["physics_lr"] = value
    warmup = getattr(args, "kernel_warmup", None)
    if warmup is not None:
        steps = _step_count(warmup, 0)
        if steps is None:
            raise UsageError(f"--kernel-warmup {warmup}: not a whole number of steps from 0 to {MAX_STEPS}; "
                             "give how many steps the kernel is held first, e.g. --kernel-warmup 500")
        overrides["physics_warmup_steps"] = steps
    fitted = getattr(args, "kernel_steps", None)
    if fitted is not None:
        to_the_end = str(fitted).strip().lower() == "all"
        count = None if to_the_end else _step_count(fitted, 1)
        if count is None and not to_the_end:
            raise UsageError(f"--kernel-steps {fitted}: not a whole number of steps from 1 to {MAX_STEPS} or 'all'; "
                             "give how many steps the kernel is fitted after its warm-up, e.g. --kernel-steps 500")
        overrides["physics_steps"] = count
    return overrides


def _step_count(text, minimum: int) -> int | None:
    """``text`` as a whole number of steps from ``minimum`` to MAX_STEPS, else None."""
    try:
        value = int(str(text).strip())
    except ValueError:
        return None
    return value if minimum <= value <= MAX_STEPS else None


def warmup_warning(args, steps: int) -> str | None:
    """The warning for a --kernel-warmup of at least the fit's ``steps`` (the kernel is held
    throughout: meant only for a fit continued with ``dip resume --steps``), else None."""
    warmup = getattr(args, "kernel_warmup", None)
    if warmup is None or int(str(warmup).strip()) < steps:
        return None
    return (f"--kernel-warmup {warmup} is not fewer than the fit's {steps} steps: the kernel stays at its start "
            "(unless 'dip resume --steps' continues the fit); give fewer warm-up steps to fit it")


def kernel_arg(args) -> Any:
    """The point-spread function ``--kernel`` names, float64 (Kh, Kw) summing to 1; a bad spec
    is a one-line UsageError."""
    from dip.physics.blur_kernels import parse_kernel

    try:
        return parse_kernel(args.kernel)
    except ValueError as exc:
        raise UsageError(f"--kernel: {exc}") from None
