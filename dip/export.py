"""Export fitted generators (and degradation operators) to TorchScript, torch.export and ONNX.

A fitted generator G renders the restored image as G(z) with BatchNorm in *training* mode
(batch statistics), which is how the fit ran.  Two exported forms reproduce that image:

- default (``input_z=False``): the model has no inputs; z is baked in as a constant, and every
  BatchNorm's running statistics are replaced by the batch statistics measured on z (mean and
  *biased* variance, which is what training-mode BatchNorm normalises with), then the model is
  put in eval mode.  The graph is a plain inference graph that outputs the image.
- ``input_z=True``: z is the model's input (same shape as the fit's z) and every BatchNorm
  normalises with the statistics of the batch it is given (``track_running_stats=False``), so
  another code z' renders G(z') as the training-mode network would.

In both, the output is cropped to the image (the fit pads z to the generator's
``size_multiple`` and crops the output back; ``FitResult.crop`` gives the box), so the model
outputs exactly (1, C, H, W) float32, in [0, 1] for generators that end with a sigmoid.

Graphs contain standard operators only: networks that use the native ``dip::`` operators are
first converted with ``dip.models.to_standard``; every artefact is scanned and a ``dip::`` (or
any non-standard) operator is an error.  Every artefact written is loaded back (onnxruntime
for ONNX, ``torch.jit.load``, ``torch.export.load``) and compared with the eager training-mode
output; a difference above the tolerance (1e-4) is an :class:`ExportError` and the files
written by that call are removed.

Every artefact carries a metadata record (input/output names and shapes, value range, crop,
dip version, recipe, z's shape): ONNX ``metadata_props``, and the extra file ``dip.json`` in
TorchScript and .pt2 archives; see :mod:`dip.export_metadata`.

onnx, onnxscript and onnxruntime are ordinary dependencies of dip; when one is missing, ONNX
export and render fail with :class:`~dip.export_metadata.MissingDependencyError`, one line that
names the package to install.

Security: TorchScript (.pt) and torch.export (.pt2) files are code as much as data; load or
render only models you trust.  ONNX files are run by onnxruntime.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import operator as _operator
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dip import export_metadata as meta
from dip.export_metadata import MissingDependencyError

log = logging.getLogger(__name__)

#: largest accepted max |exported - eager| difference
TOLERANCE = 1e-4
#: ONNX models whose weights exceed this many bytes are written with external data
#: (protobuf files are limited to 2 GiB)
ONNX_SINGLE_FILE_LIMIT = 1_800_000_000
FORMATS = ("onnx", "torchscript", "pt2")
_SUFFIXES = {".onnx": "onnx", ".pt": "torchscript", ".pt2": "pt2"}
_STANDARD_ONNX_DOMAINS = ("", "ai.onnx")
_STANDARD_TORCH_NAMESPACES = {"torchscript": ("aten", "prim"), "pt2": ("aten",)}

Crop = tuple[int, int, int, int]


class ExportError(RuntimeError):
    """An exported artefact failed verification (output differs from the eager output, or the
    graph contains non-standard operators)."""


@dataclass
class ExportReport:
    """What :func:`export` wrote and how well it reproduces the eager output.

    Attributes:
        paths: format ("onnx", "torchscript", "pt2") -> path written.
        max_abs_diff: format -> largest |artefact output - eager training-mode output| over
            every verification input (float32 pixels in [0, 1]).
        image_diff: largest |eager output - image| when an image was given (e.g. the fit's
            returned image, which is an average of outputs when averaging was on), else None.
        input_z: whether the models take z as input.
        output_shape: shape of the exported models' output, (1, C, H, W).
        tolerance: the tolerance verified against.
        extra_files: other files written (e.g. ONNX external data), format -> paths.
        image_is_average: True when the given image was an average of the fit's outputs (the
            exported models render the generator's own output G(z), which differs from it by
            ``image_diff``), False when it was the plain output, None when unknown.
        metadata: the record written into every artefact (see :mod:`dip.export_metadata`).
    """

    paths: dict[str, Path]
    max_abs_diff: dict[str, float]
    image_diff: float | None
    input_z: bool
    output_shape: tuple[int, ...]
    tolerance: float = TOLERANCE
    extra_files: dict[str, list[Path]] = field(default_factory=dict)
    image_is_average: bool | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def average_note(self) -> str | None:
        """The sentence that says the exported model does not render the written image, or None."""
        if self.image_diff is None:
            return None
        levels = f"{self.image_diff:.3g} ({self.image_diff * 255:.1f}/255)"
        if self.image_is_average:
            return ("the fit returned the average of its outputs; the exported model renders the generator's "
                    f"own output G(z), which differs from the written image by up to {levels}")
        if self.image_diff > self.tolerance:
            return ("the fit returned another image than the generator's own output G(z); the exported model "
                    f"renders G(z), which differs from the written image by up to {levels}")
        return None

    def lines(self) -> list[str]:
        """Human-readable summary, one line per artefact plus the image difference."""
        out = []
        for fmt, path in self.paths.items():
            out.append(f"{fmt}: {path} (max |difference| to the eager output {self.max_abs_diff[fmt]:.2e}, "
                       f"tolerance {self.tolerance:.0e})")
        shape = "x".join(str(s) for s in self.output_shape)
        out.append(f"output: {shape} float32" + (", input: z" if self.input_z else ", no inputs (z baked in)"))
        note = self.average_note()
        if note is not None:
            out.append(f"note: {note}")
        elif self.image_diff is not None:
            out.append(f"the exported model renders the fit's written image (max |difference| "
                       f"{self.image_diff:.2e})")
        return out


# --------------------------------------------------------------------------------------------
# preparing the module to export
# --------------------------------------------------------------------------------------------

def _is_bn(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.batchnorm._BatchNorm)


def _standard_copy(generator: nn.Module) -> nn.Module:
    """A CPU float32 copy of ``generator`` built from standard torch modules only."""
    if any(type(m).__module__.split(".")[0] == "dip" for m in generator.modules()):
        from dip.models import to_standard

        net = to_standard(generator)
    else:
        net = copy.deepcopy(generator)
    return net.to(device="cpu", dtype=torch.float32, memory_format=torch.contiguous_format)  # type: ignore[call-overload]


def train_mode_output(generator: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """G(z) with BatchNorm in training mode, on a copy (the generator's running statistics are
    not touched).  Returns (N, C, H, W) float32 on the CPU."""
    net = copy.deepcopy(generator).to(device="cpu", dtype=torch.float32).train()
    with torch.no_grad():
        return net(z.to(device="cpu", dtype=torch.float32)).float()


def freeze_batch_statistics(net: nn.Module, z: torch.Tensor) -> nn.Module:
    """Replace every BatchNorm's running statistics by the batch statistics of ``net(z)`` in
    training mode (mean and biased variance over N, H, W), then switch ``net`` to eval mode.

    Afterwards ``net(z)`` in eval mode equals the training-mode output on ``z`` (to rounding).
    Modifies and returns ``net``.

    Raises:
        ExportError: a BatchNorm module runs more than once per forward pass (shared module),
            so no single set of statistics reproduces it; export with ``input_z=True``.
    """
    stats: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}
    shared: list[str] = []
    names = {m: n for n, m in net.named_modules()}

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        if module in stats:
            shared.append(names[module])
        x = inputs[0].detach().double()
        dims = [0] + list(range(2, x.dim()))
        stats[module] = (x.mean(dim=dims), x.var(dim=dims, unbiased=False))

    bns = [m for m in net.modules() if _is_bn(m)]
    handles = [m.register_forward_pre_hook(hook) for m in bns]
    try:
        net.train()
        with torch.no_grad():
            net(z)
    finally:
        for h in handles:
            h.remove()
    if shared:
        raise ExportError(f"BatchNorm module(s) {sorted(set(shared))} run more than once per forward pass; "
                          "their statistics cannot be frozen: export with input_z=True")
    for m in bns:
        if m not in stats:
            continue
        mean, var = stats[m]
        m.running_mean = mean.to(torch.float32)
        m.running_var = var.to(torch.float32)
        m.track_running_stats = True  # type: ignore[assignment]
    return net.eval()


def use_batch_statistics(net: nn.Module) -> nn.Module:
    """Make every BatchNorm normalise with the statistics of its input batch in any mode
    (``track_running_stats=False``, no running buffers), then switch to eval mode.
    Modifies and returns ``net``."""
    for m in net.modules():
        if _is_bn(m):
            m.track_running_stats = False  # type: ignore[assignment]
            m.running_mean = None
            m.running_var = None
            m.num_batches_tracked = None
    return net.eval()


class _Crop(nn.Module):
    def __init__(self, crop: Crop | None):
        super().__init__()
        self.box = crop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.box is None:
            return x
        top, left, h, w = self.box
        return x[:, :, top:top + h, left:left + w]


class RenderImage(nn.Module):
    """No inputs: returns ``crop(net(z))`` with z stored as a buffer. Output (1, C, H, W)."""

    def __init__(self, net: nn.Module, z: torch.Tensor, crop: Crop | None):
        super().__init__()
        self.net = net
        self.register_buffer("z", z.detach().clone())
        self.crop = _Crop(crop)

    def forward(self) -> torch.Tensor:
        return self.crop(self.net(self.z))


class RenderFromCode(nn.Module):
    """Input z (the shape of the fit's code): returns ``crop(net(z))``. Output (1, C, H, W)."""

    def __init__(self, net: nn.Module, crop: Crop | None):
        super().__init__()
        self.net = net
        self.crop = _Crop(crop)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.crop(self.net(z))


def _check_z(z: torch.Tensor) -> torch.Tensor:
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"z must be a torch.Tensor, got {type(z).__name__}")
    if z.dim() != 4 or z.numel() == 0:
        raise ValueError(f"z must have shape (1, D, H, W), got {tuple(z.shape)}")
    if not z.is_floating_point():
        raise TypeError(f"z must be a float tensor, got dtype {z.dtype}")
    return z.detach().to(device="cpu", dtype=torch.float32).contiguous()


