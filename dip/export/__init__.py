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
TorchScript and .pt2 archives; see :mod:`dip.export.metadata`.

onnx, onnxscript and onnxruntime are ordinary dependencies of dip; when one is missing, ONNX
export and render fail with :class:`~dip.export.metadata.MissingDependencyError`, one line that
names the package to install.

The models render G(z).  A fit that averaged its outputs (``exp_weight``, 100 steps or more)
wrote that average instead, which no generator reproduces: :class:`ExportReport` says so
(``image_is_average``, and a note in ``lines()`` with the largest difference).

Modules: ``prepare`` (the module to export), ``scan`` (non-standard operators), ``write``
(each format with its metadata, and verification), ``load`` (running artefacts, ``render``),
``generator`` (``export`` and its report, from a module, checkpoint or payload), ``operators``
(degradation operators), ``metadata`` (the record and the optional-import check), ``command``
(``dip export`` / ``dip render``).  Everything public is importable from ``dip.export``.

Security: TorchScript (.pt) and torch.export (.pt2) files are code as much as data; load or
render only models you trust.  ONNX files are run by onnxruntime.
"""
from __future__ import annotations

from dip.export.command import add_export_arguments, add_render_arguments, run_export, run_render
from dip.export.generator import (
    ExportReport,
    export,
    export_checkpoint,
    export_payload,
    generator_from_payload,
    returned_image_is_average,
)
from dip.export.load import FORMATS, LoadedModel, format_of, render
from dip.export.metadata import MissingDependencyError
from dip.export.operators import DownsampleGraph, export_operator
from dip.export.prepare import (
    ExportError,
    RenderFromCode,
    RenderImage,
    freeze_batch_statistics,
    prepare,
    train_mode_output,
    use_batch_statistics,
)
from dip.export.scan import nonstandard_ops
from dip.export.write import TOLERANCE

__all__ = ["TOLERANCE", "FORMATS", "ExportError", "ExportReport", "export", "export_checkpoint", "export_payload",
           "export_operator", "prepare", "returned_image_is_average", "MissingDependencyError",
           "freeze_batch_statistics", "use_batch_statistics", "train_mode_output",
           "nonstandard_ops", "LoadedModel", "render", "format_of", "generator_from_payload",
           "RenderImage", "RenderFromCode", "DownsampleGraph",
           "add_export_arguments", "run_export", "add_render_arguments", "run_render"]
