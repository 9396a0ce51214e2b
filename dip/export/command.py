"""Command-line hooks: ``dip export`` and ``dip render`` (argument definitions and runners)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from dip.export.generator import export_payload
from dip.export.load import FORMATS, SUFFIXES, format_of, render
from dip.export.metadata import MissingDependencyError
from dip.export.prepare import ExportError
from dip.export.write import TOLERANCE


def add_export_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``dip export CKPT [-o F ...] [--onnx F] [--torchscript F] [--pt2 F] [--input-z]``."""
    parser.add_argument("checkpoint", help="checkpoint written by a fit command's --checkpoint")
    parser.add_argument("-o", "--output", action="append", default=[], metavar="FILE",
                        help="write a model in the format its name ends in: .onnx (ONNX), .pt (TorchScript) "
                             "or .pt2 (torch.export); may be given once per format")
    parser.add_argument("--onnx", metavar="FILE", help="write an ONNX model (.onnx), run by onnxruntime")
    parser.add_argument("--torchscript", metavar="FILE", help="write a TorchScript model (.pt)")
    parser.add_argument("--pt2", metavar="FILE", help="write a torch.export program (.pt2)")
    parser.add_argument("--input-z", action="store_true",
                        help="make the code z the model's input (BatchNorm then uses batch statistics, so "
                             "another z renders correctly); default: no inputs, z baked in")
    parser.add_argument("--save-z", metavar="Z.npy",
                        help="also write the fit's code z as a float32 .npy file (the input of an --input-z "
                             "model: dip render MODEL --z Z.npy)")
    parser.add_argument("--member", type=int, metavar="K",
                        help="for the checkpoint of an ensemble (--ensemble): export member K (default 0); an "
                             "ensemble is K networks and its mean image is no single network's output")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE,
                        help=f"largest accepted difference to the eager output (default {TOLERANCE:g})")
    return parser


def _model_outputs(args: argparse.Namespace) -> tuple[dict[str, str], str | None]:
    """The model files to write, ``{"onnx" | "torchscript" | "pt2": path}``, from the format
    options and ``-o`` (format from the suffix, ``format_of``), or ``({}, problem)`` for the user."""
    chosen: dict[str, list[str]] = {key: [] for key in FORMATS}
    for suffix, key in SUFFIXES.items():  # --onnx, --torchscript, --pt2: the format by name
        value = getattr(args, key)
        if value and Path(value).suffix.lower() != suffix:
            return {}, f"--{key} {value}: the file name must end in {suffix}"
        chosen[key] += [value] if value else []
    for value in getattr(args, "output", None) or []:
        try:
            chosen[format_of(value)].append(value)
        except ValueError as exc:
            return {}, f"-o {exc}"
    for key, files in chosen.items():
        if len(files) > 1:
            return {}, f"{len(files)} {key} outputs ({', '.join(files)}): give one file per format"
    if not any(chosen.values()):
        return {}, ("give at least one output: -o FILE (.onnx, .pt or .pt2), --onnx FILE, --torchscript FILE "
                    "or --pt2 FILE")
    return {key: files[0] for key, files in chosen.items() if files}, None


def run_export(args: argparse.Namespace) -> int:
    """Run ``dip export``: 0 on success, 2 for bad input (no format, unreadable checkpoint),
    1 when verification fails.  Writes the report to stdout and errors to stderr."""
    from dip import checkpoint

    outputs, problem = _model_outputs(args)
    if problem:
        print(f"dip export: {problem}", file=sys.stderr)
        return 2
    if args.save_z and Path(args.save_z).suffix.lower() != ".npy":
        print(f"dip export: --save-z {args.save_z}: the file name must end in .npy", file=sys.stderr)
        return 2
    try:
        payload = checkpoint.load(args.checkpoint)
        members = len(payload["members"]) if payload.get("kind") == "ensemble" else None
        member = getattr(args, "member", None)
        payload = checkpoint.member_payload(payload, member, args.checkpoint)
        report = export_payload(payload, **outputs, input_z=args.input_z, tolerance=args.tolerance,
                                source=args.checkpoint)
        if args.save_z:
            np.save(args.save_z, payload["z"].numpy().astype(np.float32), allow_pickle=False)
    except (checkpoint.CheckpointError, FileNotFoundError, ValueError, TypeError, OSError,
            MissingDependencyError) as exc:
        print(f"dip export: {exc}", file=sys.stderr)
        return 2
    except ExportError as exc:
        print(f"dip export: verification failed: {exc}", file=sys.stderr)
        return 1
    if members is not None:
        print(f"dip export: {args.checkpoint} holds an ensemble of {members} networks; exported member "
              f"{member or 0} (--member K picks another)", file=sys.stderr)
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
    from dip.images import ImageError, write_image

    if Path(args.model).suffix.lower() == ".ckpt":
        print(f"dip render: {args.model} is a fit's checkpoint, not a model: export it first "
              f"(dip export {args.model} -o model.onnx), then render model.onnx", file=sys.stderr)
        return 2
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
