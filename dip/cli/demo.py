"""``dip demo``: noise a bundled photograph, denoise it, print the PSNR gain."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from dip.cli.argtypes import positive_int
from dip.cli.checks import apply_threads, hw, resolve_device
from dip.cli.errors import EXIT_OK, UsageError, say
from dip.cli.info import example_image_path
from dip.cli.progress import ProgressBar
from dip.engine.config import PRECISIONS

DEMO_SIGMA = 25.0
DEMO_STEPS = 400
DEMO_SIZE = 64


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="restore a bundled example image (noise, sigma 25)",
                       description="Adds Gaussian noise (sigma 25) to a bundled photograph (public domain, "
                                   "NASA), denoises it with the 'denoise' recipe and prints the PSNR gain. "
                                   "Writes dip-demo-{clean,noisy,restored}.png to --outdir, replacing "
                                   "earlier demo images.")
    p.add_argument("--outdir", default=".", help="folder for the demo's images (default: here)")
    p.add_argument("--steps", type=positive_int, default=DEMO_STEPS,
                   help=f"optimisation steps (default {DEMO_STEPS})")
    p.add_argument("--size", type=positive_int, default=DEMO_SIZE,
                   help=f"side of the example image in pixels (default {DEMO_SIZE}; the bundled one is 96)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise and the fit")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    p.add_argument("--threads", type=positive_int)
    p.add_argument("--precision", choices=PRECISIONS)
    p.add_argument("--quiet", "-q", action="store_true")
    p.add_argument("--debug", action="store_true")


def _example(size: int, seed: int):
    """The bundled image at ``size`` x ``size`` (C, H, W), its ImageInfo, and a noisy copy."""
    import torch

    from dip import images

    clean, info = images.read_image(example_image_path())
    if tuple(clean.shape[-2:]) != (size, size):
        clean = torch.nn.functional.interpolate(clean[None], size=(size, size), mode="bicubic",
                                                antialias=True, align_corners=False)[0].clamp(0, 1)
    gen = torch.Generator().manual_seed(seed)
    noisy = (clean + torch.randn(clean.shape, generator=gen) * (DEMO_SIGMA / 255.0)).clamp(0, 1)
    return clean, info, noisy


def run(args) -> int:
    """``dip demo``: writes dip-demo-{clean,noisy,restored}.png to --outdir."""
    from dip import images, metrics, recipes
    from dip.cli.job import tune_process

    outdir = Path(args.outdir)
    if not outdir.is_dir():
        raise UsageError(f"--outdir {outdir} does not exist", "create it first or choose another folder")
    device = resolve_device(args.device)
    apply_threads(args.threads)
    if args.size < 16:
        raise UsageError(f"--size {args.size} is too small", "use 16 or more")
    tune_process(args)
    clean, info, noisy = _example(args.size, args.seed)
    overrides: dict[str, Any] = {"steps": args.steps, "seed": args.seed, "device": device}
    if args.precision:
        overrides["precision"] = args.precision
    recipe = recipes.get("denoise", **overrides)
    say(args, f"demo: denoising a {hw(clean)} photograph with Gaussian noise (sigma {DEMO_SIGMA:g}), "
              f"{recipe.fit.steps} steps on {device}")
    bar = ProgressBar.for_command(recipe.fit.steps, quiet=bool(args.quiet), desc="demo")
    try:
        result = recipes.run(recipe, noisy, gt=clean, callbacks=[bar])
    finally:
        bar.close()
    restored = result.image[0]
    paths = {name: outdir / f"dip-demo-{name}.png" for name in ("clean", "noisy", "restored")}
    for name, img in (("clean", clean), ("noisy", noisy), ("restored", restored)):
        images.write_image(paths[name], img, info)
    before = metrics.psnr(noisy, clean)
    after = metrics.psnr(restored, clean)
    print(f"PSNR {before:.2f} dB (noisy) -> {after:.2f} dB (restored): gain {after - before:+.2f} dB "
          f"in {result.steps_run} steps, {result.seconds:.1f} s")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return EXIT_OK
