"""One optimisation step, the fast way, and the optimiser it drives.

* :func:`make_adam` — Adam's fused implementation (else foreach): one kernel over all
  parameters instead of a Python loop of small ops (2.2 M parameters, one thread: 10 ms vs
  36 ms single-tensor, 31 ms foreach).
* :func:`load_optimizer_state` — restores an optimiser's state in each parameter's own layout
  and storage (the fused kernel requires the layout; sharing would let the fit update the
  caller's tensors).
* :class:`FastStep` — the step itself: the layout chosen by ``dip.runtime.use_channels_last``,
  fused Adam, gradients set to None instead of zero-filled, reg noise drawn in place into a
  preallocated buffer, optional bf16 (the network in bf16 with bf16 copies of the convolution
  weights, fp32 master weights and an fp32 loss: :mod:`dip.engine.bf16`), no host
  synchronisation.

What each lever measured is in ``benchmarks/test_bench_step.py`` (one step of the denoise
recipe's generator against the original-style step, same run).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from dip.engine.bf16 import Bf16Weights
from dip.runtime import autocast_context, bf16_is_native, check_precision, use_channels_last

log = logging.getLogger(__name__)

__all__ = ["FastStep", "LossFn", "load_optimizer_state", "make_adam", "working_dtype"]


def working_dtype(generator: nn.Module, precision: str) -> torch.dtype:
    """The float dtype of a fit's observation, code, outputs and loss: float64 for an fp32 fit
    of a generator whose floating parameters are all float64 (exact comparisons, e.g. a packed
    fit against single fits), else float32."""
    dtypes = {p.dtype for p in generator.parameters() if p.is_floating_point()}
    return torch.float64 if precision == "fp32" and dtypes == {torch.float64} else torch.float32


def make_adam(params: Iterable[torch.Tensor], lr: float) -> torch.optim.Adam:
    """Adam with the fused implementation where the device supports it, else foreach."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, lr=lr, foreach=True)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: Mapping[str, Any]) -> None:
    """Load ``state`` (an ``optimizer.state_dict()``, e.g. from a checkpoint or an earlier
    result) into ``optimizer`` so that every restored tensor is the optimiser's own.

    ``Optimizer.load_state_dict`` keeps the given tensors as they are: it shares their storage
    with the caller (the optimiser then updates the caller's tensors in place) and keeps their
    strides. torch's fused Adam pairs the elements of a parameter and of its moments by memory
    order, so a channels_last parameter with contiguous moments (as a checkpoint file stores
    them) takes wrong steps. Here each state tensor of a parameter's shape is copied into fresh
    storage laid out exactly like that parameter (``torch.empty_like`` keeps its strides), and
    every other state tensor (Adam's step count) is cloned. ``state`` itself is left unchanged.
    """
    optimizer.load_state_dict(dict(state))
    for group in optimizer.param_groups:
        for param in group["params"]:
            entry = optimizer.state.get(param)
            if not entry:
                continue
            for key, value in entry.items():
                if not isinstance(value, torch.Tensor):
                    continue
                if value.shape == param.shape:
                    fresh = torch.empty_like(param, dtype=value.dtype)
                    fresh.copy_(value)
                    entry[key] = fresh
                else:
                    entry[key] = value.clone()


LossFn = Callable[[torch.Tensor], torch.Tensor]


