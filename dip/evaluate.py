"""Quality evaluation harness: ``evaluate()`` and its cases (the ``dip eval`` command is ``dip.cli.eval_command``).

For each case (a task, a ground-truth image, a seed) it degrades the image, restores it, and
reports PSNR (dB) and SSIM against the ground truth of:

- ``input``: the degraded observation (for super-resolution, the low-resolution image enlarged
  by pixel replication, so that it has the ground truth's size);
- ``baseline``: a classical method: bicubic enlargement for sr; nearest-known-pixel fill
  (``scipy.ndimage.distance_transform_edt`` indices) for restore/inpaint; BM3D for denoising
  when the optional ``bm3d`` package is importable (else left empty);
- ``fixed``: DIP with the recipe's step count (or ``steps``);
- ``auto``: DIP with ``stop="auto"`` (ES-WMV, ``dip.stopping``);
- ``peak``: the best PSNR reached along the same run by the image the recipe returns (the
  averaged output where averaging is on, else the plain output), sampled every
  ``curve_every`` steps: an upper bound for any stopping rule on that run;

plus the steps and wall-clock seconds of ``fixed`` and ``auto``.

One fit per case
----------------
Automatic stopping does not change the optimisation, only where it ends.  So each case runs the
fixed-step fit once, with a callback that feeds every step's plain output to a stopper built
exactly as the engine builds it (``dip.stopping.from_config``); the ``auto`` result is what that
stopper holds when it fires; if it never fires, an auto run is a fixed run and returns the same
image.
With the same seed the trajectory up to the stop step is the same as a real ``stop="auto"``
run's, so the result is identical (``tests/test_evaluate.py`` checks this against the engine);
``auto`` seconds are the wall-clock time from the fit's start to the stop step.

Built-in cases
--------------
Images: crops (at native resolution, ``size`` × ``size``) of photographs bundled with
scikit-image (``skimage.data``: astronaut, chelsea, coffee, rocket, immunohistochemistry); no
downloads.  ``--images DIR`` uses every image file in DIR instead (centre-cropped to ``size``
when larger).  Degradations, seeded from (seed, image name, task):

- ``denoise25`` / ``denoise50``: y = clip(x + N(0, (sigma/255)^2), 0, 1); recipes ``denoise``
  / ``denoise-50``;
- ``jpeg10``: the crop rounded to 8 bits, written as a JPEG of quality 10 by PIL (libjpeg's
  standard tables, 4:2:0 chroma for colour) and read back; recipe ``jpeg``; deterministic (the
  seed only seeds the fit); no classical baseline;
- ``sr4``: the low-resolution image made with PIL's Lanczos resize (as the paper's inputs were),
  rounded to 8 bits; recipe ``sr4``; the image is cropped to a multiple of 4 first;
- ``restore50``: half the pixels (all channels of a pixel together) set to zero; recipe
  ``restore-50``;
- ``inpaint-text``: lines of text drawn with PIL into the mask; recipe ``inpaint-text``;
- ``deblur-gauss`` / ``deblur-motion9`` / ``deblur-motion15``: the crop blurred ("valid") by a
  Gaussian (sigma 1.6) or a straight motion (9 px at 30°, 15 px at 120°), plus white noise
  sigma 0.01; the ground truth is the crop's centre at the observation's pixels (S - K + 1
  square); baselines Wiener and Richardson–Lucy tuned per image (``dip.evaluate_deblur``),
  whose columns ``wiener_psnr``/``rl_psnr`` and chosen parameters join the row; recipe ``deblur``.
- ``deblur-blind-gauss`` / ``-motion9`` / ``-motion15``: the same observations (same draw), fitted
  without the kernel (recipe ``deblur-blind`` for the Gaussian, ``deblur-blind-motion`` for the
  motion blurs; told the kernel's size only); the row adds the
  estimate's error (``kernel_l1``) and, where the case names a guess (a Gaussian of sigma 1.0
  for the sigma 1.6 blur), Richardson–Lucy with that wrong kernel (``rl_guess_psnr``); both are
  CSV columns and keys of the curves file (empty / null where they do not apply).

``metric="y"`` measures PSNR and SSIM on the luma (BT.601) of colour images, with a 4-pixel
border ignored for super-resolution (the paper's SR protocol).

Seeds: a seed sets both the degradation's random draw and the fit's seed (network weights, code
z, reg-noise), so seeds sample both sources of spread.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import os
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dip import metrics, recipes, stopping
from dip.engine.result import FitResult
from dip.files import atomic_write

log = logging.getLogger(__name__)

__all__ = ["TASKS", "BUILTIN_IMAGES", "CSV_FIELDS", "BLIND_FIELDS", "DEBLUR_FIELDS", "Case", "builtin_images",
           "load_images", "make_case", "baseline", "run_case", "evaluate", "format_table", "write_csv", "write_curves",
           "CURVES_FORMAT"]

#: case kind -> (recipe name, task, parameter)
TASKS: dict[str, dict] = {
    "denoise25": {"recipe": "denoise", "task": "denoise", "sigma": 25.0},
    "denoise50": {"recipe": "denoise-50", "task": "denoise", "sigma": 50.0},
    "jpeg10": {"recipe": "jpeg", "task": "jpeg", "quality": 10},
    "sr4": {"recipe": "sr4", "task": "sr", "factor": 4},
    "restore50": {"recipe": "restore-50", "task": "restore", "missing": 0.5},
    "inpaint-text": {"recipe": "inpaint-text", "task": "inpaint"},
    "deblur-gauss": {"recipe": "deblur", "task": "deblur", "kernel": "gaussian:1.6", "noise": 0.01},
    "deblur-motion9": {"recipe": "deblur", "task": "deblur", "kernel": "motion:9,30", "noise": 0.01},
    "deblur-motion15": {"recipe": "deblur", "task": "deblur", "kernel": "motion:15,120", "noise": 0.01},
    # blind: the observations of the cases above ("draw"), the kernel's size only given to the fit
    "deblur-blind-gauss": {"recipe": "deblur-blind", "task": "deblur", "kernel": "gaussian:1.6", "noise": 0.01,
                           "draw": "deblur-gauss", "guess": "gaussian:1.0"},
    "deblur-blind-motion9": {"recipe": "deblur-blind-motion", "task": "deblur", "kernel": "motion:9,30", "noise": 0.01,
                             "draw": "deblur-motion9"},
    "deblur-blind-motion15": {"recipe": "deblur-blind-motion", "task": "deblur", "kernel": "motion:15,120",
                              "noise": 0.01, "draw": "deblur-motion15"},
}

#: skimage.data image -> crop centre (row, column) as fractions of the photograph's size
BUILTIN_IMAGES: dict[str, tuple[float, float]] = {
    "astronaut": (0.25, 0.45),
    "chelsea": (0.40, 0.50),
    "coffee": (0.45, 0.50),
    "rocket": (0.55, 0.53),
    "immunohistochemistry": (0.50, 0.50),
}

_TEXT = "Deep Image Prior restores images"


@dataclasses.dataclass
class Case:
    """One evaluation case.

    Attributes:
        kind: a key of ``TASKS``; image: image name; seed: int.
        gt: ground truth (C, H, W) float32 in [0, 1].
        observation: what the fit sees: (C, H, W), or (C, H/f, W/f) for sr.
        degraded: the observation at the ground truth's size (C, H, W), for the ``input`` metric.
        mask: (1, H, W) float32, 1 = known pixel, for restore/inpaint; else None.
        factor: sr factor or None.
        kernel: the blur (Kh, Kw) float64 of deblurring cases, else None.
    """

    kind: str
    image: str
    seed: int
    gt: torch.Tensor
    observation: torch.Tensor
    degraded: torch.Tensor
    mask: torch.Tensor | None = None
    factor: int | None = None
    kernel: np.ndarray | None = None

    @property
    def recipe(self) -> str:
        return TASKS[self.kind]["recipe"]

    @property
    def name(self) -> str:
        return f"{self.kind}/{self.image}/seed{self.seed}"


# ------------------------------------------------------------------------------- images


def _to_chw(a: np.ndarray) -> torch.Tensor:
    a = np.asarray(a)
    if a.dtype == np.uint8:
        a = a.astype(np.float32) / 255.0
    a = a.astype(np.float32)
    if a.ndim == 2:
        a = a[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))


def _crop_at(img: torch.Tensor, size: int | None, centre=(0.5, 0.5)) -> torch.Tensor:
    """Square crop of side ``size`` (C, size, size) around ``centre`` (fractions), clamped to
    the image; the image itself when ``size`` is None."""
    if size is None:
        return img
    _, h, w = img.shape
    if size > min(h, w):
        raise ValueError(f"crop size {size} is larger than the image ({h}x{w}); use a smaller size")
    top = min(max(int(centre[0] * h) - size // 2, 0), h - size)
    left = min(max(int(centre[1] * w) - size // 2, 0), w - size)
    return img[:, top:top + size, left:left + size].contiguous()


def builtin_images(size: int = 128, names: Sequence[str] | None = None) -> list[tuple[str, torch.Tensor]]:
    """Crops of scikit-image's bundled photographs: [(name, (3, size, size) float32 in [0, 1])]."""
    from skimage import data

    names = list(BUILTIN_IMAGES) if names is None else list(names)
    unknown = [n for n in names if n not in BUILTIN_IMAGES]
    if unknown:
        raise ValueError(f"unknown built-in image(s) {unknown}; choose from {', '.join(BUILTIN_IMAGES)}")
    return [(n, _crop_at(_to_chw(getattr(data, n)()), size, BUILTIN_IMAGES[n])) for n in names]


