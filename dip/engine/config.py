"""``FitConfig``: the settings of one fit, checked on construction."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

PRECISIONS = ("auto", "fp32", "bf16")  # auto: dip.runtime.choose_precision
OPTIMIZE = ("net", "input", "both")
OPTIMIZERS = ("adam", "lbfgs")
STOPS = ("steps", "auto")

# Longer fits than this are mistakes (ten million steps take days even on a GPU); the loss of
# every step is kept, so the cap also bounds that record (40 MB).
MAX_STEPS = 10_000_000
# The reg-noise generator is seeded with seed + 1, a 64-bit integer.
MAX_SEED = 2**63 - 2


@dataclass
class FitConfig:
    """Settings of one fit. Learning rate is Adam's; ``reg_noise_std`` is the standard deviation
    of the fresh Gaussian noise added to z at every step; ``exp_weight`` enables output averaging
    (out_avg <- w_t * out_avg + (1 - w_t) * out with w_t = min(exp_weight, (t - 1) / (t + 7)) at
    step t: while the run is short the average remembers about its last t/8 outputs instead of
    the first, grey ones; from step 793 on (w = 0.99) it is the original's average; a fit that
    ends before step 100 returns its plain output, which is the better estimate there, and keeps
    the average in ``image_avg``); ``psnr_every`` is how often (in steps) metrics that
    need a host sync are computed; ``stop="auto"`` enables windowed-variance early stopping with
    ``stop_window``/``stop_patience`` steps; ``compile`` runs the generator through
    ``torch.compile`` (pays off only for long fits: compiling takes tens of seconds);
    ``cuda_graph`` lets a fit on a CUDA device capture its step once as a CUDA graph and replay
    it (``dip.engine.captured_step``; Adam only, not with ``compile``, a fitted input code or a
    fitted operator: those fits, and ``cuda_graph=False``, run eagerly, and the log says why);
    a captured fit reads its losses to the host every ``check_every`` steps (at most every 25,
    ``dip.engine.deferred``) instead of every step. It changes nothing on the CPU.

    Divergence recovery: a non-finite loss (checked every step), or with ``backtrack`` a fit
    PSNR that fell by more than ``backtrack_threshold_db`` since the last check (every
    ``check_every`` steps), restores the parameters and optimiser state of the last good check
    and multiplies the learning rate by ``recovery_lr_factor`` (1.0 keeps it, as the original
    does); the ``max_recoveries``-th failure stops the fit with the last good state
    (``stop_reason == "diverged"``).

    ``physics_lr``: Adam's learning rate of the operator's trainable parameters, when it has
    any (a blind blur's kernel generator, ``dip.physics.BlindBlur``); None: ``lr``. They are
    held (learning rate 0) for the first ``physics_warmup_steps`` steps, while the generator
    fits the observation through the operator's initial state, and, with ``physics_steps``,
    held again after that many steps of fitting (None: fitted to the end): the generator then
    goes on fitting through the operator as it is, which keeps a blind blur's kernel from
    drifting towards a sharper one while the image takes on fine detail."""

    steps: int = 3000
    lr: float = 0.01
    reg_noise_std: float = 1.0 / 30.0
    exp_weight: float | None = None
    backtrack: bool = False
    backtrack_threshold_db: float = 5.0
    check_every: int = 10
    recovery_lr_factor: float = 0.5
    max_recoveries: int = 8
    tv_weight: float = 0.0
    physics_lr: float | None = None
    physics_warmup_steps: int = 0
    physics_steps: int | None = None
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
    cuda_graph: bool = True

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        def bad(name, value, what):
            raise ValueError(f"{name} must be {what}, got {value!r}")

        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or not 1 <= self.steps <= MAX_STEPS:
            bad("steps", self.steps, f"an integer from 1 to {MAX_STEPS}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            bad("seed", self.seed, f"an integer from 0 to {MAX_SEED} (2**63 - 2)")
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
        if self.physics_lr is not None and not (isinstance(self.physics_lr, (int, float)) and self.physics_lr > 0
                                                and math.isfinite(self.physics_lr)):
            bad("physics_lr", self.physics_lr, "None or a positive number")
        if isinstance(self.physics_warmup_steps, bool) or not isinstance(self.physics_warmup_steps, int) \
                or self.physics_warmup_steps < 0:
            bad("physics_warmup_steps", self.physics_warmup_steps, "an integer >= 0")
        if self.physics_steps is not None and (isinstance(self.physics_steps, bool)
                                               or not isinstance(self.physics_steps, int) or self.physics_steps < 1):
            bad("physics_steps", self.physics_steps, "None or an integer >= 1")
        if not isinstance(self.cuda_graph, bool):
            bad("cuda_graph", self.cuda_graph, "True or False")
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
    def from_dict(cls, d: dict) -> FitConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown fit option(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)

    def updated(self, **changes) -> FitConfig:
        return self.from_dict({**self.to_dict(), **changes})