class FastStep:
    """One optimisation step of G(z + noise) against a loss, the fast way.

    Args:
        generator: the network (trained in place; moved to channels_last when asked).
        z: the fixed input code (1, D, H, W) float32, on the generator's device.
        loss_fn: ``loss_fn(out) -> 0-dim tensor``; ``out`` is the generator's output (cropped
            to ``crop`` if given) in z's dtype (float32), (N, C, h, w). Computed outside
            autocast.
        lr: Adam's learning rate.
        reg_noise_std: std of the fresh N(0, std²) noise added to z every step (0: none).
        precision: "fp32" | "bf16" (the generator in bf16 with bf16 copies of its convolution
            weights, :class:`dip.engine.bf16.Bf16Weights`; autocast for a compiled generator;
            parameters, optimiser state, output and loss stay fp32).
        channels_last: run the generator and z in channels_last layout; None (default):
            :func:`use_channels_last` decides from the device, the CPU and the precision.
        params: what the optimiser updates (default: the generator's parameters that require
            grad); pass z here (with ``requires_grad``) to optimise the input too.
        generator_rng: ``torch.Generator`` for the reg noise (default: a new one seeded 0); or
            a sequence of K generators, one per member of a packed generator: z's channels are
            then K equal blocks and block k's noise is drawn from generator k alone (values
            equal to those a single fit with that generator draws).
        crop: optional (top, left, h, w) of the output that the loss and ``out`` see.
        optimizer: an optimiser over ``params`` to use instead of :func:`make_adam`'s (it may be
            replaced later through the ``optimizer`` attribute, e.g. by LBFGS).
        regularizer: optional ``regularizer(out) -> 0-dim tensor`` added to the objective that
            is differentiated (e.g. total variation) but not to the returned loss.
        bf16_autocast: run bf16 under ``torch.autocast`` instead of with bf16 weight copies
            (the reference the copies are tested against).

    Calling the step runs: ``zero_grad(set_to_none=True)``; noise drawn in place into a
    preallocated NCHW buffer (``noise.normal_(0, std)``) and ``net_input = z + noise`` written
    into a preallocated buffer; forward (autocast if bf16); output cast to z's dtype; loss;
    backward; ``optimizer.step()``.
    It returns ``(loss, out)`` detached, with no host synchronisation.
    """

    def __init__(self, generator: nn.Module, z: torch.Tensor, loss_fn: LossFn, *,
                 lr: float = 0.01, reg_noise_std: float = 0.0, precision: str = "fp32",
                 channels_last: bool | None = None,
                 params: Sequence[torch.Tensor] | None = None,
                 generator_rng: torch.Generator | Sequence[torch.Generator] | None = None,
                 crop: tuple[int, int, int, int] | None = None,
                 optimizer: torch.optim.Optimizer | None = None,
                 regularizer: LossFn | None = None, bf16_autocast: bool = False) -> None:
        check_precision(precision)
        if not isinstance(z, torch.Tensor) or z.dim() != 4:
            raise ValueError(f"z must be a 4-D tensor (N, D, H, W), got "
                             f"{tuple(z.shape) if isinstance(z, torch.Tensor) else type(z)}")
        if reg_noise_std < 0:
            raise ValueError(f"reg_noise_std must be >= 0, got {reg_noise_std}")
        if precision == "bf16" and not bf16_is_native(z.device):
            log.warning("precision bf16 on a %s without native bf16 arithmetic: bf16 is "
                        "emulated there and runs slower than fp32", z.device.type)
        if channels_last is None:
            channels_last = use_channels_last(generator, precision, z.device)
        self.channels_last = bool(channels_last)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.generator = generator.to(memory_format=self.memory_format).train()  # type: ignore[call-overload]
        self.z = z if z.requires_grad else z.contiguous(memory_format=self.memory_format)
        self.loss_fn = loss_fn
        self.regularizer = regularizer
        self.precision = precision
        self.device = z.device
        self.reg_noise_std = float(reg_noise_std)
        self.crop = crop
        if params is None:
            params = [p for p in generator.parameters() if p.requires_grad]
        self.params = list(params)
        self.optimizer = optimizer if optimizer is not None else make_adam(self.params, lr)
        if generator_rng is None:
            generator_rng = torch.Generator(device=z.device)
            generator_rng.manual_seed(0)
        self.rngs = [generator_rng] if isinstance(generator_rng, torch.Generator) else list(generator_rng)
        if not self.rngs or z.shape[1] % len(self.rngs):
            raise ValueError(f"z's {z.shape[1]} channels cannot be split into {len(self.rngs)} members' "
                             "noise blocks: pass one generator_rng per member")
        # bf16 without autocast (dip.engine.bf16): bf16 copies of the convolution weights, fp32
        # masters; a compiled generator keeps autocast (functional_call would recompile it)
        copies = precision == "bf16" and not bf16_autocast and not hasattr(generator, "_orig_mod")
        self.bf16_weights = Bf16Weights(generator) if copies else None
        if self.reg_noise_std > 0:
            self.noise = torch.empty(z.shape, dtype=z.dtype, device=z.device)
            self.net_input = torch.empty_like(self.z, memory_format=self.memory_format)
        else:
            self.noise = None
            self.net_input = self.z

    def forward(self) -> torch.Tensor:
        """G(z + noise) in z's dtype (float32), cropped; draws new noise (reg_noise_std > 0)."""
        if self.noise is not None:
            # N(0, std²) drawn as std * N(0, 1), rounded as z + (noise * std) is
            for block, rng in zip(self.noise.chunk(len(self.rngs), dim=1), self.rngs, strict=True):
                block.normal_(0.0, self.reg_noise_std, generator=rng)
            if self.z.requires_grad:  # the input is optimised too: keep it in the graph
                net_input = self.z + self.noise
            else:
                net_input = torch.add(self.z, self.noise, out=self.net_input)
        else:
            net_input = self.z
        if self.bf16_weights is not None:
            self.bf16_weights.refresh()  # the masters may have changed (step, recovery, resume)
            out = self.bf16_weights.forward(net_input)
        else:
            with autocast_context(self.precision, self.device):
                out = self.generator(net_input)
        out = out.to(self.z.dtype)  # bf16 → fp32 (z's dtype); a no-op otherwise
        if self.crop is not None:
            top, left, h, w = self.crop
            out = out[:, :, top:top + h, left:left + w]
        return out

    def closure(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero the gradients (to None), forward, loss (+ regularizer), backward.
        Returns (loss, out), the loss without the regularizer."""
        self.optimizer.zero_grad(set_to_none=True)
        out = self.forward()
        loss = self.loss_fn(out)
        objective = loss + self.regularizer(out) if self.regularizer is not None else loss
        objective.backward()
        if self.bf16_weights is not None:
            self.bf16_weights.to_master_grads()
        return loss, out

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One full step; returns (loss, out) detached (0-dim and (N, C, h, w) float32).
        Optimisers that re-evaluate (LBFGS) get the closure; the last evaluation is returned."""
        if isinstance(self.optimizer, torch.optim.LBFGS):
            held = {}

            def closure():
                held["loss"], held["out"] = self.closure()
                return held["loss"]

            self.optimizer.step(closure)
            loss, out = held["loss"], held["out"]
        else:
            loss, out = self.closure()
            self.optimizer.step()
        return loss.detach(), out.detach()
