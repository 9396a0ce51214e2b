"""The fitting engine: optimise a generator so that A(G(z)) matches the observation y.

One module per job:

===================  ==========================================================================
``config``           :class:`FitConfig`, the settings of a fit, checked on construction
``geometry``         padded sizes, the crop box, z's size for a generator
``losses``           the data term through the operator, total variation
``step``             :class:`FastStep` (one step: reg noise, forward, loss, backward, Adam),
                     :func:`make_adam`, :func:`load_optimizer_state`
``state``            :class:`FitState` / :class:`MemberState` / :class:`Snapshot`: the state
                     between two steps, one dictionary schema for results, resume, checkpoints
``recovery``         :class:`Recovery`: snapshot at good checks, detect a failed step, restore
``rendering``        :func:`render`: G(z) in training mode without side effects
``result``           :class:`FitResult`, :class:`StepEvent`
``held_state``       the generator state at the stopping rule's returned step, kept by a device
                     flag (branch-free on accelerators), for one fit or a packed one
``tracking``         :class:`Tracker`: one image's average, PSNR history, stopping rule, result
``captured_step``    :class:`CapturedStep`: the step as a CUDA graph, replayed; :func:`capture_plan`
``deferred``         :class:`DeferredCheck`: a captured fit's losses judged a window at a time
``loop``             :func:`fit`: the orchestration
``packed_state``     a member's share of a packed generator's and optimiser's tensors
``packed_member``    one member of a packed fit and its recovery on its own slices
``packed_result``    :class:`PackedFitResult`, :class:`EnsembleResult`, :func:`combine`
``packed_loop``      :func:`fit_packed`: K fits advanced together in one packed network
===================  ==========================================================================
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the lazy names below resolve to, for type checkers and IDEs
    from dip.engine.config import OPTIMIZE, OPTIMIZERS, PRECISIONS, STOPS, FitConfig
    from dip.engine.geometry import center_crop_box, generator_geometry, pad_to, padded_size
    from dip.engine.loop import fit
    from dip.engine.losses import data_loss, tv_loss
    from dip.engine.packed_loop import fit_packed
    from dip.engine.packed_result import EnsembleResult, PackedFitResult
    from dip.engine.recovery import Recovery
    from dip.engine.rendering import render
    from dip.engine.result import FitResult, StepEvent
    from dip.engine.state import FitState, MemberState, Snapshot
    from dip.engine.step import FastStep, load_optimizer_state, make_adam

# name -> module; imported on first use, so that ``dip.engine.config`` (no torch) stays cheap
_HOMES = {
    **dict.fromkeys(("OPTIMIZE", "OPTIMIZERS", "PRECISIONS", "STOPS", "FitConfig"), "config"),
    **dict.fromkeys(("center_crop_box", "generator_geometry", "pad_to", "padded_size"), "geometry"),
    "fit": "loop", "fit_packed": "packed_loop", "EnsembleResult": "packed_result",
    "PackedFitResult": "packed_result", "data_loss": "losses", "tv_loss": "losses", "Recovery": "recovery",
    "render": "rendering",
    "FitResult": "result", "StepEvent": "result",
    **dict.fromkeys(("FitState", "MemberState", "Snapshot"), "state"),
    **dict.fromkeys(("FastStep", "load_optimizer_state", "make_adam"), "step"),
}


def __getattr__(name: str) -> Any:
    """Import a public name on first use (PEP 562) and keep it in the package's namespace."""
    if name not in _HOMES:
        raise AttributeError(f"module 'dip.engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"dip.engine.{_HOMES[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "OPTIMIZE", "OPTIMIZERS", "PRECISIONS", "STOPS", "EnsembleResult", "FastStep", "FitConfig", "FitResult",
    "FitState", "MemberState", "PackedFitResult", "Recovery", "Snapshot", "StepEvent", "center_crop_box",
    "data_loss", "fit", "fit_packed",
    "generator_geometry", "load_optimizer_state", "make_adam", "pad_to", "padded_size", "render",
    "tv_loss",
]
