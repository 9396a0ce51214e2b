"""Export of a fitted generator (from the module, a fit's checkpoint or its payload), with its report."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dip.export import metadata as meta
from dip.export.prepare import Crop, _check_z, _Crop, prepare, train_mode_output
from dip.export.write import TOLERANCE, _targets, _write_and_verify

log = logging.getLogger(__name__)


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
        metadata: the record written into every artefact (see :mod:`dip.export.metadata`).
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