def load_images(directory: str | os.PathLike, size: int | None = None) -> list[tuple[str, torch.Tensor]]:
    """Every readable image in ``directory`` (sorted by name) as [(stem, (C, H, W) float32)],
    centre-cropped to ``size`` × ``size`` when given and the image is larger."""
    from dip.images import SUPPORTED_SUFFIXES, read_image

    d = Path(directory)
    if not d.is_dir():
        raise ValueError(f"--images must be a directory of ground-truth images, got {str(d)!r}")
    files = sorted(p for p in d.iterdir() if p.suffix.lower() in SUPPORTED_SUFFIXES)
    if not files:
        raise ValueError(f"no images ({', '.join(sorted(SUPPORTED_SUFFIXES))}) in {str(d)!r}")
    out = []
    for p in files:
        img, _ = read_image(p)
        if size is not None and min(img.shape[-2:]) > size:
            img = _crop_at(img, size)
        out.append((p.stem, img.float().contiguous()))
    return out


# ------------------------------------------------------------------------- degradations


def _rng(kind: str, image: str, seed: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(image.encode()), zlib.crc32(kind.encode())])


def _pil_resize(img: torch.Tensor, hw: tuple[int, int], method: str) -> torch.Tensor:
    """Per-channel float resize with PIL (mode 'F'), (C, H, W) -> (C, h, w)."""
    from PIL import Image

    resample = {"lanczos": Image.Resampling.LANCZOS, "bicubic": Image.Resampling.BICUBIC}[method]
    chans = [np.asarray(Image.fromarray(c.numpy().astype(np.float32), mode="F")
                        .resize((hw[1], hw[0]), resample), dtype=np.float32) for c in img]
    return torch.from_numpy(np.stack(chans))


