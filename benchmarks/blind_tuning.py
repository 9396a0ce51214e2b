"""Blind-deblurring settings, measured: ``dip eval``'s blind cases with recipe overrides.

    OMP_NUM_THREADS=1 python benchmarks/blind_tuning.py --cases deblur-blind-gauss --images astronaut \\
        --size 64 --steps 2000 --set physics_lr=1e-4 --physics init_sigma=1.0 --every 250

Prints, per run, the PSNR of the returned (averaged) image every ``--every`` steps, the final
PSNR, the kernel's L1 error and the seconds: the measurements behind the ``deblur-blind`` recipe
(Intel Xeon, 1 thread). ``--set`` takes ``FitConfig`` fields, ``--physics`` ``BlindBlur``
arguments, ``--net-width`` the skip net's channels per level.
"""
from __future__ import annotations

import argparse
import json


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _pairs(items):
    out = {}
    for item in items or ():
        key, _, value = item.partition("=")
        out[key] = _value(value)
    return out


def main(argv=None) -> None:
    import torch

    from dip import evaluate as ev
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="deblur-blind-gauss")
    p.add_argument("--images", default="astronaut")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--every", type=int, default=250)
    p.add_argument("--set", action="append", help="FitConfig field=value")
    p.add_argument("--physics", action="append", help="BlindBlur argument=value")
    p.add_argument("--net-width", type=int)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    fit = _pairs(args.set)
    physics = _pairs(args.physics)
    overrides = dict(fit)
    if args.net_width:
        overrides["net_options"] = {"num_channels_down": [args.net_width] * 5, "num_channels_up": [args.net_width] * 5}

    for kind in args.cases.split(","):
        for name, img in ev.builtin_images(args.size, args.images.split(",")):
            case = ev.make_case(kind, name, img, 0)
            row = ev.run_case(case, steps=args.steps, curve_every=args.every, physics_options=physics, **overrides)
            curve = " ".join(f"{s}:{v:.2f}" for s, v in zip(row["curve"]["step"], row["curve"]["psnr_avg"],
                                                              strict=True) if s % args.every == 0)
            extra = f" kernel_l1 {row['kernel_l1']:.3f}" if "kernel_l1" in row else ""
            guess = f" rl_guess {row['rl_guess_psnr']:.2f}" if "rl_guess_psnr" in row else ""
            print(f"{kind} {name} {fit} {physics}: input {row['input_psnr']:.2f} rl {row['rl_psnr']:.2f}{guess} "
                  f"fixed {row['fixed_psnr']:.2f}{extra} peak {row['peak_psnr']:.2f}@{row['peak_step']} "
                  f"auto {row['auto_psnr']:.2f}@{row['auto_return_step']} {row['fixed_seconds']:.0f}s | {curve}",
                  flush=True)


if __name__ == "__main__":
    main()
