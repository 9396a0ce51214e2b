"""What an exported model says about itself, and the optional packages export needs.

Every model written by :mod:`dip.export` carries one metadata record (a JSON object), so that a
consumer with onnxruntime alone knows what to feed and what comes out:

================  ====================================================================
key               value
================  ====================================================================
kind              "generator" (renders an image), or "operator" (a degradation operator x -> y)
dip_version       the dip version that wrote the model, e.g. "0.3.0"
recipe            the recipe's name ("denoise", "sr", ...), or null when unknown
inputs            [{"name": "z", "shape": [1, D, h, w], "dtype": "float32"}], or [] when z is baked in
outputs           [{"name": "image", "shape": [1, C, H, W], "dtype": "float32"}]
value_range       [0.0, 1.0] for generators ending in a sigmoid, else null
layout            "NCHW"
crop              [top, left, height, width] of the image in the generator's output, or null
z_shape           [1, D, h, w]: the code's shape (the input's shape for ``input_z`` models)
input_z           true when z is the model's input
image_is_average  true when the fit's written image was an average of its outputs (the
                  model then renders G(z), which differs from it), false, or null when unknown
================  ====================================================================

Where it lives:

- ONNX: ``metadata_props``, one entry per key named ``dip.<key>`` whose value is the JSON text of
  the value (``json.loads`` reads each back: ``"dip.recipe"`` holds ``"denoise"`` with its quotes).
- TorchScript (.pt): the extra file ``dip.json`` (``torch.jit.load(p, _extra_files={"dip.json": ""})``).
- torch.export (.pt2): the extra file ``dip.json`` of the archive
  (``torch.export.load(p, extra_files={"dip.json": ""})``).

:func:`read` returns the record of any of the three.
"""
from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from types import ModuleType
from typing import Any

#: name of the extra file that holds the record in TorchScript and .pt2 archives
EXTRA_FILE = "dip.json"
#: prefix of the record's keys among ONNX metadata_props
ONNX_PREFIX = "dip."
#: packages export and render need per format (ordinary dependencies of dip; the ``export``
#: extra is an empty alias kept for old install commands)
NEEDS = {"onnx": ("onnx", "onnxscript", "onnxruntime")}


class MissingDependencyError(ImportError):
    """A package that export or render needs is not installed; the message says how to install it."""


def require(package: str, purpose: str) -> ModuleType:
    """Import ``package`` or raise :class:`MissingDependencyError` with one line naming the fix.

    ``purpose`` says what needs it (e.g. "ONNX export")."""
    try:
        return importlib.import_module(package)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{purpose} needs {package!r}, a dependency of dip that cannot be imported here ({exc}); "
            f"install it with pip install {package}") from None


def require_format(fmt: str) -> None:
    """Import every package that writing and verifying ``fmt`` needs (before any work is done)."""
    for package in NEEDS.get(fmt, ()):
        require(package, f"{fmt.upper()} export")


def build(*, kind: str = "generator", inputs: list[tuple[str, tuple[int, ...]]], output: tuple[str, tuple[int, ...]],
          z_shape: tuple[int, ...] | None, crop: Any, input_z: bool, value_range: tuple[float, float] | None,
          recipe: str | None = None, image_is_average: bool | None = None) -> dict[str, Any]:
    """The record (layout in this module's docstring); every value is JSON-serialisable."""
    from dip import __version__

    return {
        "kind": kind,
        "dip_version": __version__,
        "recipe": recipe,
        "inputs": [{"name": n, "shape": [int(s) for s in shape], "dtype": "float32"} for n, shape in inputs],
        "outputs": [{"name": output[0], "shape": [int(s) for s in output[1]], "dtype": "float32"}],
        "value_range": None if value_range is None else [float(value_range[0]), float(value_range[1])],
        "layout": "NCHW",
        "crop": None if crop is None else [int(c) for c in crop],
        "z_shape": None if z_shape is None else [int(s) for s in z_shape],
        "input_z": bool(input_z),
        "image_is_average": image_is_average,
    }


def to_onnx_props(record: dict[str, Any]) -> dict[str, str]:
    """ONNX ``metadata_props`` entries: ``dip.<key>`` -> the value's JSON text."""
    return {ONNX_PREFIX + k: json.dumps(v) for k, v in record.items()}


def from_onnx_props(props: dict[str, str]) -> dict[str, Any]:
    """Inverse of :func:`to_onnx_props` (entries without the prefix are ignored)."""
    out: dict[str, Any] = {}
    for key, value in props.items():
        if not key.startswith(ONNX_PREFIX):
            continue
        try:
            out[key[len(ONNX_PREFIX):]] = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f"ONNX metadata {key!r} is not JSON text: {value!r}") from None
    return out


def extra_files(record: dict[str, Any]) -> dict[str, str]:
    """The TorchScript / .pt2 extra files that hold ``record``."""
    return {EXTRA_FILE: json.dumps(record, indent=1, sort_keys=True)}


def read(path: str | os.PathLike) -> dict[str, Any]:
    """The record of an exported model (.onnx, .pt, .pt2); {} when the file has none (a model
    written by another tool or an older dip).  Does not run the model; .pt and .pt2 files are
    opened with torch (they are code: open only models you trust)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        onnx = require("onnx", "reading ONNX metadata")
        proto = onnx.load(str(path), load_external_data=False)
        return from_onnx_props({p.key: p.value for p in proto.metadata_props})
    import torch

    files = {EXTRA_FILE: ""}
    if suffix == ".pt":
        torch.jit.load(str(path), map_location="cpu", _extra_files=files)
    elif suffix == ".pt2":
        torch.export.load(str(path), extra_files=files)
    else:
        raise ValueError(f"{path}: unknown model format {suffix or '(no suffix)'!r}; use .onnx, .pt or .pt2")
    text = files[EXTRA_FILE]
    text = text.decode() if isinstance(text, bytes) else text
    return json.loads(text) if text else {}


__all__ = ["EXTRA_FILE", "ONNX_PREFIX", "MissingDependencyError", "require", "require_format", "build",
           "to_onnx_props", "from_onnx_props", "extra_files", "read"]
