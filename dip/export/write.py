"""Writing every format with its metadata record, and verifying each file against the eager output."""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dip.export import metadata as meta
from dip.export.load import LoadedModel
from dip.export.prepare import ExportError
from dip.export.scan import _require_standard

log = logging.getLogger(__name__)

#: largest accepted max |exported - eager| difference
TOLERANCE = 1e-4
#: ONNX models whose weights exceed this many bytes are written with external data
#: (protobuf files are limited to 2 GiB)
ONNX_SINGLE_FILE_LIMIT = 1_800_000_000


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