def _check_crop(crop, out_shape: Sequence[int]) -> Crop | None:
    if crop is None:
        return None
    try:
        box = tuple(int(c) for c in crop)
    except (TypeError, ValueError):
        raise TypeError(f"crop must be (top, left, height, width) integers, got {crop!r}") from None
    if len(box) != 4:
        raise ValueError(f"crop must be (top, left, height, width), got {crop!r}")
    top, left, h, w = box
    H, W = int(out_shape[-2]), int(out_shape[-1])
    if top < 0 or left < 0 or h < 1 or w < 1 or top + h > H or left + w > W:
        raise ValueError(f"crop {box} (top, left, height, width) does not fit the generator's "
                         f"{H}x{W} output")
    return box


def prepare(generator: nn.Module, z: torch.Tensor, *, input_z: bool = False,
            crop: Crop | None = None) -> nn.Module:
    """The standard-op module that :func:`export` writes: :class:`RenderImage` (no inputs, BN
    statistics of z frozen) or, with ``input_z``, :class:`RenderFromCode` (BN batch statistics).

    Args:
        generator: a fitted ``dip.models`` generator (or any ``nn.Module`` image generator).
        z: its code, (1, D, h, w) float.
        input_z: make z the model's input.
        crop: (top, left, height, width) of the image in the generator's output, or None.
    """
    z = _check_z(z)
    net = _standard_copy(generator)
    with torch.no_grad():
        out_shape = net.train()(z).shape if crop is not None else None
    box = _check_crop(crop, out_shape) if crop is not None else None
    for p in net.parameters():
        p.requires_grad_(False)
    if input_z:
        return RenderFromCode(use_batch_statistics(net), box).eval()
    return RenderImage(freeze_batch_statistics(net, z), z, box).eval()


