"""Loads the native library ``dip._C`` once and records why it is missing when it is.

Importing ``dip._C`` loads the shared object whose static initialisers register the
``torch.ops.dip.*`` operators with PyTorch's dispatcher.
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Optional, Tuple

import torch

#: Environment variable that turns a missing native library into an ImportError.
REQUIRE_ENV = "DIP_REQUIRE_NATIVE"

_OPS = ("downsample", "downsample_adjoint", "masked_mse", "masked_mse_backward",
        "bn_leaky_relu", "bn_leaky_relu_backward")


def _load() -> Tuple[Optional[ModuleType], str]:
    try:
        _C = importlib.import_module("dip._C")
    except ModuleNotFoundError as exc:
        if exc.name == "dip._C":
            return None, ("dip._C not found: the package was installed without its native "
                          "library (no C++ compiler at install time?); the pure-PyTorch "
                          "reference ops are used")
        return None, f"dip._C failed to import: {exc}"
    except ImportError as exc:
        return None, (f"dip._C failed to import ({exc}); it was probably built against "
                      f"another torch than the installed {torch.__version__}: reinstall dip")
    missing = [name for name in _OPS if not hasattr(torch.ops.dip, name)]
    if missing:
        return None, f"dip._C loaded from {_C.__file__} but does not register {missing}"
    return _C, f"loaded from {_C.__file__}"


def required() -> bool:
    """True when ``DIP_REQUIRE_NATIVE`` is set to a true value (1, true, yes)."""
    return os.environ.get(REQUIRE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


NATIVE, STATUS = _load()

if NATIVE is None and required():
    raise ImportError(f"{REQUIRE_ENV} is set but the native library is unavailable: {STATUS}")
