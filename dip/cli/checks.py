"""The checks a fit command and ``dip resume`` make before fitting, each written once.

Every function raises ``UsageError`` (exit code 2: what is wrong, what to do) and writes
nothing; ``check_outputs`` validates every file a run will write before any is written.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

from dip.cli.errors import UsageError
from dip.cli.notes import input_notes

CHECKPOINT_SUFFIX = ".ckpt"


@dataclasses.dataclass
class Outputs:
    """The files (and the frames folder) a run will write, checked."""

    output: Path
    report: Path | None = None
    plot: Path | None = None
    #: the --checkpoint given on the command line, or None
    checkpoint: Path | None = None
    frames: Path | None = None


def _folder(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


def check_writable(folder: Path, what: str) -> None:
    """``folder`` takes new files (a temporary file is created and removed there)."""
    from dip.files import probe_folder

    try:
        probe_folder(folder)
    except OSError as exc:
        raise UsageError(f"{what}: cannot write in the folder {folder} ({exc.strerror or exc})",
                         "choose a folder you can write to") from None


def check_name_length(path: Path, what: str, hint: str = "choose a shorter name") -> None:
    """The file name of ``path`` is not longer than its file system allows."""
    from dip.files import name_fits

    fits, limit = name_fits(path)
    if not fits:
        raise UsageError(f"{what}: the file name {path.name[:40]}... is {len(os.fsencode(path.name))} bytes long, "
                         f"over the {limit} its file system allows", hint)


def check_not_input(output: Path, inputs: dict[str, str], what: str = "output") -> None:
    """The output is none of the input files (even with --force: it would destroy the input)."""
    for role, text in inputs.items():
        source = Path(text)
        same = output.resolve() == source.resolve()
        if not same and output.exists() and source.exists():
            same = os.path.samefile(output, source)
        if same:
            raise UsageError(f"{what} {output} is the {role} file; writing it would destroy the {role}",
                             "write the result to another file (--force does not change this)")


def check_output_path(path_text: str, what: str, force: bool, *, image: bool = False) -> Path:
    """Validate a file we are going to write: folder exists, not a directory, exists only with --force."""
    from dip import images

    path = Path(path_text)
    if image:
        try:
            images.format_for_path(path)
        except images.ImageError as exc:
            raise UsageError(f"{what} {path}: unsupported format {path.suffix or '(none)'!r}",
                             f"use one of {', '.join(sorted(set(images.SUPPORTED_SUFFIXES)))}") from exc
    folder = _folder(path)
    if not folder.is_dir():
        raise UsageError(f"{what} {path}: the folder {folder} does not exist", "create it first or choose another path")
    check_name_length(path, what)
    if path.is_dir():
        raise UsageError(f"{what} {path} is a directory", "give a file name")
    if path.exists() and not force:
        raise UsageError(f"{what} {path} already exists", "use --force to overwrite it or choose another name")
    check_writable(folder, f"{what} {path}")
    return path


FRAME_PATTERN = "step_*.png"


def check_frames(save_every: int | None, frames_text: str | None, force: bool = False) -> Path | None:
    """--save-every N and --frames DIR come together; the folder exists, or its parent does;
    either can be written to; frames of an earlier run (``step_*.png``) are kept unless ``force``."""
    if save_every is not None and frames_text is None:
        raise UsageError("--save-every needs --frames DIR", "add --frames FOLDER for the intermediate images")
    if frames_text is not None and save_every is None:
        raise UsageError("--frames needs --save-every N", "add --save-every N (e.g. 100)")
    if frames_text is None:
        return None
    frames = Path(frames_text)
    if frames.exists() and not frames.is_dir():
        raise UsageError(f"--frames {frames} is a file, not a folder", "give a folder name")
    if not frames.exists() and not _folder(frames).is_dir():
        raise UsageError(f"--frames {frames}: its parent folder does not exist", "create it first")
    check_writable(frames if frames.is_dir() else _folder(frames), f"--frames {frames}")
    if frames.is_dir() and not force:
        earlier = sorted(frames.glob(FRAME_PATTERN))
        if earlier:
            raise UsageError(f"--frames {frames} already holds {len(earlier)} frames ({earlier[0].name}, ...)",
                             "use --force to overwrite them or choose another folder")
    return frames


def check_outputs(args, output_text: str, *, output_force: bool, checkpoint_force: bool) -> Outputs:
    """The output image (-o), --bit-depth against its format, --report, --plot (a PNG),
    --checkpoint and --save-every/--frames of parsed ``args``; no two may name one file.

    ``output_force`` / ``checkpoint_force``: whether the output image / the --checkpoint file
    may already exist (--force, or for ``dip resume`` the files it continues).
    """
    from dip import images

    force = bool(args.force)
    frames = check_frames(args.save_every, args.frames, force)
    output = check_output_path(output_text, "output", output_force, image=True)
    if args.bit_depth == 16 and images.format_for_path(output) not in ("PNG", "TIFF"):
        raise UsageError(f"--bit-depth 16: {output.suffix} files hold 8 bits per sample", "write a .png or .tif")
    report = check_output_path(args.report, "report", force) if args.report else None
    plot = check_output_path(args.plot, "plot", force) if args.plot else None
    if plot is not None and plot.suffix.lower() != ".png":
        raise UsageError(f"plot {plot}: the plot is written as PNG", "give it a .png name")
    checkpoint = check_output_path(args.checkpoint, "checkpoint", checkpoint_force) if args.checkpoint else None
    named = [p for p in (output, report, plot, checkpoint) if p is not None]
    if len({p.resolve() for p in named}) != len(named):
        raise UsageError("two outputs (-o, --report, --plot, --checkpoint) name the same file",
                         "give each its own name")
    return Outputs(output=output, report=report, plot=plot, checkpoint=checkpoint, frames=frames)


def implicit_checkpoint(output: Path, force: bool) -> Path:
    """OUT.ckpt: where a checkpoint goes when --checkpoint is not given. It must not silently
    replace the checkpoint of an earlier, interrupted fit of the same output."""
    path = output.with_name(output.name + CHECKPOINT_SUFFIX)
    check_name_length(path, "the checkpoint (written if the fit is interrupted)",
                      "choose a shorter output name, or give --checkpoint FILE")
    if path.exists() and not force:
        raise UsageError(f"{path} exists (the checkpoint of an earlier fit of {output.name}?)",
                         f"continue that fit with 'dip resume {path}', or add --force to start afresh")
    return path


def read_image_arg(path: str, what: str):
    """``dip.images.read_image(path)``; a bad file is a UsageError naming the option ``what``;
    a conversion on reading (CMYK, palette transparency, animation) is a note on stderr."""
    from dip import images

    try:
        image, info = images.read_image(path)
    except images.ImageError as exc:
        raise UsageError(f"{what}: {exc}") from None
    for note in input_notes(path, info):  # shown even with --quiet, like the notes on writing
        sys.stderr.write(f"dip: note: {what} {path}: {note}\n")
    return image, info


def read_ground_truth(path: str, out_hw: tuple[int, int], channels: int):
    """The --gt image (C, H, W), which must have the restored image's size ``out_hw``, with
    ``channels`` channels (grey <-> colour converted)."""
    gt, _ = read_image_arg(path, "--gt")
    if tuple(gt.shape[-2:]) != tuple(out_hw):
        raise UsageError(f"the ground truth is {hw(gt)} but the restored image will be {out_hw[1]}x{out_hw[0]}",
                         "give the ground truth at the output size")
    return match_channels(gt, channels)


def resolve_precision(requested: str, device: str, task: str) -> tuple[str, str]:
    """--precision auto|fp32|bf16 as the precision the fit runs at, and why
    (``dip.runtime.choose_precision``)."""
    from dip.runtime import choose_precision

    return choose_precision(requested, device, task)


def resolve_device(requested: str) -> str:
    """--device cpu|cuda|auto as the device to fit on; cuda must be available."""
    import torch

    if requested == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("--device cuda: CUDA is not available on this machine",
                             "use --device cpu (or auto)")
        return "cuda"
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cpu"


def apply_threads(threads: int | None) -> int:
    """--threads N: torch's intra-op threads for this process (at most the CPUs available);
    returns the thread count the fit will use."""
    import torch

    from dip.cli.argtypes import available_cpus

    if threads is not None:
        torch.set_num_threads(max(1, min(int(threads), available_cpus())))
    return int(torch.get_num_threads())


def hw(t) -> str:
    """``WxH`` of a (..., H, W) tensor."""
    return f"{int(t.shape[-1])}x{int(t.shape[-2])}"


def match_channels(img, channels: int):
    """Grey <-> colour so a companion image matches the main one (luma for colour -> grey)."""
    if img.shape[0] == channels:
        return img
    if channels == 1:
        weights = img.new_tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
        return (img * weights).sum(0, keepdim=True)
    return img.expand(3, -1, -1).contiguous()