def text_mask(hw: tuple[int, int], rng: np.random.Generator) -> torch.Tensor:
    """(1, H, W) float32 mask, 0 under lines of text drawn with PIL, 1 elsewhere."""
    from PIL import Image, ImageDraw, ImageFont

    h, w = hw
    font_px = max(8, h // 9)
    font = ImageFont.load_default(size=font_px)
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    words = _TEXT.split()
    y = int(rng.integers(0, max(1, font_px // 2)))
    line = 0
    while y < h - font_px // 2:
        shift = int(rng.integers(0, len(words)))
        text = " ".join(words[shift:] + words[:shift])
        draw.text((int(rng.integers(-font_px, font_px // 2 + 1)), y), text, fill=255, font=font)
        y += int(font_px * 1.6)
        line += 1
    m = (np.asarray(canvas) < 128).astype(np.float32)
    return torch.from_numpy(m)[None]


def jpeg_round_trip(img: torch.Tensor, quality: int) -> torch.Tensor:
    """``img`` (C, H, W) float in [0, 1], C = 1 or 3, as ``dip.images`` writes it to a JPEG of
    ``quality`` (1-95; 8 bits) and reads it back: (C, H, W) float32 multiples of 1/255, what a
    fit of that file sees."""
    import tempfile

    from dip.images import read_image, write_image

    with tempfile.TemporaryDirectory() as folder:
        path = write_image(Path(folder) / "case.jpg", img, quality=quality)
        return read_image(path)[0]


def make_case(kind: str, image: str, gt: torch.Tensor, seed: int = 0) -> Case:
    """Degrade ``gt`` (C, H, W) float in [0, 1] for case ``kind`` (a key of ``TASKS``), seeded by
    (seed, image, kind)."""
    if kind not in TASKS:
        raise ValueError(f"unknown case {kind!r}; choose from {', '.join(TASKS)}")
    if not (isinstance(gt, torch.Tensor) and gt.dim() == 3):
        raise ValueError(f"gt must be a (C, H, W) tensor, got {getattr(gt, 'shape', type(gt))}")
    spec = TASKS[kind]
    rng = _rng(spec.get("draw", kind), image, seed)
    gt = gt.float().clamp(0, 1)
    if spec["task"] == "denoise":
        noise = rng.normal(0.0, spec["sigma"] / 255.0, size=tuple(gt.shape)).astype(np.float32)
        y = (gt + torch.from_numpy(noise)).clamp(0, 1)
        return Case(kind, image, seed, gt, y, y)
    if spec["task"] == "jpeg":
        y = jpeg_round_trip(gt, spec["quality"])
        return Case(kind, image, seed, gt, y, y)
    if spec["task"] == "sr":
        f = spec["factor"]
        h, w = (gt.shape[1] // f) * f, (gt.shape[2] // f) * f
        if h == 0 or w == 0:
            raise ValueError(f"image {image!r} ({tuple(gt.shape[1:])}) is smaller than the sr factor {f}")
        gt = gt[:, :h, :w].contiguous()
        lr = _pil_resize(gt, (h // f, w // f), "lanczos").clamp(0, 1)
        lr = torch.round(lr * 255.0) / 255.0  # as an 8-bit file would hold it
        degraded = lr.repeat_interleave(f, 1).repeat_interleave(f, 2)
        return Case(kind, image, seed, gt, lr, degraded, factor=f)
    if spec["task"] == "deblur":
        from dip import evaluate_deblur

        truth, y, kernel = evaluate_deblur.degrade(gt, spec["kernel"], spec["noise"], rng)
        return Case(kind, image, seed, truth, y, y, kernel=kernel)
    if spec["task"] == "restore":
        mask = torch.from_numpy((rng.random(tuple(gt.shape[1:])) >= spec["missing"]).astype(np.float32))[None]
    else:
        mask = text_mask((gt.shape[1], gt.shape[2]), rng)
    y = gt * mask
    return Case(kind, image, seed, gt, y, y, mask=mask)


def baseline(case: Case) -> torch.Tensor | None:
    """Classical result for ``case`` (C, H, W), or None (JPEG; denoising without ``bm3d``)."""
    task = TASKS[case.kind]["task"]
    if task == "deblur":
        from dip import evaluate_deblur

        return evaluate_deblur.baseline(case)
    if task == "sr":
        return _pil_resize(case.observation, (case.gt.shape[1], case.gt.shape[2]), "bicubic").clamp(0, 1)
    if task == "jpeg":
        return None
    if task in ("restore", "inpaint"):
        from scipy.ndimage import distance_transform_edt

        known = case.mask[0].numpy() > 0
        if not known.any():
            return None
        _, (ii, jj) = distance_transform_edt(~known, return_indices=True)
        return case.observation[:, torch.from_numpy(ii), torch.from_numpy(jj)].contiguous()
    try:
        import bm3d  # optional extra
    except ImportError:
        return None
    y = case.observation.permute(1, 2, 0).numpy().astype(np.float64)
    sigma = TASKS[case.kind]["sigma"] / 255.0
    out = bm3d.bm3d_rgb(y, sigma) if y.shape[2] == 3 else bm3d.bm3d(y[:, :, 0], sigma)[:, :, None]
    return torch.from_numpy(np.clip(np.asarray(out, dtype=np.float32).reshape(y.shape), 0, 1)).permute(2, 0, 1)


# ---------------------------------------------------------------------------- one case


def _metric_kwargs(case: Case, metric: str) -> dict:
    if metric == "rgb":
        return {}
    if metric == "y":
        return {"y_channel": True, "border": 4 if TASKS[case.kind]["task"] == "sr" else 0}
    raise ValueError(f"metric must be 'rgb' or 'y', got {metric!r}")


class _Observer:
    """Fit callback: replays automatic stopping (see the module docstring) and records the
    PSNR-versus-step curve.

    With ``curve_windows`` (window sizes W) it also records, at the curve's steps and for each
    W, the ES-WMV variance of the last W plain outputs (``var``: exactly what a stopper with
    that window sees; NaN before W outputs) and the PSNR of their mean (``psnr_wmean``): the
    series from which ``benchmarks/tune_stopping.py`` replays stopping rules offline.  One
    never-stopping ``WindowedVarianceStopper`` per W observes every step (O(n) per step each,
    plus W stored outputs)."""

    every = 1

    def __init__(self, config, gt: torch.Tensor, metric_kw: dict, curve_every: int,
                 curve_windows: Sequence[int] = ()):
        self.stopper = stopping.from_config(config)
        self.gt = gt
        self.kw = metric_kw
        self.curve_every = curve_every
        self.start = time.perf_counter()
        self.stop_step: int | None = None
        self.stop_seconds: float | None = None
        self.stop_image: torch.Tensor | None = None
        self.curve: dict[str, Any] = {"step": [], "psnr": [], "psnr_avg": []}
        self.probes = {int(w): stopping.WindowedVarianceStopper(window=int(w), patience=10 ** 9)
                       for w in curve_windows}
        if self.probes:
            self.curve["var"] = {w: [] for w in self.probes}
            self.curve["psnr_wmean"] = {w: [] for w in self.probes}

    def __call__(self, ev) -> None:
        if self.stop_step is None and self.stopper.update(ev.step, ev.output):
            self.stop_step = ev.step
            self.stop_seconds = time.perf_counter() - self.start
            self.stop_image = self.stopper.best_output.detach().float().clone().cpu()
        for probe in self.probes.values():
            probe.update(ev.step, ev.output)
        if ev.step % self.curve_every == 0 or ev.step == ev.steps or ev.step == 1:
            self.curve["step"].append(ev.step)
            self.curve["psnr"].append(metrics.psnr(ev.output, self.gt, **self.kw))
            self.curve["psnr_avg"].append(
                metrics.psnr(ev.output_avg, self.gt, **self.kw) if ev.output_avg is not None else math.nan)
            for w, probe in self.probes.items():
                var, mean = probe.variance, probe.window_mean()
                self.curve["var"][w].append(math.nan if var is None else var)
                self.curve["psnr_wmean"][w].append(
                    math.nan if mean is None else metrics.psnr(mean, self.gt, **self.kw))


def _scores(prefix: str, img: torch.Tensor | None, gt: torch.Tensor, kw: dict) -> dict:
    if img is None:
        return {f"{prefix}_psnr": math.nan, f"{prefix}_ssim": math.nan}
    return {f"{prefix}_psnr": metrics.psnr(img, gt, **kw), f"{prefix}_ssim": metrics.ssim(img, gt, **kw)}


def run_case(case: Case, *, steps: int | None = None, metric: str = "rgb",
             stop_window: int | None = None, stop_patience: int | None = None,
             curve_every: int = 1, curve_windows: Sequence[int] = (),
             plot_path: str | os.PathLike | None = None, **fit_overrides) -> dict:
    """Evaluate one case: degraded input, baseline, DIP fixed steps and DIP auto-stop.

    Args:
        steps: step count of the fixed run (and cap of the auto run); default the recipe's.
        stop_window, stop_patience: ES-WMV settings; default the recipe's ``FitConfig``.
        curve_every: PSNR-versus-step sampling (steps).
        curve_windows: window sizes W for which the curve also records the windowed variance
            and the PSNR of the window mean (``curve["var"][W]``, ``curve["psnr_wmean"][W]``);
            when not empty the recipe's own W is always added.  Empty (default): not recorded.
        plot_path: write the PSNR-versus-step plot (PNG) there.
        **fit_overrides: further ``recipes.get`` overrides: ``FitConfig`` fields (device,
            precision, ...) or ``net_options``.
    Returns:
        a flat dict (one table/CSV row): case, image, seed, recipe, size, *_psnr, *_ssim,
        fixed_steps, fixed_seconds, auto_steps, auto_return_step, auto_seconds, peak_psnr,
        peak_step, stop_reason, exp_weight, stop_window, stop_patience, and ``curve``
        (dict: ``step``, ``psnr``, ``psnr_avg`` lists of equal length, and with
        ``curve_windows`` ``var`` and ``psnr_wmean``, dicts {W: list}; not written to CSV).
    """
    if isinstance(curve_every, bool) or not isinstance(curve_every, int) or curve_every < 1:
        raise ValueError(f"curve_every must be an integer >= 1, got {curve_every!r}")
    curve_windows = _windows(curve_windows)
    kw = _metric_kwargs(case, metric)
    overrides = dict(fit_overrides, seed=case.seed, stop="steps")
    if steps is not None:
        overrides["steps"] = steps
    if stop_window is not None:
        overrides["stop_window"] = stop_window
    if stop_patience is not None:
        overrides["stop_patience"] = stop_patience
    recipe = recipes.get(case.recipe, **overrides)
    kernel = case.kernel
    if recipe.physics.get("name") == "blind_blur":  # told the blur's size, not the blur
        recipe.physics, kernel = {**recipe.physics, "kernel_size": list(case.kernel.shape)}, None
    if curve_windows:
        curve_windows = sorted(set(curve_windows) | {int(recipe.fit.stop_window)})
    observer = _Observer(recipe.fit, case.gt, kw, curve_every, curve_windows)
    result = recipes.run(recipe, case.observation, mask=case.mask, kernel=kernel, gt=case.gt,
                         callbacks=[observer])
    assert isinstance(result, FitResult)  # one fit: no ensemble asked for
    fixed_seconds = time.perf_counter() - observer.start

    st = observer.stopper
    if observer.stop_step is not None:
        auto_img, auto_steps, auto_seconds = observer.stop_image, observer.stop_step, observer.stop_seconds
        auto_ret, reason = st.returned_step, st.reason
    else:  # the rule never fired: an auto run ends as a fixed run does and returns the same image
        auto_img, auto_steps, auto_seconds = result.image, result.steps_run, fixed_seconds
        auto_ret, reason = result.returned_step, "steps (the rule did not fire before the step limit)"

    curve = observer.curve
    returned_kind = "psnr_avg" if recipe.fit.exp_weight is not None else "psnr"
    vals = np.asarray(curve[returned_kind], dtype=np.float64)
    peak_i = int(np.nanargmax(vals)) if np.isfinite(vals).any() else 0

    row = {"case": case.kind, "image": case.image, "seed": case.seed, "recipe": case.recipe,
           "size": "x".join(str(s) for s in case.gt.shape[1:]), "metric": metric}
    row.update(_scores("input", case.degraded, case.gt, kw))
    if case.kernel is not None:  # deblurring: both tuned baselines, the better one as "baseline"
        from dip import evaluate_deblur

        found = evaluate_deblur.tuned_baselines(case.observation, case.kernel, case.gt)
        row.update(_scores("baseline", evaluate_deblur.best(found), case.gt, kw))
        row.update(evaluate_deblur.baseline_columns(found))
        row.update(evaluate_deblur.blind_columns(case, TASKS[case.kind], result.physics))
    else:
        row.update(_scores("baseline", baseline(case), case.gt, kw))
    row.update(_scores("fixed", result.image, case.gt, kw))
    row.update(_scores("auto", auto_img, case.gt, kw))
    row.update({"fixed_steps": result.steps_run, "fixed_seconds": fixed_seconds,
                "auto_steps": auto_steps, "auto_return_step": auto_ret, "auto_seconds": auto_seconds,
                "peak_psnr": float(vals[peak_i]) if len(vals) else math.nan,
                "peak_step": int(curve["step"][peak_i]) if len(vals) else 0,
                "stop_reason": reason, "exp_weight": recipe.fit.exp_weight,
                "stop_window": int(recipe.fit.stop_window),
                "stop_patience": int(recipe.fit.stop_patience), "curve": curve})
    if plot_path is not None:
        plot_curve(row, plot_path)
    return row


def _windows(values: Sequence[int]) -> list[int]:
    out = []
    for w in values:
        if isinstance(w, bool) or not isinstance(w, (int, np.integer)) or w < 2:
            raise ValueError(f"curve windows must be integers >= 2, got {w!r} in {list(values)!r}")
        out.append(int(w))
    return out


def plot_curve(row: dict, path: str | os.PathLike) -> None:
    """PSNR-versus-step plot of one ``run_case`` row, as PNG (``dip.plots.eval_curve_png``),
    written atomically; missing folders are created."""
    from dip.files import atomic_write
    from dip.plots import eval_curve_png

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, eval_curve_png(row))


# ------------------------------------------------------------------------------- many


def evaluate(cases: Iterable[str] = tuple(TASKS), images: Sequence[tuple[str, torch.Tensor]] | None = None,
             *, size: int = 128, steps: int | None = None, seeds: Sequence[int] = (0,),
             metric: str = "rgb", plots: str | os.PathLike | None = None,
             stop_window: int | None = None, stop_patience: int | None = None,
             curve_every: int = 1, curve_windows: Sequence[int] = (),
             progress: Callable[[dict], None] | None = None,
             **fit_overrides) -> list[dict]:
    """Run every (case kind, image, seed) and return one row (dict) per run.

    Args:
        cases: keys of ``TASKS``.
        images: [(name, (C, H, W) float tensor in [0, 1])]; default ``builtin_images(size)``.
        size: crop size of the built-in images (ignored when ``images`` is given).
        steps, stop_window, stop_patience, curve_every, curve_windows, **fit_overrides: see
            ``run_case``.
        seeds: seeds to run (degradation and fit).
        metric: "rgb" or "y".
        plots: directory for one PSNR-versus-step PNG per run.
        progress: called with each finished row.
    """
    cases = list(cases)
    bad = [c for c in cases if c not in TASKS]
    if bad or not cases:
        raise ValueError(f"unknown case(s) {bad or cases}; choose from {', '.join(TASKS)}")
    if metric not in ("rgb", "y"):
        raise ValueError(f"metric must be 'rgb' or 'y', got {metric!r}")
    if images is None:
        images = builtin_images(size)
    rows = []
    for kind in cases:
        for name, img in images:
            for seed in seeds:
                case = make_case(kind, name, img, int(seed))
                plot = None if plots is None else Path(plots) / f"{kind}_{name}_seed{seed}.png"
                log.info("evaluating %s", case.name)
                row = run_case(case, steps=steps, metric=metric, stop_window=stop_window,
                               stop_patience=stop_patience, curve_every=curve_every,
                               curve_windows=curve_windows, plot_path=plot, **fit_overrides)
                rows.append(row)
                if progress is not None:
                    progress(row)
    return rows


def _fmt(p: float, s: float) -> str:
    return "-" if not math.isfinite(p) else f"{p:6.2f}/{s:.3f}"


def format_table(rows: Sequence[dict]) -> str:
    """Fixed-width text table of ``evaluate`` rows: PSNR/SSIM per method, steps and seconds,
    followed by per-case means."""
    head = (f"{'case':<13} {'image':<21} {'seed':>4}  {'input':>12} {'baseline':>12} {'fixed':>12} "
            f"{'auto':>12} {'peak@step':>13} {'fixed s/steps':>14} {'auto s/stop/ret':>20}")
    lines = [head, "-" * len(head)]
    for r in rows:
        ret = "-" if r["auto_return_step"] is None else str(r["auto_return_step"])
        lines.append(
            f"{r['case']:<13} {r['image'][:21]:<21} {r['seed']:>4}  "
            f"{_fmt(r['input_psnr'], r['input_ssim']):>12} {_fmt(r['baseline_psnr'], r['baseline_ssim']):>12} "
            f"{_fmt(r['fixed_psnr'], r['fixed_ssim']):>12} {_fmt(r['auto_psnr'], r['auto_ssim']):>12} "
            f"{r['peak_psnr']:>7.2f}@{r['peak_step']:<5} "
            f"{r['fixed_seconds']:>7.1f}/{r['fixed_steps']:<6} "
            f"{r['auto_seconds']:>7.1f}/{r['auto_steps']}/{ret:<6}")
    kinds = list(dict.fromkeys(r["case"] for r in rows))
    if len(rows) > 1:
        lines.append("-" * len(head))
        for k in kinds:
            sel = [r for r in rows if r["case"] == k]
            def mean(key: str, sel: list = sel) -> float:
                return float(np.nanmean([r[key] for r in sel])) if any(
                    math.isfinite(r[key]) for r in sel) else math.nan
            within = sum(1 for r in sel if r["peak_psnr"] - r["auto_psnr"] <= 0.5)
            lines.append(
                f"{k:<13} {'mean of ' + str(len(sel)):<21} {'':>4}  "
                f"{_fmt(mean('input_psnr'), mean('input_ssim')):>12} "
                f"{_fmt(mean('baseline_psnr'), mean('baseline_ssim')):>12} "
                f"{_fmt(mean('fixed_psnr'), mean('fixed_ssim')):>12} {_fmt(mean('auto_psnr'), mean('auto_ssim')):>12} "
                f"{mean('peak_psnr'):>7.2f}       {mean('fixed_seconds'):>7.1f}        "
                f"{mean('auto_seconds'):>7.1f}  auto within 0.5 dB of peak: {within}/{len(sel)}")
    if any(TASKS.get(r["case"], {}).get("task") == "denoise" and not math.isfinite(r["baseline_psnr"])
           for r in rows):
        lines.append(BM3D_MISSING)
    return "\n".join(lines)


#: the table's footnote when denoising has no baseline
BM3D_MISSING = ("baseline '-' for denoising: it is BM3D, from the optional bm3d package; "
                "install it with: pip install 'dip[bm3d]'")


CSV_FIELDS = ("case", "image", "seed", "recipe", "size", "metric",
              "input_psnr", "input_ssim", "baseline_psnr", "baseline_ssim",
              "fixed_psnr", "fixed_ssim", "auto_psnr", "auto_ssim", "peak_psnr", "peak_step",
              "fixed_steps", "fixed_seconds", "auto_steps", "auto_return_step", "auto_seconds",
              "stop_reason", "kernel_l1", "rl_guess_psnr",
              "wiener_psnr", "wiener_balance", "rl_psnr", "rl_iterations")

#: the columns of blind deblurring cases (``dip.evaluate_deblur.blind_columns``): empty in the
#: CSV, null in the curves file, where they do not apply
BLIND_FIELDS = ("kernel_l1", "rl_guess_psnr")
#: the columns of deblurring cases (``dip.evaluate_deblur.baseline_columns``: each tuned
#: classical baseline's PSNR and chosen parameter): empty in the CSV for other cases
DEBLUR_FIELDS = ("wiener_psnr", "wiener_balance", "rl_psnr", "rl_iterations")


def write_csv(rows: Sequence[dict], path: str | os.PathLike) -> None:
    """One line per row with ``CSV_FIELDS`` (the PSNR curve is left out); a column a row
    lacks (``BLIND_FIELDS`` of a case that is not blind deblurring, ``DEBLUR_FIELDS`` of a case
    that is not deblurring) is empty."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO(newline="")
    w = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_FIELDS})
    atomic_write(path, buffer.getvalue())


#: value of the "format" key of a curves file
CURVES_FORMAT = "dip-eval-curves/1"


def _round(values: Sequence[float], digits: int | None = None, sig: int | None = None) -> list:
    """Floats for JSON: NaN/inf -> None; ``digits`` decimals or ``sig`` significant digits."""
    out: list[float | None] = []
    for v in values:
        v = float(v)
        if not math.isfinite(v):
            out.append(None)
        elif sig is not None:
            out.append(float(f"{v:.{sig}g}"))
        else:
            out.append(round(v, digits))
    return out


def curves_document(rows: Sequence[dict]) -> dict:
    """The curves file's content (see ``write_curves``) as a JSON-ready dict."""
    runs = []
    for r in rows:
        c = r["curve"]
        series: dict[str, Any] = {"step": [int(s) for s in c["step"]], "psnr": _round(c["psnr"], 4),
                  "psnr_avg": _round(c["psnr_avg"], 4)}
        if "var" in c:
            series["var"] = {str(w): _round(v, sig=5) for w, v in c["var"].items()}
            series["psnr_wmean"] = {str(w): _round(v, 4) for w, v in c["psnr_wmean"].items()}
        runs.append({
            "case": r["case"], "image": r["image"], "seed": int(r["seed"]), "recipe": r["recipe"],
            "size": r["size"], "metric": r["metric"], "exp_weight": r.get("exp_weight"),
            "stop_window": r.get("stop_window"), "stop_patience": r.get("stop_patience"),
            "steps_run": int(r["fixed_steps"]), "fixed_psnr": _round([r["fixed_psnr"]], 4)[0],
            "auto_psnr": _round([r["auto_psnr"]], 4)[0], "auto_steps": int(r["auto_steps"]),
            "auto_return_step": r["auto_return_step"], "peak_psnr": _round([r["peak_psnr"]], 4)[0],
            "peak_step": int(r["peak_step"]),
            **{k: None if r.get(k) is None else _round([r[k]], 4)[0] for k in BLIND_FIELDS}, "series": series})
    return {"format": CURVES_FORMAT, "runs": runs}


def write_curves(rows: Sequence[dict], path: str | os.PathLike) -> None:
    """Write the per-step series of ``evaluate`` rows as compact JSON, for replaying stopping
    rules offline (``benchmarks/tune_stopping.py``).

    Layout: ``{"format": CURVES_FORMAT, "runs": [run, ...]}``, one run per row with its
    identity (case, image, seed, recipe, size, metric), the fit settings (exp_weight,
    stop_window, stop_patience), the results (steps_run, fixed_psnr, auto_psnr, auto_steps,
    auto_return_step, peak_psnr, peak_step; ``kernel_l1`` and ``rl_guess_psnr`` for blind
    deblurring cases, null for the others) and ``series``: equal-length lists ``step`` (int),
    ``psnr`` (plain output, dB), ``psnr_avg`` (averaged output, dB; null without averaging),
    and when recorded (``curve_windows``) ``var`` and ``psnr_wmean``: {str(W): list}, the
    windowed variance of the last W plain outputs (5 significant digits; null before the
    window is full) and the PSNR of their mean.  PSNRs are rounded to 1e-4 dB.
    """
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(curves_document(rows), separators=(",", ":"), allow_nan=False))
