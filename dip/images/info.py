"""``ImageInfo``: what reading an image learned about its file, enough to write a result back in its form."""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclasses.dataclass
class ImageInfo:
    """What ``read_image`` learned about a file, enough to write a result back in its form.

    mode: channel layout of the pixels as returned plus alpha: "L", "LA", "RGB" or "RGBA".
    bit_depth: 8 or 16 bits per sample.
    alpha: the alpha plane, float32 tensor (1, H, W) in [0, 1] (exact: round(alpha * max) gives
        the stored integers back), or None.
    icc_profile: raw ICC profile bytes or None.
    exif: raw EXIF bytes (orientation reset to 1 when it was applied) or None; carried from and
        to PNG, JPEG and WebP (not TIFF, whose tags describe the file itself).
    format: the file's format ("PNG", "JPEG", "TIFF", "BMP", "WEBP").
    size: (height, width) of the image after EXIF orientation, in pixels.
    source_mode: Pillow's mode of the file as opened ("P", "I;16", "1", "CMYK", ...), for the record.
    """

    mode: str
    bit_depth: int
    alpha: torch.Tensor | None = None
    icc_profile: bytes | None = None
    exif: bytes | None = None
    format: str | None = None
    size: tuple[int, int] | None = None
    source_mode: str | None = None

    @property
    def channels(self) -> int:
        """Number of colour channels (1 or 3), alpha excluded."""
        return 1 if self.mode in ("L", "LA") else 3

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (for checkpoints): alpha as a (1,H,W) float32 tensor or None,
        profile and EXIF as bytes or None."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageInfo:
        """Inverse of :meth:`to_dict`; unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        if kwargs.get("size") is not None:
            kwargs["size"] = tuple(int(s) for s in kwargs["size"])
        return cls(**kwargs)
