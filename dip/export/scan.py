"""Graph scans: the operators of a loaded artefact that are not standard."""
from __future__ import annotations

import operator as _operator
import sys
from pathlib import Path

import torch

from dip.export.prepare import ExportError

_STANDARD_ONNX_DOMAINS = ("", "ai.onnx")
_STANDARD_TORCH_NAMESPACES = {"torchscript": ("aten", "prim"), "pt2": ("aten",)}


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