# --------------------------------------------------------------------------------------------
# graph scans
# --------------------------------------------------------------------------------------------

def _torchscript_kinds(module: torch.jit.ScriptModule) -> set:
    kinds = set()

    def visit(block) -> None:
        for node in block.nodes():
            kinds.add(node.kind())
            for sub in node.blocks():
                visit(sub)

    visit(module.inlined_graph)
    return kinds


def nonstandard_ops(artefact) -> list[str]:
    """Operators of a loaded artefact that are not standard (e.g. ``dip::downsample``).

    ``artefact``: a ``torch.jit.ScriptModule``, a ``torch.export.ExportedProgram`` or an
    ``onnx.ModelProto``.  Returns sorted names; empty when the graph is standard only.
    """
    if isinstance(artefact, torch.jit.ScriptModule):
        allowed = _STANDARD_TORCH_NAMESPACES["torchscript"]
        return sorted(k for k in _torchscript_kinds(artefact) if k.split("::")[0] not in allowed)
    if isinstance(artefact, torch.export.ExportedProgram):
        bad = set()
        allowed = _STANDARD_TORCH_NAMESPACES["pt2"]
        for node in artefact.graph.nodes:
            if node.op != "call_function":
                continue
            target = node.target
            namespace = getattr(target, "namespace", None)
            if namespace is not None:
                if namespace not in allowed:
                    bad.add(str(target))
            elif getattr(target, "__module__", None) != _operator.__name__:
                bad.add(str(target))
        return sorted(bad)
    onnx = sys.modules.get("onnx")  # an onnx.ModelProto exists only once onnx is imported
    if onnx is not None and isinstance(artefact, onnx.ModelProto):
        bad = {f"{n.domain}::{n.op_type}" for n in artefact.graph.node if n.domain not in _STANDARD_ONNX_DOMAINS}
        bad |= {f"function {f.domain}::{f.name}" for f in artefact.functions}
        return sorted(bad)
    raise TypeError(f"cannot scan a {type(artefact).__name__}; expected a ScriptModule, ExportedProgram or "
                    "onnx.ModelProto")


def _require_standard(fmt: str, path: Path, artefact) -> None:
    bad = nonstandard_ops(artefact)
    if bad:
        raise ExportError(f"{path}: the exported {fmt} graph contains non-standard operators {bad}; "
                          "exported models must use standard operators only")


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------

def _write_torchscript(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path,
                       record: dict[str, Any]) -> None:
    with warnings.catch_warnings():
        # shapes are fixed by design; tracing warnings about shape-dependent Python code and
        # TorchScript's deprecation notice say nothing about this model
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(module, args, check_trace=False)
        torch.jit.save(traced, str(path), _extra_files=meta.extra_files(record))


def _exported_program(module: nn.Module, args: tuple[torch.Tensor, ...]) -> torch.export.ExportedProgram:
    return torch.export.export(module, args, strict=False)


class _QuietLogger:
    """Raise one logger's level for the duration of a ``with`` block, then restore it."""

    def __init__(self, name: str, level: int):
        self.logger = logging.getLogger(name)
        self.level = level

    def __enter__(self) -> None:
        self.saved = self.logger.level
        self.logger.setLevel(self.level)

    def __exit__(self, *exc) -> None:
        self.logger.setLevel(self.saved)


