"""The fitting engine: optimise a generator so that A(G(z)) matches the observation y.

``fit`` runs the loop of the original notebooks — Adam (or LBFGS), reg-noise on the input,
output averaging, backtracking — plus what they lack: any image size (the code z is sized
to the network's multiple and the output cropped back), automatic stopping, callbacks that do
not force a host sync, bf16 autocast, and a result object.

Differences from the original, on purpose:

- The returned plain image is G(z) on the clean code z (BatchNorm in training mode), rendered
  after the last step; the original shows the output of the last *perturbed* input
  z + reg-noise.  The averaged image (``exp_weight``) averages the perturbed outputs, as the
  original does.
- Backtracking checks the fit every ``check_every`` steps (default 10): when the PSNR of the
  fit to the observation has dropped by more than ``backtrack_threshold_db`` since the last
  check, parameters *and optimiser state* are restored from that check (the original restores
  parameters only, and because of its ``if i % show_every`` test checks at almost every step).
- LBFGS runs one function evaluation per step (``max_iter=1`` per call, state carried
  across calls) after the original's 100 Adam steps at lr 1e-3.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
import torch.nn.functional as F

import dip.ops
from dip.physics import Mask
from dip.runtime import FastStep, autocast_context, load_optimizer_state, make_adam, use_channels_last

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")
OPTIMIZE = ("net", "input", "both")
OPTIMIZERS = ("adam", "lbfgs")
STOPS = ("steps", "auto")


@dataclass
class FitConfig:
    """Settings of one fit. Learning rate is Adam's; ``reg_noise_std`` is the standard deviation
    of the fresh Gaussian noise added to z at every step; ``exp_weight`` enables output averaging
    (out_avg <- w * out_avg + (1 - w) * out); ``psnr_every`` is how often (in steps) metrics that
    need a host sync are computed; ``stop="auto"`` enables windowed-variance early stopping with
    ``stop_window``/``stop_patience`` steps; ``compile`` runs the generator through
    ``torch.compile`` (pays off only for long fits: compiling takes tens of seconds).

    Divergence recovery: a non-finite loss (checked every step), or with ``backtrack`` a fit
    PSNR that fell by more than ``backtrack_threshold_db`` since the last check (every
    ``check_every`` steps), restores the parameters and optimiser state of the last good check
    and multiplies the learning rate by ``recovery_lr_factor`` (1.0 keeps it, as the original
    does); the ``max_recoveries``-th failure stops the fit with the last good state
    (``stop_reason == "diverged"``)."""

    steps: int = 3000
    lr: float = 0.01
    reg_noise_std: float = 1.0 / 30.0
    exp_weight: Optional[float] = None
    backtrack: bool = False
    backtrack_threshold_db: float = 5.0
    check_every: int = 10
    recovery_lr_factor: float = 0.5
    max_recoveries: int = 8
    tv_weight: float = 0.0
    optimize: str = "net"
    optimizer: str = "adam"
    lbfgs_warmup_steps: int = 100
    seed: int = 0
    psnr_every: int = 50
    stop: str = "steps"
    stop_window: int = 100
    stop_patience: int = 1000
    precision: str = "fp32"
    channels_last: bool = True
    device: str = "cpu"
    compile: bool = False

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        def bad(name, value, what):
            raise ValueError(f"{name} must be {what}, got {value!r}")

        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            bad("steps", self.steps, "an integer >= 1")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr)):
            bad("lr", self.lr, "a positive number")
        if not (isinstance(self.reg_noise_std, (int, float)) and self.reg_noise_std >= 0):
            bad("reg_noise_std", self.reg_noise_std, "a number >= 0")
        if self.exp_weight is not None and not (0.0 <= self.exp_weight < 1.0):
            bad("exp_weight", self.exp_weight, "None or in [0, 1)")
        if not (isinstance(self.recovery_lr_factor, (int, float)) and 0 < self.recovery_lr_factor <= 1):
            bad("recovery_lr_factor", self.recovery_lr_factor, "a number in (0, 1]")
        for name in ("check_every", "psnr_every", "stop_window", "stop_patience", "max_recoveries"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                bad(name, v, "an integer >= 1")
        if self.tv_weight < 0:
            bad("tv_weight", self.tv_weight, "a number >= 0")
        if self.optimize not in OPTIMIZE:
            bad("optimize", self.optimize, f"one of {OPTIMIZE}")
        if self.optimizer not in OPTIMIZERS:
            bad("optimizer", self.optimizer, f"one of {OPTIMIZERS}")
        if self.stop not in STOPS:
            bad("stop", self.stop, f"one of {STOPS}")
        if self.precision not in PRECISIONS:
            bad("precision", self.precision, f"one of {PRECISIONS}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FitConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown fit option(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)

    def updated(self, **changes) -> "FitConfig":
        return self.from_dict({**self.to_dict(), **changes})


@dataclass
class StepEvent:
    """What a callback sees. ``loss`` is a 0-dim tensor (call ``.item()`` only when needed: it
    syncs); ``output`` is the cropped current output (1, C, H, W), detached, fp32; ``output_avg``
    the averaged output or None; ``psnr`` the latest PSNR against the ground truth (or None);
    ``steps`` the planned number of steps."""

    step: int
    steps: int
    loss: torch.Tensor
    output: torch.Tensor
    output_avg: Optional[torch.Tensor]
    psnr: Optional[float]


@dataclass
class FitResult:
    """Outcome of ``fit``.

    Attributes:
        image: the returned image (1, C, H, W) float32 in [0, 1]: the averaged output when
            averaging is on, else ``image_plain``; with automatic stopping, the image at the
            detected step.
        image_plain: G(z) on the clean code after the last step (BatchNorm in training mode).
        image_avg: the averaged output after the last step, or None.
        history: ``step`` (every step), ``loss`` (every step), ``psnr_step``/``psnr``/``psnr_avg``
            (every ``psnr_every`` steps when a ground truth was given).
        generator, z: the fitted network and its (padded) input code; physics: the operator
            it was fitted through; recipe: the ``dip.recipes.Recipe`` when one was run.
        returned_state: state_dict of the generator at the step whose image is returned.
        returned_step, steps_run, stop_reason ("steps" | "auto"), seconds, crop (top, left, H, W).
        psnr, ssim: of ``image`` against the ground truth, when one was given.
        backtracks: how many times the fit PSNR fell by more than the threshold (each restored
            the last good state); ``recoveries``: all restorations, non-finite losses included.
        stop_reason: "steps" (ran all steps), "auto" (automatic stopping), "interrupted" (the
            ``stop_event`` was set; ``resume_state()`` continues it), "diverged" (the
            ``max_recoveries``-th failure), or "running" (a mid-fit checkpoint).
    """

    image: torch.Tensor
    image_plain: torch.Tensor
    image_avg: Optional[torch.Tensor]
    history: Dict[str, List[float]]
    generator: nn.Module
    z: torch.Tensor
    returned_state: Dict[str, torch.Tensor]
    returned_step: int
    steps_run: int
    stop_reason: str
    seconds: float
    crop: Tuple[int, int, int, int]
    config: FitConfig
    psnr: Optional[float] = None
    ssim: Optional[float] = None
    backtracks: int = 0
    optimizer_state: Optional[dict] = None
    stopper_state: Optional[dict] = None
    recipe: Optional[object] = None
    physics: Optional[nn.Module] = None
    rng_state: Optional[torch.Tensor] = None
    backtrack_state: Optional[dict] = None
    stop_detail: str = ""
    recoveries: int = 0

    def resume_state(self) -> dict:
        """What ``fit(..., resume=...)`` needs to continue this fit where it ended (with
        ``generator`` in its current state and the same ``z``): step, optimiser, reg-noise RNG,
        averaged output, stopping and backtracking state, history."""
        return {"step": self.steps_run, "optimizer_state": self.optimizer_state, "rng_state": self.rng_state,
                "image_avg": self.image_avg, "stopper_state": self.stopper_state,
                "backtrack_state": self.backtrack_state, "history": self.history,
                "returned_state": self.returned_state, "returned_step": self.returned_step,
                "backtracks": self.backtracks, "recoveries": self.recoveries, "seconds": self.seconds}

    @property
    def ms_per_step(self) -> float:
        return 1000.0 * self.seconds / max(self.steps_run, 1)


# ----------------------------------------------------------------------------- sizes


def padded_size(hw: Tuple[int, int], multiple: int, minimum: int = 1) -> Tuple[int, int]:
    """Smallest size >= max(hw, minimum) per side that is a multiple of ``multiple``."""
    return tuple(int(math.ceil(max(s, minimum) / multiple) * multiple) for s in hw)


def center_crop_box(padded_hw, hw) -> Tuple[int, int, int, int]:
    """(top, left, H, W) of a centred H x W window inside ``padded_hw``."""
    return ((padded_hw[0] - hw[0]) // 2, (padded_hw[1] - hw[1]) // 2, int(hw[0]), int(hw[1]))


def pad_to(img: torch.Tensor, size_hw: Tuple[int, int]) -> torch.Tensor:
    """Pad (1, C, H, W) centrally to ``size_hw``: reflection where the image is large enough,
    else edge replication (used when the generator's input is an image, e.g. flash/no-flash)."""
    h, w = img.shape[-2:]
    top, left = (size_hw[0] - h) // 2, (size_hw[1] - w) // 2
    pads = (left, size_hw[1] - w - left, top, size_hw[0] - h - top)
    if pads == (0, 0, 0, 0):
        return img
    mode = "reflect" if max(pads[0], pads[1]) < w and max(pads[2], pads[3]) < h else "replicate"
    return F.pad(img, pads, mode=mode)


def generator_geometry(generator: nn.Module, x_hw: Tuple[int, int]):
    """Padded output size and input-code size that ``generator`` needs for an image of ``x_hw``.

    Returns ((Hp, Wp), (Hz, Wz)): the network renders Hp x Wp, which is cropped back to x_hw.
    """
    multiple = int(getattr(generator, "size_multiple", 1))
    minimum = int(getattr(generator, "min_input_size", 1))
    scale = int(getattr(generator, "input_scale", 1))
    out_hw = padded_size(x_hw, multiple * scale, minimum * scale)
    return out_hw, (out_hw[0] // scale, out_hw[1] // scale)


# ----------------------------------------------------------------------------- losses


def tv_loss(x: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """The original's total variation: sum((dx^2 + dy^2 + eps)^beta) over the image."""
    dh = (x[:, :, :-1, 1:] - x[:, :, :-1, :-1]) ** 2
    dw = (x[:, :, 1:, :-1] - x[:, :, :-1, :-1]) ** 2
    return torch.sum((dh + dw + 1e-8) ** beta)


def data_loss(physics: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error between A(x) and y; for a Mask, mean(((x - y) * m)^2) (the original's
    mse(x*m, y*m)), fused where ``dip.ops.native_pays_off`` says the native kernel is faster."""
    if isinstance(physics, Mask):
        mask = physics.mask.to(dtype=x.dtype, device=x.device)
        if dip.ops.native_pays_off("masked_mse", x.device):
            return dip.ops.masked_mse(x, y, mask)
        return dip.ops.masked_mse_reference(x, y, mask)
    return F.mse_loss(physics(x), y)


# ----------------------------------------------------------------------------- engine


def _clone_state(module: nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _check_observation(y: torch.Tensor) -> torch.Tensor:
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"observation y must be a torch.Tensor, got {type(y).__name__}")
    if y.dim() == 3:
        y = y[None]
    if y.dim() != 4 or y.shape[0] != 1:
        raise ValueError(f"observation y must have shape (C, H, W) or (1, C, H, W), got {tuple(y.shape)}")
    if y.numel() == 0:
        raise ValueError(f"observation y is empty (shape {tuple(y.shape)})")
    if not y.is_floating_point():
        raise TypeError(f"observation y must be a float tensor in [0, 1], got dtype {y.dtype}")
    if not bool(torch.isfinite(y).all()):
        bad = int((~torch.isfinite(y)).sum())
        raise ValueError(f"observation y has {bad} non-finite value(s) (NaN or inf); replace them "
                         "(e.g. mark them missing with a mask and inpaint)")
    return y


def render(generator: nn.Module, z: torch.Tensor, crop, precision: str = "fp32") -> torch.Tensor:
    """G(z) cropped to the image, BatchNorm in training mode, fp32, without touching the
    generator's running statistics. Returns (1, C, H, W)."""
    bns = [m for m in generator.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
             for m in bns if m.running_mean is not None]
    try:
        with torch.no_grad(), autocast_context(precision, z.device):
            out = generator(z)
    finally:
        for m, (rm, rv, nb) in zip([m for m in bns if m.running_mean is not None], saved):
            m.running_mean.copy_(rm)
            m.running_var.copy_(rv)
            m.num_batches_tracked.copy_(nb)
    top, left, h, w = crop
    return out.float()[:, :, top:top + h, left:left + w].contiguous()


def fit(y: torch.Tensor, physics: nn.Module, generator: nn.Module, z: torch.Tensor,
        config: FitConfig, *, gt: Optional[torch.Tensor] = None,
        callbacks: Sequence[Callable[[StepEvent], None]] = (),
        resume: Optional[dict] = None, stop_event: Optional[Any] = None,
        checkpoint_every: Optional[int] = None,
        on_checkpoint: Optional[Callable[["FitResult"], None]] = None) -> FitResult:
    """Fit ``generator`` so that ``physics(G(z))`` matches ``y``.

    Args:
        y: observation (C, h, w) or (1, C, h, w), float in [0, 1].
        physics: forward operator (``dip.physics``); the image size is ``physics.x_size(h, w)``.
        generator: a ``dip.models`` network (its ``size_multiple``/``input_scale`` attributes are
            honoured); it is trained in place, in training mode, and returned in the result.
        z: the input code, (1, D, Hz, Wz) with the size given by ``generator_geometry``.
        config: ``FitConfig``.
        gt: optional ground truth (C, H, W) or (1, C, H, W) for PSNR every ``psnr_every`` steps.
        callbacks: callables taking a ``StepEvent``; a callback's ``every`` attribute (int,
            default 1) sets how often it is called.
        resume: ``FitResult.resume_state()`` of an earlier fit (or the same fields from a
            checkpoint) to continue it up to ``config.steps``; ``generator`` and ``z`` must be
            that fit's. Same seed, CPU, 1 thread: a resumed fit equals an uninterrupted one.
        stop_event: anything with ``is_set() -> bool`` (e.g. ``threading.Event``), polled after
            every step; once set the fit ends with ``stop_reason == "interrupted"`` and a result
            that ``resume_state()`` continues exactly.
        checkpoint_every, on_checkpoint: every ``checkpoint_every`` steps ``on_checkpoint`` gets
            the result so far (``stop_reason == "running"``; resumable like a finished one).

    Returns:
        ``FitResult``.
    """
    config.validate()
    if checkpoint_every is not None and (isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int)
                                         or checkpoint_every < 1):
        raise ValueError(f"checkpoint_every must be an integer >= 1 or None, got {checkpoint_every!r}")
    y = _check_observation(y)
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but CUDA is not available; use device='cpu'")
    x_hw = physics.x_size(tuple(y.shape[-2:]))
    out_hw, z_hw = generator_geometry(generator, x_hw)
    if tuple(z.shape[-2:]) != tuple(z_hw):
        raise ValueError(f"z must have spatial size {z_hw} for an image of {x_hw} with this generator, "
                         f"got {tuple(z.shape[-2:])}; build it with dip.fit.generator_geometry")
    crop = center_crop_box(out_hw, x_hw)
    if gt is not None:
        gt = gt[None] if gt.dim() == 3 else gt
        if tuple(gt.shape[-2:]) != tuple(x_hw):
            raise ValueError(f"ground truth must have size {x_hw}, got {tuple(gt.shape[-2:])}")
        gt = gt.to(device=device, dtype=torch.float32)

    # LBFGS flattens gradients with view(), which needs contiguous (NCHW) parameters
    channels_last = config.channels_last and use_channels_last(generator, config.precision, device,
                                                               config.optimizer)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    generator.to(device=device, memory_format=memory_format).train()
    physics.to(device)
    y = y.to(device=device, dtype=torch.float32)
    z = z.to(device=device, dtype=torch.float32).contiguous(memory_format=memory_format)

    rng = torch.Generator(device=device)
    rng.manual_seed(int(config.seed) + 1)

    params: List[torch.Tensor] = []
    if config.optimize in ("net", "both"):
        params += [p for p in generator.parameters() if p.requires_grad]
    if config.optimize in ("input", "both"):
        z.requires_grad_(True)
        params.append(z)

    use_lbfgs = config.optimizer == "lbfgs"
    optimizer = make_adam(params, 0.001 if use_lbfgs else config.lr)
    lbfgs_from = min(config.lbfgs_warmup_steps, config.steps) if use_lbfgs else None

    def make_lbfgs() -> torch.optim.LBFGS:
        """One function evaluation per step, history carried across steps (see the module doc)."""
        return torch.optim.LBFGS(params, lr=config.lr, max_iter=1, tolerance_grad=-1, tolerance_change=-1,
                                 history_size=100)

    regularizer = (lambda out: config.tv_weight * tv_loss(out)) if config.tv_weight else None
    # the step itself (reg noise, forward under autocast, loss, backward, optimiser): FastStep
    fast = FastStep(torch.compile(generator) if config.compile else generator, z,
                    lambda out: data_loss(physics, out, y), reg_noise_std=config.reg_noise_std,
                    precision=config.precision, channels_last=channels_last, params=params,
                    generator_rng=rng, crop=crop, optimizer=optimizer, regularizer=regularizer)
    out_avg: Optional[torch.Tensor] = None
    losses = torch.zeros(config.steps, device=device)
    history: Dict[str, List[float]] = {"psnr_step": [], "psnr": [], "psnr_avg": []}
    last_psnr: Optional[float] = None
    cb_every = [max(1, int(getattr(cb, "every", 1))) for cb in callbacks]

    stopper = None
    if config.stop == "auto":
        from dip.stopping import from_config as stopper_from_config
        stopper = stopper_from_config(config)
    best_state: Optional[Dict[str, torch.Tensor]] = None
    best_step = config.steps

    backtracks = 0
    recoveries = 0
    good_psnr: Optional[float] = None
    good = None  # (generator state, optimizer state, z) at the last good check
    first_step = 1
    prior_seconds = 0.0
    if resume is not None:
        first_step = int(resume["step"]) + 1
        if first_step > config.steps + 1:
            raise ValueError(f"cannot resume: the fit already ran {first_step - 1} steps and config.steps is "
                             f"{config.steps}; ask for more steps")
        if lbfgs_from is not None and first_step > lbfgs_from + 1:
            optimizer = fast.optimizer = make_lbfgs()
        if resume.get("optimizer_state") is not None:
            load_optimizer_state(optimizer, resume["optimizer_state"])
        if resume.get("rng_state") is not None:
            rng.set_state(resume["rng_state"].cpu() if device.type == "cpu" else resume["rng_state"])
        if resume.get("image_avg") is not None:
            out_avg = resume["image_avg"].to(device=device, dtype=torch.float32).clone()
        if stopper is not None and resume.get("stopper_state") is not None:
            stopper.load_state_dict(resume["stopper_state"])
            best_state = resume.get("returned_state")
        bt = resume.get("backtrack_state")
        if bt is not None and bt.get("good_state") is not None:
            good_psnr = bt["good_psnr"]
            good = (bt["good_state"], bt["good_optimizer"], bt.get("good_z"))
        backtracks = int(resume.get("backtracks", 0))
        recoveries = int(resume.get("recoveries", backtracks))
        prior_seconds = float(resume.get("seconds", 0.0))
        old = resume.get("history") or {}
        n_old = len(old.get("loss", []))
        losses[:min(n_old, config.steps)] = torch.tensor(old.get("loss", [])[:config.steps], dtype=losses.dtype)
        for key in ("psnr_step", "psnr", "psnr_avg"):
            history[key] = list(old.get(key, []))

    def snapshot():
        return (_clone_state(generator), copy.deepcopy(optimizer.state_dict()),
                z.detach().clone() if z.requires_grad else None)

    if good is None:  # a state to fall back to before the first check
        good = snapshot()

    def restore_last_good(step: int, why: str) -> None:
        """Parameters, optimiser state (and z) of the last good check; learning rate lowered."""
        nonlocal recoveries
        lrs = [group["lr"] for group in optimizer.param_groups]
        generator.load_state_dict(good[0])
        load_optimizer_state(optimizer, good[1])
        for group, lr in zip(optimizer.param_groups, lrs):
            group["lr"] = lr * config.recovery_lr_factor
        if good[2] is not None:
            with torch.no_grad():
                z.copy_(good[2])
        recoveries += 1
        log.info("step %d: %s; restored the state of the last good check, learning rate now %.3g "
                 "(recovery %d of at most %d)", step, why, optimizer.param_groups[0]["lr"], recoveries,
                 config.max_recoveries)

    def assemble(stop_reason: str, steps_run: int, detail: str) -> FitResult:
        """The result of the fit as it stands after ``steps_run`` steps (no state is changed)."""
        image_plain = render(generator, z.detach(), crop, "fp32")  # always rendered in fp32
        if stopper is not None:
            stopper.finalize()
        held = stopper is not None and (stop_reason == "auto" or (
            stop_reason == "interrupted" and stopper.best_output is not None))
        if held:  # the image at the variance minimum: the best guess so far
            image = stopper.best_output.detach().float().clone()
            ret_step = int(stopper.returned_step)
            returned_state = best_state if best_state is not None else _clone_state(generator)
        else:
            image = out_avg.clone() if out_avg is not None else image_plain
            ret_step = steps_run
            returned_state = _clone_state(generator)
        hist = {key: list(value) for key, value in history.items()}
        hist["step"] = list(range(1, steps_run + 1))
        hist["loss"] = losses[:steps_run].cpu().tolist()
        res = FitResult(
            image=image.cpu(), image_plain=image_plain.cpu(),
            image_avg=out_avg.cpu().clone() if out_avg is not None else None,
            history=hist, generator=generator, z=z.detach(), returned_state=returned_state,
            returned_step=ret_step, steps_run=steps_run, stop_reason=stop_reason,
            seconds=prior_seconds + time.perf_counter() - start,
            crop=crop, config=config, backtracks=backtracks, recoveries=recoveries, physics=physics,
            optimizer_state=copy.deepcopy(optimizer.state_dict()),
            stopper_state=stopper.state_dict() if stopper is not None else None,
            stop_detail=detail, rng_state=rng.get_state(),
            backtrack_state={"good_psnr": good_psnr, "good_state": good[0], "good_optimizer": good[1],
                             "good_z": good[2]},
        )
        if gt is not None:
            from dip.metrics import psnr as _psnr, ssim as _ssim
            res.psnr = _psnr(res.image, gt.cpu())
            try:
                res.ssim = _ssim(res.image, gt.cpu())
            except ValueError:
                res.ssim = None
        return res

    start = time.perf_counter()
    step = first_step - 1
    stop_reason = "steps"
    detail = ""
    for step in range(first_step, config.steps + 1):
        if lbfgs_from is not None and step == lbfgs_from + 1:
            optimizer = fast.optimizer = make_lbfgs()
            good = snapshot()  # the Adam state of earlier checks does not fit LBFGS
        loss, out = fast()
        losses[step - 1] = loss
        loss_value = float(loss)  # one host sync per step: a non-finite loss must not spread
        failure = None
        if not math.isfinite(loss_value):
            failure = f"the loss is {loss_value}"
        elif step % config.check_every == 0:
            fit_psnr = -10.0 * math.log10(max(loss_value, 1e-20))
            if (config.backtrack and good_psnr is not None
                    and fit_psnr < good_psnr - config.backtrack_threshold_db):
                failure = f"the fit PSNR fell {good_psnr - fit_psnr:.1f} dB since the last check"
                backtracks += 1
            else:
                good_psnr = fit_psnr
                good = snapshot()
        if failure is not None:
            restore_last_good(step, failure)
            if recoveries >= config.max_recoveries:
                stop_reason = "diverged"
                detail = (f"stopped at step {step}: {failure}, the {recoveries}th failure "
                          f"(max_recoveries {config.max_recoveries}); kept the last good state")
                log.warning("%s", detail)
                break
            if not math.isfinite(loss_value):
                continue  # this step's output is not an image: keep it out of averages

        if config.exp_weight is not None:
            if out_avg is None:
                out_avg = out.clone()
            else:
                out_avg.lerp_(out, 1.0 - config.exp_weight)

        if gt is not None and (step % config.psnr_every == 0 or step == config.steps):
            from dip.metrics import psnr as _psnr
            last_psnr = _psnr(out, gt)
            history["psnr_step"].append(step)
            history["psnr"].append(last_psnr)
            history["psnr_avg"].append(_psnr(out_avg, gt) if out_avg is not None else last_psnr)

        if stopper is not None:
            # the variance is watched on the raw outputs; the image kept at the minimum is the
            # one the fit returns (the averaged output when averaging is on)
            should_stop = stopper.update(step, out, returned=out_avg if out_avg is not None else out)
            if stopper.returned_step == step:
                best_state = _clone_state(generator)
            if should_stop:
                stop_reason = "auto"
                detail = stopper.reason
                break

        for cb, every in zip(callbacks, cb_every):
            if step % every == 0 or step == config.steps:
                cb(StepEvent(step, config.steps, loss, out, out_avg, last_psnr))

        if stop_event is not None and stop_event.is_set() and step < config.steps:
            stop_reason = "interrupted"
            detail = f"interrupted after step {step} of {config.steps}"
            break
        if (on_checkpoint is not None and checkpoint_every is not None and step % checkpoint_every == 0
                and step < config.steps):
            on_checkpoint(assemble("running", step, f"checkpoint at step {step} of {config.steps}"))

    if stop_reason == "steps":
        detail = f"ran all {step} steps"
    return assemble(stop_reason, step, detail)
