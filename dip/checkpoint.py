"""Checkpoints of fits: a versioned file format that never executes code when loading.

File format (version 1)
-----------------------
One `safetensors <https://github.com/huggingface/safetensors>`_ file.  Every tensor of the
payload is a safetensors tensor (named ``t0``, ``t1``, ...); the nesting of the payload and all
non-tensor values live as JSON in the header metadata:

==================  ===========================================================
metadata key        value
==================  ===========================================================
``dip.format``      ``"dip-checkpoint"``
``dip.version``     format version, an integer as text (``"1"``)
``dip.package``     the version of ``dip`` that wrote the file
``dip.payload``     JSON tree of the payload (see below)
==================  ===========================================================

JSON tree encoding: ``null``, booleans, numbers (``NaN``/``Infinity`` allowed), strings and
lists stand for themselves; a dict whose keys are all strings not starting with ``"__"`` is a
JSON object; any other dict is ``{"__dict__": [[key, value], ...]}`` (keys: str, int, float,
bool or None); ``{"__tuple__": [...]}`` is a tuple; ``{"__tensor__": "t3"}`` is a
``torch.Tensor``, ``{"__ndarray__": "t4"}`` a ``numpy.ndarray`` and ``{"__bytes__": "t5"}``
``bytes`` (stored as a uint8 tensor; e.g. an ICC profile). Equal tensors are stored once: several
``{"__tensor__": "t3"}`` nodes may name the same tensor (each is read back as its own copy).

Loading reads the safetensors header and tensors and parses JSON; nothing is unpickled, so a
crafted file cannot run code: pickles (including ``torch.save`` files) are rejected with
:class:`CheckpointError`.

Payload of a fit (built by :func:`payload_from_result`)
------------------------------------------------------
``kind`` ``"fit"``; ``dip_version``; ``generator``: ``{"config": dict for dip.models.build,
"state": state_dict of the weights at the end of the fit}``; ``returned``: ``{"state":
state_dict at the step whose image the fit returned, "step": that step, "image": the
returned image (1, C, H, W) float32}``; ``z`` (1, D, h, w) float32 (already padded to the
generator's ``size_multiple``); ``crop`` ``[top, left, height, width]`` of the image inside
the generator's output, or None; ``recipe`` dict; ``options`` dict (the command's options);
``observation`` (1, C, h, w); ``physics`` dict (operator settings, see
:func:`physics_settings`); ``image_info`` dict (``dip.images.ImageInfo.to_dict()``: ``mode``,
``bit_depth``, ``alpha`` tensor or None, ICC profile, ...); ``fit``: ``{"steps_run",
"returned_step", "stop_reason", "seconds", "psnr", "ssim", "backtracks", "recoveries", "config" (FitConfig
as a dict), "history", "image_plain", "image_avg", "optimizer_state", "stopper_state"}`` plus
``"rng_state"`` and ``"backtrack_state"`` when the result carries them (for resuming).

Payload of an ensemble (built by :func:`payload_from_ensemble`)
---------------------------------------------------------------
``kind`` ``"ensemble"``; ``dip_version``; ``members``: one fit payload per member (as above,
each complete: a member can be exported, rendered or resumed alone; the observation, stored by
each, is one tensor in the file); ``stop_reasons`` and ``stop_details`` (each member's);
``image`` the combined image (1, C, H, W) float32; ``mode`` (``"mean"``); ``psnr``.
:func:`member_payload` picks one member's fit payload out of either kind.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dip._version import __version__
from dip.files import atomic_write

FORMAT_NAME = "dip-checkpoint"
FORMAT_VERSION = 1

_META_FORMAT = "dip.format"
_META_VERSION = "dip.version"
_META_PACKAGE = "dip.package"
_META_PAYLOAD = "dip.payload"

_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # pickle protocol >= 2, zip (torch.save)


class CheckpointError(ValueError):
    """The file is not a readable dip checkpoint (wrong format, unsafe content, unknown version)."""


# --------------------------------------------------------------------------------------------
# encoding
# --------------------------------------------------------------------------------------------

class _Encoder:
    """Turns a payload into (JSON tree, {name: tensor}).

    Equal tensors (same dtype, shape and bytes) are stored once and referenced by name from
    every place that holds them: a fit's payload often holds the same weights several times (the
    final weights, those of the returned step, the recovery snapshot taken at the last check)."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self._by_content: dict[tuple, str] = {}

    def _add(self, t: torch.Tensor) -> str:
        # clone: safetensors refuses tensors that share storage (e.g. tied parameters)
        t = t.detach().to("cpu").contiguous().clone()
        digest = hashlib.blake2b(t.reshape(-1).view(torch.uint8).numpy().tobytes(), digest_size=16).digest()
        key = (t.dtype, tuple(t.shape), digest)
        name = self._by_content.get(key)
        if name is not None and torch.equal(self.tensors[name], t):
            return name
        name = f"t{len(self.tensors)}"
        self.tensors[name] = t
        self._by_content[key] = name
        return name

    def encode(self, value: Any, where: str) -> Any:
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float):
            return float(value)
        if isinstance(value, (bytes, bytearray)):
            return {"__bytes__": self._add(torch.frombuffer(bytearray(value), dtype=torch.uint8)
                                           if len(value) else torch.zeros(0, dtype=torch.uint8))}
        if isinstance(value, torch.Tensor):
            if value.is_complex() or value.is_sparse or value.is_quantized:
                raise TypeError(f"checkpoint value at {where} is a {value.dtype}/{value.layout} tensor; "
                                "only dense real or bool tensors can be stored")
            return {"__tensor__": self._add(value)}
        if isinstance(value, np.ndarray):
            if value.dtype == object:
                raise TypeError(f"checkpoint value at {where} is a numpy object array; store numbers only")
            return {"__ndarray__": self._add(torch.from_numpy(np.ascontiguousarray(value)))}
        if isinstance(value, np.generic):
            return self.encode(value.item(), where)
        if isinstance(value, Mapping):
            keys = list(value.keys())
            if all(isinstance(k, str) and not k.startswith("__") for k in keys):
                return {k: self.encode(v, f"{where}.{k}") for k, v in value.items()}
            items = []
            for k, v in value.items():
                if k is not None and not isinstance(k, (str, int, float, bool)):
                    raise TypeError(f"checkpoint dict at {where} has a key of type {type(k).__name__}; "
                                    "keys must be str, int, float, bool or None")
                items.append([k, self.encode(v, f"{where}[{k!r}]")])
            return {"__dict__": items}
        if isinstance(value, tuple):
            return {"__tuple__": [self.encode(v, f"{where}[{i}]") for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [self.encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            raise TypeError(f"checkpoint value at {where} is a {type(value).__name__} dataclass; "
                            "convert it with dataclasses.asdict() first")
        raise TypeError(f"checkpoint value at {where} has type {type(value).__name__}; allowed: tensors, "
                        "numpy arrays, bytes, None, bool, int, float, str, and dict/list/tuple of these")


def _decode(node: Any, tensors: Mapping[str, torch.Tensor], where: str, seen: set[str] | None = None) -> Any:
    """The value of JSON ``node``; a tensor referenced a second time is decoded as a copy, so
    that no two decoded values share storage."""
    seen = set() if seen is None else seen
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    if isinstance(node, list):
        return [_decode(v, tensors, f"{where}[{i}]", seen) for i, v in enumerate(node)]
    if not isinstance(node, dict):
        raise CheckpointError(f"corrupt checkpoint: unexpected JSON value of type {type(node).__name__} at {where}")
    if len(node) == 1:
        (tag, inner), = node.items()
        if tag in ("__tensor__", "__ndarray__", "__bytes__"):
            if not isinstance(inner, str) or inner not in tensors:
                raise CheckpointError(f"corrupt checkpoint: {where} refers to missing tensor {inner!r}")
            t = tensors[inner].clone() if inner in seen else tensors[inner]
            seen.add(inner)
            if tag == "__bytes__":
                if t.dtype != torch.uint8 or t.dim() != 1:
                    raise CheckpointError(f"corrupt checkpoint: bytes at {where} are not a 1-D uint8 tensor")
                return t.numpy().tobytes()
            return t.numpy() if tag == "__ndarray__" else t
        if tag == "__tuple__":
            if not isinstance(inner, list):
                raise CheckpointError(f"corrupt checkpoint: tuple at {where} is not a list")
            return tuple(_decode(v, tensors, f"{where}[{i}]", seen) for i, v in enumerate(inner))
        if tag == "__dict__":
            if not isinstance(inner, list) or not all(isinstance(p, list) and len(p) == 2 for p in inner):
                raise CheckpointError(f"corrupt checkpoint: dict at {where} is not a list of [key, value] pairs")
            out = {}
            for k, v in inner:
                if isinstance(k, (list, dict)):
                    raise CheckpointError(f"corrupt checkpoint: dict key at {where} is a {type(k).__name__}")
                out[k] = _decode(v, tensors, f"{where}[{k!r}]", seen)
            return out
    for k in node:
        if k.startswith("__"):
            raise CheckpointError(f"corrupt checkpoint: unknown tag {k!r} at {where}")
    return {k: _decode(v, tensors, f"{where}.{k}", seen) for k, v in node.items()}


def _json_default_error(value: Any) -> Any:  # pragma: no cover - encoder produces JSON types only
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


# --------------------------------------------------------------------------------------------
# save / load
# --------------------------------------------------------------------------------------------

def save(path: str | os.PathLike, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` (a dict of tensors, arrays, numbers, strings and containers) atomically.

    The file is written next to ``path`` under a temporary name, flushed to disk and renamed,
    so a crash never leaves a half-written checkpoint at ``path``.  Tensors are stored on the
    CPU, contiguous, with their dtype and shape.

    Returns:
        the path written.

    Raises:
        TypeError: a value of an unsupported type (the message names where it sits).
    """
    if not isinstance(payload, Mapping):
        raise TypeError(f"payload must be a dict, got {type(payload).__name__}")
    path = Path(path)
    enc = _Encoder()
    tree = enc.encode(dict(payload), "payload")
    metadata = {
        _META_FORMAT: FORMAT_NAME,
        _META_VERSION: str(FORMAT_VERSION),
        _META_PACKAGE: __version__,
        _META_PAYLOAD: json.dumps(tree, separators=(",", ":"), default=_json_default_error),
    }
    import safetensors.torch

    data = safetensors.torch.save(enc.tensors, metadata=metadata)
    atomic_write(path, data)
    return path


def _reject_unsafe_prefix(path: Path) -> None:
    """Refuse files that are not safetensors before any parser sees them, naming pickles."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(9)
    if len(head) < 9:
        raise CheckpointError(f"{path} is not a dip checkpoint: the file is {len(head)} bytes long")
    (header_len,) = struct.unpack("<Q", head[:8])
    if head[8:9] == b"{" and 8 + header_len <= size:
        return  # a safetensors layout: u64 header length, then a JSON header
    if any(head.startswith(m) for m in _PICKLE_MAGIC):
        raise CheckpointError(
            f"{path} is a pickle or torch.save file, not a dip checkpoint; dip never unpickles files "
            "(a pickle can run arbitrary code). Checkpoints are written by `dip ... --checkpoint FILE` "
            "or dip.checkpoint.save()")
    raise CheckpointError(f"{path} is not a dip checkpoint (not a safetensors file)")


def read_header(path: str | os.PathLike) -> dict[str, str]:
    """The checkpoint's metadata (format name, version, package version) without its tensors.

    Raises:
        CheckpointError: not a dip checkpoint, or a format version this package cannot read.
        FileNotFoundError: no file at ``path``.
    """
    path = _existing_safe_path(path)
    import safetensors

    try:
        with safetensors.safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except safetensors.SafetensorError as exc:
        raise CheckpointError(f"{path} is not a dip checkpoint (not a safetensors file: {exc})") from None
    _check_metadata(path, meta)
    return dict(meta)


def _existing_safe_path(path: str | os.PathLike) -> Path:
    """``path`` as a Path after checking it exists and is not a pickle (never unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    _reject_unsafe_prefix(path)
    return path


def _check_metadata(path: Path, meta: Mapping[str, str]) -> int:
    if meta.get(_META_FORMAT) != FORMAT_NAME:
        raise CheckpointError(f"{path} is a safetensors file but not a dip checkpoint "
                              f"(metadata {_META_FORMAT!r} is {meta.get(_META_FORMAT)!r})")
    raw = meta.get(_META_VERSION)
    try:
        version = int(raw)
    except (TypeError, ValueError):
        raise CheckpointError(f"{path}: checkpoint format version {raw!r} is not an integer") from None
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: unknown checkpoint format version {version} (written by dip "
            f"{meta.get(_META_PACKAGE, '?')}); dip {__version__} reads version {FORMAT_VERSION} only. "
            "Use the dip version that wrote it.")
    if _META_PAYLOAD not in meta:
        raise CheckpointError(f"corrupt checkpoint {path}: metadata has no {_META_PAYLOAD!r}")
    return version


def load(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save`; never executes code from the file.

    Returns:
        the payload dict; tensors come back on the CPU with their saved dtype and shape.

    Raises:
        CheckpointError (a ValueError): not a dip checkpoint (e.g. a pickle, which is refused
            without being read), a corrupt file, or an unknown format version.
        FileNotFoundError: no file at ``path``.
    """
    path = _existing_safe_path(path)
    import safetensors

    try:
        with safetensors.safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            _check_metadata(path, meta)
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except safetensors.SafetensorError as exc:
        raise CheckpointError(f"{path} is not a dip checkpoint (not a readable safetensors file: {exc})") from None
    try:
        tree = json.loads(meta[_META_PAYLOAD])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"corrupt checkpoint {path}: payload metadata is not JSON ({exc})") from None
    payload = _decode(tree, tensors, "payload")
    if not isinstance(payload, dict):
        raise CheckpointError(f"corrupt checkpoint {path}: the payload is a {type(payload).__name__}, not a dict")
    return payload


# --------------------------------------------------------------------------------------------
# fit payloads
# --------------------------------------------------------------------------------------------

def _plain(value: Any) -> Any:
    """Dataclasses to dicts (recursively); everything else unchanged."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def _state_dict(module_or_state: Any) -> dict[str, Any]:
    if isinstance(module_or_state, torch.nn.Module):
        module_or_state = module_or_state.state_dict()
    return {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in dict(module_or_state).items()}


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def _cpu_or_none(t: Any) -> Any:
    return None if t is None else t.detach().cpu().float()


def physics_settings(op: Any) -> dict[str, Any]:
    """Operator settings that ``dip.physics.from_config(settings, mask=settings.get("mask"))``
    rebuilds: ``{"name": "identity"}``, ``{"name": "mask", "mask": (1|N, 1|C, H, W) tensor}`` or
    ``{"name": "downsample", "factor", "kernel", "phase", "preserve_size"[, "padding"]}`` or
    ``{"name": "blur", "kernel": (1|C, Kh, Kw) float32 tensor as applied, "padding"}`` or
    ``{"name": "blind_blur", **BlindBlur.config(), "state": its state_dict}`` (the estimated kernel
    is ``from_config(...).kernel``). A dict is returned unchanged (copied)."""
    if op is None or isinstance(op, Mapping):
        return None if op is None else dict(op)
    from dip import physics

    if isinstance(op, physics.Identity):
        return {"name": "identity"}
    if isinstance(op, physics.Mask):
        return {"name": "mask", "mask": op.mask.detach().cpu()}
    if isinstance(op, physics.Downsample):
        out = {"name": "downsample", "factor": int(op.factor), "kernel": op.kernel, "phase": float(op.phase),
               "preserve_size": bool(op.preserve_size)}
        if op.preserve_size:
            out["padding"] = op.padding
        return out
    if isinstance(op, physics.Blur):
        return {"name": "blur", "kernel": op.kernel.detach().cpu(), "padding": op.padding}
    if isinstance(op, physics.BlindBlur):
        return {"name": "blind_blur", **op.config(), "state": _state_dict(op)}
    raise TypeError(f"cannot describe operator {type(op).__name__} in a checkpoint; "
                    "pass its settings as a dict (physics=...)")


def payload_from_result(result: Any, *, recipe: Any = None, observation: torch.Tensor | None = None,
                        physics: Any = None, image_info: Any = None,
                        options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint payload of a finished fit.

    Args:
        result: a ``dip.fit.FitResult``; uses ``generator`` (with its ``config`` dict), ``z``,
            ``crop``, ``image``, ``image_plain``, ``image_avg``, ``returned_state``,
            ``returned_step``, ``history``, ``steps_run``, ``stop_reason``, ``seconds``,
            ``psnr``, ``ssim``, ``backtracks``, ``config``, ``optimizer_state``,
            ``stopper_state``, ``recipe`` and ``physics``.
        recipe: the ``dip.recipes.Recipe`` (dataclass or dict); default ``result.recipe``.
        observation: the observation y, (1, C, h, w) float.
        physics: the operator (``dip.physics`` module) or its settings dict; default
            ``result.physics``.  See :func:`physics_settings`.
        image_info: ``dip.images.ImageInfo`` (or its dict) of the input image: mode, bit depth, alpha, ...
        options: the command-line or API options of the run (JSON-like values).

    Returns:
        a dict ready for :func:`save` (layout in this module's docstring).
    """
    generator = result.generator
    config = getattr(generator, "config", None)
    if not isinstance(config, Mapping):
        raise TypeError("result.generator has no `config` dict; build generators with dip.models.build so "
                        "that a checkpoint can rebuild them")
    if recipe is None:
        recipe = getattr(result, "recipe", None)
    if physics is None:
        physics = getattr(result, "physics", None)
    if image_info is not None and hasattr(image_info, "to_dict"):
        image_info = image_info.to_dict()
    fit_config = getattr(result, "config", None)
    fit_section: dict[str, Any] = {
        "stop_reason": str(result.stop_reason),
        "psnr": _float_or_none(getattr(result, "psnr", None)),
        "ssim": _float_or_none(getattr(result, "ssim", None)),
        "config": _plain(fit_config) if fit_config is not None else None,
        "image_plain": _cpu_or_none(getattr(result, "image_plain", None)),
        **fit_state_section(result.state),
    }
    crop = getattr(result, "crop", None)
    return {
        "kind": "fit",
        "dip_version": __version__,
        "generator": {"config": _plain(dict(config)), "state": _state_dict(generator)},
        "returned": {
            "state": _state_dict(result.returned_state) if result.returned_state is not None else None,
            "step": int(result.returned_step),
            "image": result.image.detach().cpu().float(),
        },
        "z": result.z.detach().cpu().float(),
        "crop": None if crop is None else [int(c) for c in crop],
        "recipe": _plain(recipe),
        "options": _plain(dict(options)) if options is not None else {},
        "observation": None if observation is None else observation.detach().cpu(),
        "physics": physics_settings(physics),
        "image_info": _plain(image_info) if image_info is not None else {},
        "fit": fit_section,
    }


def payload_from_ensemble(result: Any, **kwargs: Any) -> dict[str, Any]:
    """The checkpoint payload of an ensemble (``dip.engine.packed_result.EnsembleResult``):
    each member's :func:`payload_from_result` (``kwargs`` go to each), how each ended, and the
    combined image. See the module docstring."""
    return {
        "kind": "ensemble",
        "dip_version": __version__,
        "members": [payload_from_result(m, **kwargs) for m in result.members],
        "stop_reasons": [str(m.stop_reason) for m in result.members],
        "stop_details": [str(m.stop_detail) for m in result.members],
        "image": result.image.detach().cpu().float(),
        "mode": "mean",
        "psnr": _float_or_none(getattr(result, "psnr", None)),
    }


def member_payload(payload: Mapping[str, Any], member: int | None = None,
                   path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The fit payload of ``member`` (default 0) of an ensemble checkpoint's payload; a fit
    checkpoint's own payload (``member`` None or 0). CheckpointError for a member that is not there."""
    where = f"{path}: " if path is not None else ""
    if payload.get("kind") != "ensemble":
        if member not in (None, 0):
            raise CheckpointError(f"{where}the checkpoint holds one fit, not an ensemble: there is no member {member}")
        return dict(payload)
    members = payload.get("members") or []
    k = 0 if member is None else int(member)
    if not 0 <= k < len(members):
        raise CheckpointError(f"{where}the ensemble has {len(members)} members (0 to {len(members) - 1}); "
                              f"there is no member {k}")
    return dict(members[k])


def fit_state_section(state: Any) -> dict[str, Any]:
    """The ``fit`` section's engine-state keys for a ``dip.engine.FitState`` (one member):
    its :meth:`~dip.engine.FitState.to_dict` schema with ``step`` stored as ``steps_run``; the
    returned state lives in the payload's ``returned`` section instead (stored once)."""
    if len(state.members) != 1:
        raise ValueError("a checkpoint holds one fit; save each member of a packed fit on its own")
    section = {k: _plain(v) for k, v in state.to_dict().items() if k not in ("step", "returned_state")}
    section["steps_run"] = int(state.step)
    section["returned_step"] = int(state.member.returned_step if state.member.returned_step is not None
                                   else state.step)
    section["seconds"] = _float_or_none(state.seconds)
    section["image_avg"] = _cpu_or_none(state.member.image_avg)
    return section


def fit_state_from_payload(payload: Mapping[str, Any]) -> Any:
    """The ``dip.engine.FitState`` that a fit checkpoint's payload holds (inverse of
    :func:`fit_state_section` plus the ``returned`` section)."""
    from dip.engine.state import FitState

    fit_section = dict(payload["fit"])
    returned = payload.get("returned") or {}
    fit_section["step"] = int(fit_section.pop("steps_run"))
    fit_section["returned_state"] = returned.get("state")
    fit_section["returned_step"] = returned.get("step")
    for derived in ("stop_reason", "psnr", "ssim", "config", "image_plain"):
        fit_section.pop(derived, None)
    return FitState.from_dict(fit_section)


def require(payload: Mapping[str, Any], *keys: str, path: str | os.PathLike | None = None) -> None:
    """Raise :class:`CheckpointError` naming the first of the dotted ``keys`` missing from ``payload``."""
    where = f"{path}: " if path is not None else ""
    for key in keys:
        node: Any = payload
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node or node[part] is None:
                raise CheckpointError(f"{where}checkpoint has no {key!r}; it was not written by a dip fit "
                                      "or is from an incompatible version")
            node = node[part]


__all__ = ["CheckpointError", "FORMAT_NAME", "FORMAT_VERSION", "save", "load", "read_header",
           "payload_from_result", "payload_from_ensemble", "member_payload", "fit_state_section",
           "fit_state_from_payload", "physics_settings", "require"]