def _write_onnx(program: torch.export.ExportedProgram, args: tuple[torch.Tensor, ...], path: Path,
                names: tuple[list[str], str], external: bool, record: dict[str, Any]) -> None:
    # the exporter's op registry warns about every torchvision op when torchvision is absent
    with warnings.catch_warnings(), _QuietLogger("torch.onnx._internal.exporter._registration", logging.ERROR):
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        onnx_program = torch.onnx.export(program, args, dynamo=True, verbose=False,
                                         input_names=names[0] or None, output_names=[names[1]])
    onnx_program.model.metadata_props.update(meta.to_onnx_props(record))
    onnx_program.save(str(path), external_data=external)


def _model_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


# --------------------------------------------------------------------------------------------
# loading and running artefacts (shared by verification and `dip render`)
# --------------------------------------------------------------------------------------------

def format_of(path: str | os.PathLike) -> str:
    """Format name of a model file from its suffix: .onnx -> "onnx", .pt -> "torchscript",
    .pt2 -> "pt2"; ValueError otherwise."""
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIXES:
        raise ValueError(f"{path}: unknown model format {suffix or '(no suffix)'!r}; "
                         "use .onnx (ONNX), .pt (TorchScript) or .pt2 (torch.export)")
    return _SUFFIXES[suffix]


