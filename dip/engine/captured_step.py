"""A fit's step captured once as a CUDA graph and replayed, and the decision whether to.

:class:`CapturedStep` wraps the fit's :class:`~dip.engine.step.FastStep`. Its first
:data:`WARMUP_STEPS` calls are eager steps of the fit on a side stream (real steps: the fit
counts, records and judges them like any other; they also initialise what a capture must not:
cuDNN's plans, the optimiser's state, autograd's buffers). The next call captures one whole
step into a ``torch.cuda.CUDAGraph`` and every call from then on replays it:

- the reg noise, drawn into the static noise buffer from the fit's own ``torch.Generator``,
  registered with the graph (``CUDAGraph.register_generator_state``): each replay draws from
  the generator's current (seed, offset) and advances its offset by what the step draws, as the
  eager ``normal_`` does, so the noise is the eager fit's, value for value, and the generator's
  ``get_state()`` (a checkpoint's ``rng_state``) means what it means eagerly: a fit resumed
  from it, eager or captured, draws the same noise from there;
- ``net_input = z + noise`` into its static buffer, the forward pass (fp32, or bf16 with the
  refresh of the :class:`~dip.engine.bf16.Bf16Weights` copies from the fp32 masters before it
  and the cast of their gradients into the masters' after the backward pass, both inside the
  graph), the cast of the output to z's dtype, the crop, the loss, the regulariser, the
  backward pass, and torch's fused Adam step (the same fused kernel as the eager fit's; its
  groups are flagged ``capturable`` during the capture only, which the fused kernel ignores).

The averaged output and the stopping rule's update are *not* in the graph: they keep host-side
counters (the ring buffer's slot, the average's weight of the step) that a replay cannot
change, so the fit runs them eagerly after each replay (without a host read: ``dip.stopping``'s
branch-free path). The learning rate is a Python float in the graph and the optimiser's state
tensors are the graph's inputs by address, so whatever replaces them (a recovery loads a
snapshot into fresh tensors and lowers the rate) must call :meth:`CapturedStep.invalidate`:
the next calls warm up and capture again.

:func:`capture_plan` decides whether a fit is captured at all, with the reason, and the fit
logs it. A capture that raises leaves the step eager (a warning says why).
"""
from __future__ import annotations

import logging

import torch

from dip.engine.config import FitConfig
from dip.engine.step import FastStep

log = logging.getLogger("dip.fit")

# eager steps on a side stream before a capture (torch's documented pattern uses 3)
WARMUP_STEPS = 3


def capture_plan(config: FitConfig, device: torch.device | str, *, operator_trainable: bool = False,
                 fused: bool = True, steps_left: int | None = None) -> tuple[bool, str]:
    """Whether a single fit with ``config`` on ``device`` runs its step as a CUDA graph, and why
    (or why not), in words for the log.

    Args:
        config: the fit's settings (``cuda_graph``, ``optimizer``, ``compile``, ``optimize``).
        device: the fit's device.
        operator_trainable: the operator has parameters fitted too (a blind blur).
        fused: the fit's Adam runs torch's fused kernel (the capturable step needs it).
        steps_left: the steps the fit still runs (None: enough).
    Returns:
        (capture, reason).

    Shapes never change within a single fit (the code, the observation and the crop are
    fixed), so nothing here depends on them; the packed fit (``dip.engine.packed_loop``),
    whose pack shrinks as members stop, never captures.
    """
    if not config.cuda_graph:
        return False, "cuda_graph is off in the fit's config"
    if torch.device(device).type != "cuda":
        return False, f"the device is {torch.device(device).type}, not cuda"
    if config.optimizer == "lbfgs":
        return False, ("the optimizer is LBFGS, whose step re-evaluates the loss a data-dependent "
                       "number of times")
    if config.compile:
        return False, "the generator is compiled with torch.compile, which makes graphs of its own"
    if config.optimize != "net":
        return False, (f"optimize={config.optimize!r}: the input code is fitted too (only the "
                       "network's step is captured)")
    if operator_trainable:
        return False, ("the operator is fitted too (its learning rate changes when its warm-up "
                       "ends, which a captured step cannot follow)")
    if not fused:
        return False, "Adam is not torch's fused implementation on this device"
    if steps_left is not None and steps_left <= WARMUP_STEPS:
        return False, f"{steps_left} step(s) left, no more than the {WARMUP_STEPS} eager warm-up steps"
    return True, (f"the step (noise, forward, loss, backward, fused Adam) is captured after "
                  f"{WARMUP_STEPS} eager warm-up steps and replayed")


def is_fused(optimizer: torch.optim.Optimizer) -> bool:
    """Whether every group of ``optimizer`` is torch's fused Adam."""
    return isinstance(optimizer, torch.optim.Adam) and all(g.get("fused") for g in optimizer.param_groups)


