"""Loads the native library ``dip._C`` once and records why it is missing when it is.

Importing ``dip._C`` loads the shared object whose static initialisers register the
``torch.ops.dip.*`` operators with PyTorch's dispatcher. Which operators exist is read back from
the dispatcher (:func:`registered_ops`), not kept in a list here.
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType

import torch

#: Environment variable that turns a missing native library into an ImportError.
REQUIRE_ENV = "DIP_REQUIRE_NATIVE"


def registered_ops() -> tuple[str, ...]:
    """Names of the operators registered under ``torch.ops.dip`` (e.g. ``"downsample"``), sorted."""
    names = torch._C._dispatch_get_all_op_names()
    return tuple(sorted(n.split("::", 1)[1] for n in names if n.startswith("dip::")))


def _load() -> tuple[ModuleType | None, str]:
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
    if not registered_ops():
        return None, f"dip._C loaded from {_C.__file__} but registers no dip operator"
    return _C, f"loaded from {_C.__file__}"


def required() -> bool:
    """True when ``DIP_REQUIRE_NATIVE`` is set to a true value (1, true, yes)."""
    return os.environ.get(REQUIRE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


NATIVE, STATUS = _load()

if NATIVE is None and required():
    raise ImportError(f"{REQUIRE_ENV} is set but the native library is unavailable: {STATUS}")