class LoadedModel:
    """An exported model loaded for inference: ``model(*inputs) -> (N, C, H, W) float32 tensor``.

    ``num_inputs`` is 0 for a model with z baked in, 1 for an ``input_z`` model; ``input_shape``
    is the shape the input must have (None when unknown); ``metadata`` is the record the model
    carries (see :mod:`dip.export_metadata`; {} for a model without one).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.format = format_of(self.path)
        if not self.path.is_file():
            raise FileNotFoundError(f"model file {str(self.path)!r} does not exist")
        self.input_shape: tuple[int, ...] | None = None
        extra = {meta.EXTRA_FILE: ""}
        if self.format == "onnx":
            onnx = meta.require("onnx", "loading an ONNX model")
            onnxruntime = meta.require("onnxruntime", "running an ONNX model")

            self.proto = onnx.load(str(self.path), load_external_data=False)
            self.artefact: Any = self.proto
            self.metadata = meta.from_onnx_props({p.key: p.value for p in self.proto.metadata_props})
            self._session = onnxruntime.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
            inputs = self._session.get_inputs()
            self.input_names = [i.name for i in inputs]
            self.num_inputs = len(inputs)
            if inputs and all(isinstance(d, int) for d in inputs[0].shape):
                self.input_shape = tuple(inputs[0].shape)
        elif self.format == "torchscript":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                self.artefact = torch.jit.load(str(self.path), map_location="cpu", _extra_files=extra)
            self.num_inputs = len(self.artefact.forward.schema.arguments) - 1
        else:
            self.artefact = torch.export.load(str(self.path), extra_files=extra)
            self.num_inputs = len(self.artefact.graph_signature.user_inputs)
            placeholders = [n for n in self.artefact.graph.nodes if n.op == "placeholder"]
            user = [n for n in placeholders if n.name in set(self.artefact.graph_signature.user_inputs)]
            if user and "val" in user[0].meta:
                self.input_shape = tuple(int(s) for s in user[0].meta["val"].shape)
            self._module = self.artefact.module()
        if self.format != "onnx":
            text = extra[meta.EXTRA_FILE]
            self.metadata = json.loads(text.decode() if isinstance(text, bytes) else text) if text else {}
        if self.input_shape is None and self.num_inputs == 1 and self.metadata.get("inputs"):
            self.input_shape = tuple(self.metadata["inputs"][0]["shape"])

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        if len(inputs) != self.num_inputs:
            raise ValueError(f"{self.path} takes {self.num_inputs} input(s), got {len(inputs)}")
        if self.format == "onnx":
            feed = {n: x.detach().cpu().float().numpy() for n, x in zip(self.input_names, inputs, strict=True)}
            return torch.from_numpy(self._session.run(None, feed)[0])
        with torch.no_grad():
            if self.format == "torchscript":
                return self.artefact(*inputs)
            return self._module(*inputs)


def render(path: str | os.PathLike, z: torch.Tensor | None = None) -> torch.Tensor:
    """Run an exported model: the image (1, C, H, W) float32.

    Args:
        path: a .onnx (run with onnxruntime), .pt (TorchScript) or .pt2 (torch.export) file.
            TorchScript and .pt2 files are code: render only models you trust.
        z: the code for a model exported with ``input_z=True`` (required then; must be None
            for a model with z baked in).
    """
    model = LoadedModel(path)
    if model.num_inputs == 0:
        if z is not None:
            raise ValueError(f"{path} has z baked in and takes no input; do not pass z")
        return model()
    if z is None:
        shape = f" of shape {model.input_shape}" if model.input_shape else ""
        raise ValueError(f"{path} takes the code z as input (exported with input_z=True); pass z{shape} "
                         "(dip render: --z Z.npy, as written by dip export --save-z)")
    z = _check_z(z)
    if model.input_shape is not None and tuple(z.shape) != model.input_shape:
        raise ValueError(f"{path} expects z of shape {model.input_shape}, got {tuple(z.shape)}")
    return model(z)


# --------------------------------------------------------------------------------------------
# export with verification
# --------------------------------------------------------------------------------------------

def _targets(onnx, torchscript, pt2) -> dict[str, Path]:
    targets = {}
    for fmt, value in (("onnx", onnx), ("torchscript", torchscript), ("pt2", pt2)):
        if value is None:
            continue
        path = Path(value)
        if path.is_dir():
            raise ValueError(f"{fmt} output {str(path)!r} is a directory; give a file name")
        if not path.parent.is_dir():
            raise ValueError(f"{fmt} output folder {str(path.parent)!r} does not exist; create it first")
        targets[fmt] = path
    if not targets:
        raise ValueError("no output given: pass at least one of onnx=, torchscript=, pt2=")
    if len(set(targets.values())) != len(targets):
        raise ValueError(f"output paths must differ, got {[str(p) for p in targets.values()]}")
    for fmt in targets:
        meta.require_format(fmt)
    return targets


def _write_and_verify(module: nn.Module, example: tuple[torch.Tensor, ...], targets: dict[str, Path],
                      cases: list[tuple[tuple[torch.Tensor, ...], torch.Tensor]], tolerance: float,
                      names: tuple[list[str], str], record: dict[str, Any],
                      ) -> tuple[dict[str, float], dict[str, list[Path]]]:
    """Write every target with the metadata ``record``, load each back, compare with the
    references; remove all on failure.

    ``names``: (ONNX input names, ONNX output name)."""
    written: list[Path] = []
    extra: dict[str, list[Path]] = {}
    diffs: dict[str, float] = {}
    try:
        program = None
        if "pt2" in targets or "onnx" in targets:
            program = _exported_program(module, example)
        for fmt, path in targets.items():
            written.append(path)
            if fmt == "torchscript":
                _write_torchscript(module, example, path, record)
            elif fmt == "pt2":
                torch.export.save(program, str(path), extra_files=meta.extra_files(record))
            else:
                external = _model_bytes(module) > ONNX_SINGLE_FILE_LIMIT
                data_file = path.with_name(path.name + ".data")
                _write_onnx(program, example, path, names, external, record)
                if data_file.exists():
                    written.append(data_file)
                    extra["onnx"] = [data_file]
            loaded = LoadedModel(path)
            _require_standard(fmt, path, loaded.artefact)
            if fmt == "onnx":
                meta.require("onnx", "ONNX export").checker.check_model(str(path), full_check=True)
            if loaded.metadata != record:
                raise ExportError(f"{path}: the metadata read back differ from those written")
            worst = 0.0
            for inputs, reference in cases:
                out = loaded(*inputs)
                if tuple(out.shape) != tuple(reference.shape):
                    raise ExportError(f"{path}: output shape {tuple(out.shape)} differs from the eager "
                                      f"output's {tuple(reference.shape)}")
                worst = max(worst, float((out.float() - reference).abs().max()))
            diffs[fmt] = worst
            log.info("%s: %s max |diff| %.3g", fmt, path, worst)
            if not worst <= tolerance:
                raise ExportError(f"{path}: the exported {fmt} model differs from the eager output by up to "
                                  f"{worst:.3g} (tolerance {tolerance:g}); nothing was kept")
    except BaseException:
        for p in written:
            try:
                p.unlink()
            except FileNotFoundError:
                pass
        raise
    return diffs, extra


def _value_range(generator: nn.Module) -> tuple[float, float] | None:
    """(0, 1) for a generator that ends with a sigmoid (``config["need_sigmoid"]``, or a last
    module that is an ``nn.Sigmoid``), else None."""
    config = getattr(generator, "config", None)
    if isinstance(config, dict) and "need_sigmoid" in config:
        return (0.0, 1.0) if config["need_sigmoid"] else None
    last = list(generator.modules())[-1]
    return (0.0, 1.0) if isinstance(last, nn.Sigmoid) else None


def _image_difference(image: torch.Tensor | None, reference: torch.Tensor) -> float | None:
    if image is None:
        return None
    image = image.detach().cpu().float()
    if image.dim() == 3:
        image = image[None]
    if tuple(image.shape) != tuple(reference.shape):
        raise ValueError(f"image has shape {tuple(image.shape)} but the generator renders "
                         f"{tuple(reference.shape)} (check crop)")
    return float((reference - image).abs().max())


def returned_image_is_average(image: torch.Tensor | None, image_plain: torch.Tensor | None,
                              image_avg: torch.Tensor | None, *, returned_step: int | None = None,
                              steps_run: int | None = None) -> bool | None:
    """Whether a fit's returned ``image`` is the average of its outputs rather than G(z).

    Decided from what the fit recorded, not from its configuration: no averaged output
    (``image_avg`` None) means no; otherwise the image is the average unless it is exactly
    ``image_plain`` at the last step (fits shorter than the averaging warm-up return the plain
    output even with averaging on).  With automatic stopping (``returned_step`` before
    ``steps_run``) the held image is the average whenever averaging ran.  None when ``image``
    is None.  Images are (1, C, H, W) float32.
    """
    if image is None:
        return None
    if image_avg is None:
        return False
    at_last_step = returned_step is None or steps_run is None or int(returned_step) == int(steps_run)
    if at_last_step and image_plain is not None and torch.equal(image.cpu(), image_plain.cpu()):
        return False
    return True


def export(generator: nn.Module, z: torch.Tensor, *, onnx: str | os.PathLike | None = None,
           torchscript: str | os.PathLike | None = None, pt2: str | os.PathLike | None = None,
           input_z: bool = False, crop: Crop | None = None, image: torch.Tensor | None = None,
           image_is_average: bool | None = None, recipe: str | None = None,
           tolerance: float = TOLERANCE) -> ExportReport:
    """Export a fitted generator and verify every file written.

    Args:
        generator: the fitted generator (``FitResult.generator`` with ``returned_state`` loaded,
            or any nn.Module); it is not modified.
        z: its code (1, D, h, w) (``FitResult.z``).
        onnx, torchscript, pt2: output paths (.onnx, .pt, .pt2); at least one.  ONNX is one
            file unless the weights exceed ``ONNX_SINGLE_FILE_LIMIT`` bytes.
        input_z: the models take z as input and BatchNorm uses batch statistics; default: no
            inputs, z and its BatchNorm statistics frozen in.
        crop: (top, left, height, width) of the image in the generator's output
            (``FitResult.crop``), or None for the whole output.
        image: the image the fit returned (1, C, H, W); the report gives the largest difference
            between it and the generator's image (non-zero when the fit returned an average).
        image_is_average: whether ``image`` is an average of the fit's outputs (see
            :func:`returned_image_is_average`); the report then says that the exported model
            renders G(z), not the written image.  None: unknown.
        recipe: the recipe's name, recorded in the models' metadata.
        tolerance: largest accepted max |difference| between each artefact and the eager
            training-mode output.

    Returns:
        :class:`ExportReport`.

    Raises:
        ValueError / TypeError: bad arguments (no output, bad crop, bad z).
        MissingDependencyError: a package the format needs is not installed (one-line message).
        ExportError: an artefact differs by more than ``tolerance`` or contains non-standard
            operators; the files written by this call are removed.
    """
    targets = _targets(onnx, torchscript, pt2)
    z = _check_z(z)
    module = prepare(generator, z, input_z=input_z, crop=crop)
    box: Crop | None = module.crop.box  # type: ignore[union-attr,assignment]
    reference = _Crop(box)(train_mode_output(generator, z))
    cases: list[tuple[tuple[torch.Tensor, ...], torch.Tensor]] = [((), reference)]
    example: tuple[torch.Tensor, ...] = ()
    names: tuple[list[str], str] = ([], "image")
    if input_z:
        other = z.flip(-1, -2).contiguous()
        cases = [((z,), reference), ((other,), _Crop(box)(train_mode_output(generator, other)))]
        example, names = (z,), (["z"], "image")
    image_diff = _image_difference(image, reference)
    record = meta.build(inputs=[("z", tuple(z.shape))] if input_z else [], output=("image", tuple(reference.shape)),
                        z_shape=tuple(z.shape), crop=box, input_z=input_z, value_range=_value_range(generator),
                        recipe=recipe, image_is_average=image_is_average if image is not None else None)
    diffs, extra = _write_and_verify(module, example, targets, cases, tolerance, names, record)
    report = ExportReport(paths=targets, max_abs_diff=diffs, image_diff=image_diff, input_z=input_z,
                          output_shape=tuple(reference.shape), tolerance=tolerance, extra_files=extra,
                          image_is_average=record["image_is_average"], metadata=record)
    note = report.average_note()
    if note is not None:
        log.info("%s", note)
    return report


def export_checkpoint(checkpoint: str | os.PathLike, *, onnx: str | os.PathLike | None = None,
                      torchscript: str | os.PathLike | None = None, pt2: str | os.PathLike | None = None,
                      input_z: bool = False, tolerance: float = TOLERANCE) -> ExportReport:
    """Export the generator saved in a checkpoint file (see :mod:`dip.checkpoint`).

    Same as :func:`export_payload` on ``dip.checkpoint.load(checkpoint)``.

    Raises:
        dip.checkpoint.CheckpointError: not a dip checkpoint / unknown version / missing fields.
        FileNotFoundError, ValueError, ExportError: as for :func:`export`.
    """
    from dip import checkpoint as ckpt

    _targets(onnx, torchscript, pt2)  # check the outputs before reading a large file
    return export_payload(ckpt.load(checkpoint), onnx=onnx, torchscript=torchscript, pt2=pt2,
                          input_z=input_z, tolerance=tolerance, source=checkpoint)


def export_payload(payload: dict, *, onnx: str | os.PathLike | None = None,
                   torchscript: str | os.PathLike | None = None, pt2: str | os.PathLike | None = None,
                   input_z: bool = False, tolerance: float = TOLERANCE, source=None) -> ExportReport:
    """Export the generator of a loaded checkpoint payload.

    Uses the parameters of the step whose image the fit returned (``returned.state``; the
    final weights when absent), the saved code z and crop, and reports the difference to the
    returned image (``returned.image``), saying whether that image was an average of the fit's
    outputs (:func:`returned_image_is_average` on the ``fit`` section's ``image_plain`` and
    ``image_avg``).  ``source`` names the checkpoint in error messages.
    """
    from dip import checkpoint as ckpt

    ckpt.require(payload, "generator.config", "z", path=source)
    generator = generator_from_payload(payload, path=source)
    returned = payload.get("returned") or {}
    fit = payload.get("fit") or {}
    averaged = returned_image_is_average(returned.get("image"), fit.get("image_plain"), fit.get("image_avg"),
                                         returned_step=returned.get("step"), steps_run=fit.get("steps_run"))
    recipe = payload.get("recipe")
    return export(generator, payload["z"], onnx=onnx, torchscript=torchscript, pt2=pt2, input_z=input_z,
                  crop=payload.get("crop"), image=returned.get("image"), image_is_average=averaged,
                  recipe=recipe.get("name") if isinstance(recipe, dict) else None, tolerance=tolerance)


def generator_from_payload(payload: dict, *, path=None) -> nn.Module:
    """Rebuild the checkpoint's generator with the weights of the returned step."""
    import dip.models
    from dip import checkpoint as ckpt

    config = dict(payload["generator"]["config"])
    try:
        generator = dip.models.build(**config)
    except (TypeError, ValueError) as exc:
        raise ckpt.CheckpointError(f"{path}: cannot rebuild the generator from its configuration "
                                   f"{config}: {exc}") from None
    returned = payload.get("returned") or {}
    state = returned.get("state") or payload["generator"].get("state")
    if state is None:
        raise ckpt.CheckpointError(f"{path}: checkpoint holds no generator weights")
    try:
        generator.load_state_dict(state)
    except RuntimeError as exc:
        raise ckpt.CheckpointError(f"{path}: the saved weights do not fit the generator: {exc}") from None
    return generator


