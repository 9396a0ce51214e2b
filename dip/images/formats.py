"""What ``dip.images`` reads and writes: file suffixes, formats, and its error and warning types."""
from __future__ import annotations

import os
from pathlib import Path

#: file suffix -> format name (Pillow's names)
SUPPORTED_SUFFIXES = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".bmp": "BMP",
    ".webp": "WEBP",
}
#: formats that can store 16 bits per sample
FORMATS_16BIT = {"PNG", "TIFF"}
#: formats that can store an alpha channel
FORMATS_ALPHA = {"PNG", "TIFF", "WEBP"}
#: number of samples per pixel -> channel layout
LAYOUTS = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


class ImageError(ValueError):
    """A file cannot be used as an image: missing, unreadable, not an image, truncated, empty,
    or of a pixel format that is not supported. The message says which and what to do."""


class ImageWarning(UserWarning):
    """Something was changed on writing (bit depth reduced, alpha dropped) because the output
    format cannot hold it."""


def format_for_path(path: str | os.PathLike) -> str:
    """Format name for a file name's suffix; ImageError for an unsupported suffix."""
    suffix = Path(path).suffix.lower()
    try:
        return SUPPORTED_SUFFIXES[suffix]
    except KeyError:
        raise ImageError(
            f"{os.fspath(path)}: unsupported image format {suffix or '(no suffix)'!r}; "
            f"use one of {', '.join(sorted(set(SUPPORTED_SUFFIXES)))}"
        ) from None


def layout_for_channels(c: int) -> str:
    """Channel layout ("L", "LA", "RGB", "RGBA") of pixels with ``c`` samples (1..4)."""
    return LAYOUTS[c]