class CapturedStep:
    """``fast`` (a :class:`FastStep` with a fused Adam on a CUDA device) as a CUDA graph.

    Calling it takes one step and returns ``(loss, out)``: the 0-dim float32 data loss and the
    output (N, C, h, w) in z's dtype, cropped as ``fast`` crops it, both detached. After the
    warm-up they are the graph's static tensors, overwritten by the next call: copy what must
    outlive the step. No host synchronisation, but at the capture.

    Attributes: ``graph`` (the ``torch.cuda.CUDAGraph``, None while warming up), ``captures``
    (how many captures succeeded), ``failed`` (a capture raised: the caller should go eager).
    """

    def __init__(self, fast: FastStep, warmup: int = WARMUP_STEPS) -> None:
        if not is_fused(fast.optimizer):
            raise ValueError("a captured step needs torch's fused Adam (make_adam on a CUDA device)")
        self.fast, self.warmup = fast, int(warmup)
        self.stream = torch.cuda.Stream(device=fast.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.loss: torch.Tensor | None = None
        self.out: torch.Tensor | None = None
        self.warm = 0
        self.captures = 0
        self.failed = False

    @property
    def needs_capture(self) -> bool:
        """Whether the next call would capture (the warm-up is done, no graph yet)."""
        return self.graph is None and self.warm >= self.warmup and not self.failed

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.graph is None:
            if self.needs_capture and self.capture():
                return self()
            return self._eager()
        self.graph.replay()
        assert self.loss is not None and self.out is not None
        return self.loss, self.out

    def _eager(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One eager step on the side stream (a warm-up step), ordered after and before the
        current stream's work."""
        current = torch.cuda.current_stream(self.fast.device)
        self.stream.wait_stream(current)  # also: the last step's tensors are no longer read
        with torch.cuda.stream(self.stream):
            loss, out = self.fast()
        current.wait_stream(self.stream)
        self.warm += 1
        return loss, out

    def capture(self) -> bool:
        """Capture one step (nothing runs: a capture records). True when it worked; else the
        step stays eager for good (``failed``), with a warning that says why."""
        fast, optimizer = self.fast, self.fast.optimizer
        flags = [group.get("capturable", False) for group in optimizer.param_groups]
        graph = torch.cuda.CUDAGraph()
        try:
            self._clear_grads()
            for rng in fast.rngs:
                graph.register_generator_state(rng)
            for group in optimizer.param_groups:
                group["capturable"] = True
            torch.cuda.synchronize(fast.device)
            with torch.cuda.stream(self.stream):
                graph.capture_begin(capture_error_mode="thread_local")
                try:
                    loss, out = fast.closure()
                    optimizer.step()
                finally:
                    graph.capture_end()
        except Exception as exc:  # never crash a fit for its speed-up
            log.warning("the CUDA graph capture of the step failed (%s: %s); the fit goes on with "
                        "eager steps", type(exc).__name__, exc)
            self._abandon(graph)
            return False
        finally:
            for group, flag in zip(optimizer.param_groups, flags, strict=True):
                group["capturable"] = flag
        self.graph, self.loss, self.out = graph, loss.detach(), out.detach()
        self.captures += 1
        return True

    def _clear_grads(self) -> None:
        """Gradients to None, so that the captured backward pass allocates them in the graph's
        pool (and a dropped graph's gradients are not used again)."""
        self.fast.optimizer.zero_grad(set_to_none=True)
        if self.fast.bf16_weights is not None:
            for copy in self.fast.bf16_weights.copies.values():
                copy.grad = None

    def _abandon(self, graph: torch.cuda.CUDAGraph) -> None:
        """After a failed capture: nothing of it ran; drop what it left on the host side (the
        gradients it assigned, the graph) and give the step generators whose state no capture
        ever saw (same seed and offset: the noise stream goes on unchanged)."""
        self.failed = True
        try:
            self._clear_grads()
            graph.reset()
            torch.cuda.synchronize(self.fast.device)
        except Exception as exc:  # the fit goes on eagerly whatever the clean-up says
            log.debug("clean-up after the failed capture: %s", exc)
        fresh = []
        for rng in self.fast.rngs:
            copy = torch.Generator(device=rng.device)
            copy.set_state(rng.get_state())
            fresh.append(copy)
        self.fast.rngs = fresh

    def invalidate(self) -> None:
        """Drop the graph (the optimiser's state tensors or rate were replaced, e.g. by a
        recovery): the next calls warm up on eager steps again and capture anew."""
        if self.graph is not None:
            self._clear_grads()
            self.graph = self.loss = self.out = None
        self.warm = 0
