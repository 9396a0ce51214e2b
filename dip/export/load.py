"""Loading and running exported artefacts (shared by verification and ``dip render``)."""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from dip.export import metadata as meta
from dip.export.prepare import _check_z

FORMATS = ("onnx", "torchscript", "pt2")
#: a model file's suffix -> its format
SUFFIXES = {".onnx": "onnx", ".pt": "torchscript", ".pt2": "pt2"}


def format_of(path: str | os.PathLike) -> str:
    """Format name of a model file from its suffix: .onnx -> "onnx", .pt -> "torchscript",
    .pt2 -> "pt2"; ValueError otherwise."""
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"{path}: unknown model format {suffix or '(no suffix)'!r}; "
                         "use .onnx (ONNX), .pt (TorchScript) or .pt2 (torch.export)")
    return SUFFIXES[suffix]


class LoadedModel:
    """An exported model loaded for inference: ``model(*inputs) -> (N, C, H, W) float32 tensor``.

    ``num_inputs`` is 0 for a model with z baked in, 1 for an ``input_z`` model; ``input_shape``
    is the shape the input must have (None when unknown); ``metadata`` is the record the model
    carries (see :mod:`dip.export.metadata`; {} for a model without one).
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