# --------------------------------------------------------------------------------------------
# degradation operators
# --------------------------------------------------------------------------------------------

class DownsampleGraph(nn.Module):
    """``dip.physics.Downsample`` with standard operators only (padding + two depthwise
    convolutions with fixed taps, the pure-PyTorch reference): (N, C, H, W) -> (N, C, h, w)."""

    def __init__(self, op: nn.Module):
        super().__init__()
        self.op = copy.deepcopy(op).float().cpu()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op.forward_standard(x)  # type: ignore[operator]


def _standard_operator(op: nn.Module) -> nn.Module:
    from dip import physics

    if isinstance(op, physics.Downsample):
        return DownsampleGraph(op)
    if isinstance(op, (physics.Identity, physics.Mask)):
        return copy.deepcopy(op).float().cpu().eval()
    raise TypeError(f"cannot export operator {type(op).__name__}; supported: Downsample, Mask, Identity")


def export_operator(op: nn.Module, example: torch.Tensor, *, onnx: str | os.PathLike | None = None,
                    torchscript: str | os.PathLike | None = None, pt2: str | os.PathLike | None = None,
                    tolerance: float = TOLERANCE) -> ExportReport:
    """Export a degradation operator (``dip.physics.Downsample``, ``Mask``, ``Identity``) for
    inputs of ``example``'s shape (N, C, H, W), verified against the eager operator.

    The model's input is named ``x`` and its output ``y``; Downsample becomes padding plus
    depthwise convolutions with fixed weights.
    """
    targets = _targets(onnx, torchscript, pt2)
    if not isinstance(example, torch.Tensor) or example.dim() != 4:
        raise ValueError(f"example must be an (N, C, H, W) tensor, got "
                         f"{tuple(example.shape) if isinstance(example, torch.Tensor) else type(example).__name__}")
    example = example.detach().to(device="cpu", dtype=torch.float32).contiguous()
    module = _standard_operator(op)
    with torch.no_grad():
        reference = op.to("cpu")(example).float()
        other = torch.rand(example.shape, generator=torch.Generator().manual_seed(0))
        reference_other = op(other).float()
    record = meta.build(kind="operator", inputs=[("x", tuple(example.shape))], output=("y", tuple(reference.shape)),
                        z_shape=None, crop=None, input_z=False, value_range=None)
    diffs, extra = _write_and_verify(module, (example,), targets,
                                     [((example,), reference), ((other,), reference_other)], tolerance,
                                     (["x"], "y"), record)
    return ExportReport(paths=targets, max_abs_diff=diffs, image_diff=None, input_z=True,
                        output_shape=tuple(reference.shape), tolerance=tolerance, extra_files=extra,
                        metadata=record)


