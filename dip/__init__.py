"""dip: Deep Image Prior image restoration.

Restores an image from one corrupted observation y by fitting a randomly initialised
generator G to a fixed random code z so that A(G(z)) matches y; the network's structure is
the only prior.

    >>> import dip
    >>> result = dip.denoise(noisy)           # noisy: (C, H, W) float tensor in [0, 1]
    >>> restored = result.image               # (1, C, H, W)

``import dip`` is cheap: torch and the native library are loaded on first use of a name that
needs them (``dip.fit``, ``dip.ops``, ...), so the ``dip`` command answers ``--help`` without
importing torch.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from dip._version import __version__

if TYPE_CHECKING:  # what the lazy names below resolve to, for type checkers and IDEs
    from dip import inputs, metrics, models, ops, physics, recipes
    from dip.engine import FitConfig, FitResult, StepEvent, fit
    from dip.tasks import deblur, denoise, flash_no_flash, inpaint, remove_jpeg_artifacts, restore, super_resolve

_SUBMODULES = ("ops", "physics", "models", "metrics", "inputs", "recipes")
_NAMES = {
    "FitConfig": "dip.engine", "FitResult": "dip.engine", "StepEvent": "dip.engine", "fit": "dip.engine",
    "denoise": "dip.tasks", "remove_jpeg_artifacts": "dip.tasks", "super_resolve": "dip.tasks",
    "inpaint": "dip.tasks", "restore": "dip.tasks", "flash_no_flash": "dip.tasks", "deblur": "dip.tasks",
}

__all__ = [
    "__version__", "ops", "physics", "models", "metrics", "inputs", "recipes",
    "FitConfig", "FitResult", "StepEvent", "fit",
    "denoise", "remove_jpeg_artifacts", "super_resolve", "inpaint", "restore", "flash_no_flash", "deblur",
]


def __getattr__(name: str) -> Any:
    """Import a public name on first use (PEP 562) and keep it in the package's namespace."""
    if name in _SUBMODULES:
        value: Any = importlib.import_module(f"dip.{name}")
    elif name in _NAMES:
        value = getattr(importlib.import_module(_NAMES[name]), name)
    else:
        raise AttributeError(f"module 'dip' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
