"""Boundary model of the deblur fit: "valid" against reflect / replicate padding, and when ES-WMV fires.

    OMP_NUM_THREADS=1 python benchmarks/deblur_boundary.py SIZE STEPS MODES KERNEL [WIDTH [IMAGE]]
    e.g.  python benchmarks/deblur_boundary.py 64 3000 valid,reflect,replicate gaussian:1.6 64 astronaut

The scene is a crop of a scikit-image photograph with a margin; it is blurred with a "valid"
convolution (as a camera sees it), cropped to SIZE², and 1 % white noise is added. Each MODE
fits the skip net (WIDTH channels per level, 5 levels) through ``Blur(kernel, MODE)`` with the
deblur recipe's schedule (lr 0.01, reg noise 0.03, averaging 0.99), printing the PSNR of the
plain and averaged outputs every 100 steps, and where two ES-WMV settings (W 100 / P 1000 and
W 200 / P 500) would have stopped and the PSNR of what they return.  Numbers it gave are in
``dip.recipes._deblur``'s docstring (measured before the FFT path existed: with it an 11-pixel
kernel gives the same curve to within a few hundredths of a dB).
"""
import sys
import time

import skimage.data
import torch

from dip import metrics, models, stopping
from dip.fit import FitConfig, fit, generator_geometry
from dip.inputs import make_input
from dip.physics import Blur, parse_kernel


def scene(name: str, size: int, kernel: torch.Tensor, noise: float = 0.01):
    """(observation (1, 3, size, size), ground truth at its pixels) of a photograph's crop."""
    img = torch.from_numpy(getattr(skimage.data, name)()[..., :3].copy()).permute(2, 0, 1).float() / 255
    m = kernel.shape[-1]
    top, left = img.shape[1] // 2 - size // 2 - 60, img.shape[2] // 2 - size // 2
    crop = img[:, top - m: top + size + m, left - m: left + size + m][None]
    true = Blur(kernel, "valid")
    blurred = true(crop)
    o = (blurred.shape[-1] - size) // 2
    y = blurred[..., o:o + size, o:o + size]
    pt = true.pads[2]
    gt = crop[..., o + pt: o + pt + size, o + pt: o + pt + size]
    y = (y + noise * torch.randn(y.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    return y, gt


def run(mode: str, y, gt, kernel, steps: int, width: int) -> None:
    op = Blur(kernel, mode)
    torch.manual_seed(0)
    gen = models.build("skip", 32, 3, num_channels_down=[width] * 5, num_channels_up=[width] * 5,
                       num_channels_skip=[4] * 5, upsample_mode="bilinear", pad="reflection", need_sigmoid=True,
                       need_bias=True, act_fun="LeakyReLU")
    _, z_hw = generator_geometry(gen, op.x_size(tuple(y.shape[-2:])))
    z = make_input("noise", 32, z_hw, generator=torch.Generator().manual_seed(0))
    stoppers = {(w, p): stopping.WindowedVarianceStopper(window=w, patience=p) for w, p in ((100, 1000), (200, 500))}
    fired: dict = {}
    start = time.perf_counter()

    def watch(ev):
        for key, st in stoppers.items():
            if key not in fired and st.update(ev.step, ev.output):
                fired[key] = (ev.step, st.returned_step, round(metrics.psnr(st.best_output, gt), 2))
        if ev.step % 100 == 0:
            avg = metrics.psnr(ev.output_avg, gt) if ev.output_avg is not None else float("nan")
            print(f"{mode} step {ev.step}: {metrics.psnr(ev.output, gt):.2f} / avg {avg:.2f} dB "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)

    cfg = FitConfig(steps=steps, lr=0.01, reg_noise_std=0.03, exp_weight=0.99, stop="steps")
    res = fit(y, op, gen, z, cfg, callbacks=[watch])
    print(f"RESULT {mode}: {metrics.psnr(res.image, gt):.2f} dB after {steps} steps; ES-WMV (W, P) -> "
          f"(stop step, returned step, dB): {fired}", flush=True)


def main(argv) -> None:
    size, steps, modes, spec = int(argv[1]), int(argv[2]), argv[3].split(","), argv[4]
    width = int(argv[5]) if len(argv) > 5 else 64
    kernel = torch.from_numpy(parse_kernel(spec)).float()
    y, gt = scene(argv[6] if len(argv) > 6 else "astronaut", size, kernel)
    print(f"blurred input: {metrics.psnr(y, gt):.2f} dB", flush=True)
    for mode in modes:
        run(mode, y, gt, kernel, steps, width)


if __name__ == "__main__":
    main(sys.argv)