# --------------------------------------------------------------------------------------------
# command-line hooks (`dip export`, `dip render`)
# --------------------------------------------------------------------------------------------

def add_export_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``dip export CKPT [--onnx F] [--torchscript F] [--pt2 F] [--input-z]``."""
    parser.add_argument("checkpoint", help="checkpoint written by a fit command's --checkpoint")
    parser.add_argument("--onnx", metavar="FILE", help="write an ONNX model (.onnx), run by onnxruntime")
    parser.add_argument("--torchscript", metavar="FILE", help="write a TorchScript model (.pt)")
    parser.add_argument("--pt2", metavar="FILE", help="write a torch.export program (.pt2)")
    parser.add_argument("--input-z", action="store_true",
                        help="make the code z the model's input (BatchNorm then uses batch statistics, so "
                             "another z renders correctly); default: no inputs, z baked in")
    parser.add_argument("--save-z", metavar="Z.npy",
                        help="also write the fit's code z as a float32 .npy file (the input of an --input-z "
                             "model: dip render MODEL --z Z.npy)")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE,
                        help=f"largest accepted difference to the eager output (default {TOLERANCE:g})")
    return parser


def run_export(args: argparse.Namespace) -> int:
    """Run ``dip export``: 0 on success, 2 for bad input (no format, unreadable checkpoint),
    1 when verification fails.  Writes the report to stdout and errors to stderr."""
    from dip import checkpoint

    if not (args.onnx or args.torchscript or args.pt2):
        print("dip export: give at least one output: --onnx FILE, --torchscript FILE or --pt2 FILE",
              file=sys.stderr)
        return 2
    for flag, value, suffix in (("--onnx", args.onnx, ".onnx"), ("--torchscript", args.torchscript, ".pt"),
                                ("--pt2", args.pt2, ".pt2")):
        if value and Path(value).suffix.lower() != suffix:
            print(f"dip export: {flag} {value}: the file name must end in {suffix}", file=sys.stderr)
            return 2
    if args.save_z and Path(args.save_z).suffix.lower() != ".npy":
        print(f"dip export: --save-z {args.save_z}: the file name must end in .npy", file=sys.stderr)
        return 2
    try:
        payload = checkpoint.load(args.checkpoint)
        report = export_payload(payload, onnx=args.onnx, torchscript=args.torchscript, pt2=args.pt2,
                                input_z=args.input_z, tolerance=args.tolerance, source=args.checkpoint)
        if args.save_z:
            np.save(args.save_z, payload["z"].numpy().astype(np.float32), allow_pickle=False)
    except (checkpoint.CheckpointError, FileNotFoundError, ValueError, TypeError, OSError,
            MissingDependencyError) as exc:
        print(f"dip export: {exc}", file=sys.stderr)
        return 2
    except ExportError as exc:
        print(f"dip export: verification failed: {exc}", file=sys.stderr)
        return 1
    for line in report.lines():
        print(line)
    if args.save_z:
        print(f"z: {args.save_z} ({'x'.join(str(d) for d in payload['z'].shape)} float32)")
    return 0


def add_render_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``dip render MODEL.onnx|.pt|.pt2 -o OUT.png [--z Z.npy]``."""
    parser.add_argument("model", help="exported model: .onnx (onnxruntime), .pt (TorchScript) or .pt2 "
                                      "(torch.export). .pt and .pt2 files are code: render only models you trust")
    parser.add_argument("-o", "--output", required=True, help="image to write (.png, .tif, .jpg, ...)")
    parser.add_argument("--z", metavar="Z.npy", help="code for a model exported with --input-z: a float32 "
                                                     ".npy array of the model's input shape")
    parser.add_argument("--bit-depth", type=int, choices=(8, 16), default=8, help="bits per sample (default 8)")
    return parser


