"""Free disk space against what a run will write, checked before the fit: ``check_free_space``.

The sizes are upper bounds, rough on purpose: an image is at most its raw samples (PNG's
worst case is about that plus its headers), a checkpoint at most three times the generator's
weights and Adam's two moments plus the observation, code and averaged output, the report a
line per step, the plot a couple of MiB, the frames one 8-bit image each.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from dip.cli.errors import UsageError
from dip.cli.memory import format_bytes

#: a checkpoint holds the weights and Adam's two moments (3 fp32 copies); allow 3x that
CHECKPOINT_FACTOR = 3
#: bytes a report needs per step (the loss history) and for the rest
REPORT_BYTES_PER_STEP = 100
REPORT_BYTES = 64 * 1024
PLOT_BYTES = 2 * 1024 * 1024
#: headers, metadata and incompressible worst cases of an image file
IMAGE_OVERHEAD = 64 * 1024


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a run will write: sizes of the restored image (``out_hw``, ``channels``, ``bits``),
    the generator's ``params``, the fit's ``steps`` and ``padded_hw``, and the files."""

    out_hw: tuple[int, int]
    channels: int
    bits: int
    params: int
    steps: int
    padded_hw: tuple[int, int]
    output: Path
    report: Path | None = None
    plot: Path | None = None
    checkpoint: Path | None = None
    frames: Path | None = None
    save_every: int | None = None


def image_bytes(out_hw: tuple[int, int], channels: int, bits: int) -> int:
    """Upper bound of an image file's size (bytes)."""
    raw = out_hw[0] * out_hw[1] * (channels + 1) * max(bits, 8) // 8  # + 1: a possible alpha plane
    return int(raw * 1.02) + IMAGE_OVERHEAD


def checkpoint_bytes(params: int, padded_hw: tuple[int, int], channels: int) -> int:
    """Upper bound of a checkpoint's size (bytes): weights and Adam state, observation, code, average."""
    pixels = padded_hw[0] * padded_hw[1]
    return CHECKPOINT_FACTOR * 3 * 4 * params + 4 * pixels * (4 * channels + 32) + IMAGE_OVERHEAD


def planned_bytes(plan: Plan) -> list[tuple[Path, int]]:
    """(folder, bytes) for every file the run will write."""
    folder = _folder
    out = [(folder(plan.output), image_bytes(plan.out_hw, plan.channels, plan.bits))]
    if plan.report is not None:
        out.append((folder(plan.report), REPORT_BYTES + REPORT_BYTES_PER_STEP * plan.steps))
    if plan.plot is not None:
        out.append((folder(plan.plot), PLOT_BYTES))
    if plan.checkpoint is not None:
        out.append((folder(plan.checkpoint), checkpoint_bytes(plan.params, plan.padded_hw, plan.channels)))
    if plan.frames is not None and plan.save_every:
        where = plan.frames if plan.frames.is_dir() else folder(plan.frames)
        out.append((where, (plan.steps // plan.save_every) * image_bytes(plan.out_hw, plan.channels, 8)))
    return out


def free_bytes(folder: Path) -> int | None:
    """Bytes an unprivileged user may still write on ``folder``'s file system (None: unknown)."""
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return None
    return int(st.f_bavail * st.f_frsize)


def check_free_space(plan: Plan) -> None:
    """UsageError when a file system holding an output has less free space than the run needs."""
    need: dict[int, list] = {}
    for folder, size in planned_bytes(plan):
        try:
            device = os.stat(folder).st_dev
        except OSError:
            continue
        entry = need.setdefault(device, [folder, 0])
        entry[1] += size
    for folder, size in need.values():
        free = free_bytes(folder)
        if free is not None and size > free:
            raise UsageError(f"not enough free disk space in {folder}: the outputs need about {format_bytes(size)}, "
                             f"{format_bytes(free)} is free", "free some space, or write the outputs to another disk")


def _folder(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")
