"""One-line notes about an input that was read in another form than its file holds:
``input_notes``.

Reading converts what a fit cannot take as it is (``dip.images.read_image``): a CMYK image
becomes RGB, a palette with a transparent colour becomes RGB with alpha, an animated image its
first frame. The command says so, as it does for alpha dropped on writing.
"""
from __future__ import annotations

from pathlib import Path


def frame_count(path: str | Path) -> int:
    """Frames of an animated image (GIF, APNG, WebP); 1 for a still one or when unknown."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            return int(getattr(im, "n_frames", 1)) if getattr(im, "is_animated", False) else 1
    except Exception:  # the file was read already; a note must not fail the command
        return 1


def input_notes(path: str | Path, info) -> list[str]:
    """What reading ``path`` changed, given the ``ImageInfo`` it returned (may be empty)."""
    notes = []
    source = (getattr(info, "source_mode", None) or "").split(";")[0]
    if source == "CMYK":
        notes.append("a CMYK image, converted to RGB (without colour management); the output is RGB")
    if source in ("P", "PA") and getattr(info, "alpha", None) is not None:
        notes.append("a palette image with a transparent colour, converted to RGB with an alpha channel")
    frames = frame_count(path)
    if frames > 1:
        notes.append(f"an animation of {frames} frames: only the first frame is restored")
    return notes