def _load_code(path: str) -> torch.Tensor:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"--z {path}: not a readable .npy array ({exc})") from None
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"--z {path}: expected a float array, got dtype {array.dtype}")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def run_render(args: argparse.Namespace) -> int:
    """Run ``dip render``: 0 on success, 2 for bad input.  TorchScript (.pt) and .pt2 files
    are code; render only models you trust."""
    from dip.io import ImageError, write_image

    try:
        z = _load_code(args.z) if args.z else None
        image = render(args.model, z)
        if image.dim() != 4 or image.shape[0] != 1 or image.shape[1] not in (1, 3):
            raise ValueError(f"{args.model} outputs shape {tuple(image.shape)}, not an image (1, 1|3, H, W)")
        written = write_image(args.output, image[0].clamp(0, 1), bit_depth=args.bit_depth)
    except (ImageError, FileNotFoundError, ValueError, TypeError, MissingDependencyError) as exc:
        print(f"dip render: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a model file that onnxruntime / torch cannot load
        print(f"dip render: cannot run {args.model}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {written} ({image.shape[-1]}x{image.shape[-2]})")
    return 0


__all__ = ["TOLERANCE", "ExportError", "ExportReport", "export", "export_checkpoint", "export_payload",
           "export_operator",
           "prepare", "returned_image_is_average", "MissingDependencyError",
           "freeze_batch_statistics", "use_batch_statistics", "train_mode_output",
           "nonstandard_ops", "LoadedModel", "render", "format_of", "generator_from_payload",
           "RenderImage", "RenderFromCode", "DownsampleGraph",
           "add_export_arguments", "run_export", "add_render_arguments", "run_render"]
