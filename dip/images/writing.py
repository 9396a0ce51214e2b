"""Writing image files: ``write_image`` (a float (C, H, W) tensor in [0, 1], back in the form an
``ImageInfo`` describes), atomically through ``dip.files.atomic_write``.

16-bit colour PNG is encoded by ``dip.images.png``, 16-bit TIFF by tifffile, the rest by
Pillow. What a format cannot hold (16 bits, alpha) is dropped with an ``ImageWarning``.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dip.files import atomic_write
from dip.images import png
from dip.images.formats import (
    FORMATS_16BIT,
    FORMATS_ALPHA,
    ImageError,
    ImageWarning,
    format_for_path,
    layout_for_channels,
)
from dip.images.info import ImageInfo

__all__ = ["write_image"]


def _to_numpy_image(tensor: torch.Tensor) -> np.ndarray:
    t = tensor.detach()
    if t.dim() == 4:
        if t.shape[0] != 1:
            raise ValueError(f"write_image takes one image, got a batch of {t.shape[0]}")
        t = t[0]
    if t.dim() == 2:
        t = t[None]
    if t.dim() != 3 or t.shape[0] not in (1, 3):
        raise ValueError(
            f"write_image needs a tensor (C,H,W) or (1,C,H,W) with C = 1 or 3, got shape {tuple(tensor.shape)}"
        )
    return t.to(device="cpu", dtype=torch.float32).clamp(0, 1).permute(1, 2, 0).numpy()


def _resize_alpha(alpha: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    a = alpha.to(torch.float32)
    if tuple(a.shape[-2:]) == tuple(hw):
        return a
    up = a.shape[-2] < hw[0]
    out = torch.nn.functional.interpolate(
        a[None], size=hw, mode="bicubic", align_corners=False, antialias=not up
    )[0]
    return out.clamp(0, 1)


def _quantise(a: np.ndarray, bits: int) -> np.ndarray:
    maxval = 65535 if bits == 16 else 255
    return np.rint(a * maxval).astype(np.uint16 if bits == 16 else np.uint8)


def write_image(
    path: str | os.PathLike,
    tensor: torch.Tensor,
    info: ImageInfo | None = None,
    *,
    bit_depth: int | None = None,
    keep_alpha: bool = True,
    quality: int = 95,
    overwrite: bool = True,
) -> Path:
    """Write an image atomically (temporary file in the same folder, then rename).

    tensor: float (C, H, W) or (1, C, H, W), C = 1 or 3, values clipped to [0, 1].
    info: from ``read_image``; gives the bit depth, the alpha plane (re-attached; resized with
        bicubic interpolation when the output size differs, e.g. after super-resolution), the
        ICC profile and EXIF (carried where the format holds them). Without info: 8-bit, no alpha.
    bit_depth: 8 or 16, overrides info's. A format that cannot hold 16 bits (JPEG, BMP, WebP) or
        alpha (JPEG) gets 8 bits / no alpha with an :class:`ImageWarning`.
    The format follows the suffix of ``path``. Returns the path written.
    """
    path = Path(path)
    fmt = format_for_path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ImageError(f"{path}: output folder {folder} does not exist; create it first")
    if path.is_dir():
        raise ImageError(f"{path}: is a directory; give a file name for the output")
    if path.exists() and not overwrite:
        raise ImageError(f"{path}: already exists; choose another name or allow overwriting")

    pixels = _to_numpy_image(tensor)
    height, width = pixels.shape[:2]
    bits = int(bit_depth if bit_depth is not None else (info.bit_depth if info is not None else 8))
    if bits not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bits}")
    if bits == 16 and fmt not in FORMATS_16BIT:
        warnings.warn(
            f"{path.name}: {fmt} holds 8 bits per sample; writing 8 bits (use .png or .tif to keep 16)",
            ImageWarning,
            stacklevel=2,
        )
        bits = 8

    alpha = info.alpha if (info is not None and keep_alpha) else None
    if alpha is not None and fmt not in FORMATS_ALPHA:
        warnings.warn(
            f"{path.name}: {fmt} cannot hold transparency; the alpha channel is dropped "
            "(use .png, .tif or .webp to keep it)",
            ImageWarning,
            stacklevel=2,
        )
        alpha = None
    if alpha is not None:
        a = _resize_alpha(alpha.detach().cpu(), (height, width))
        pixels = np.concatenate([pixels, a.permute(1, 2, 0).numpy()], axis=-1)

    icc = info.icc_profile if info is not None else None
    exif = info.exif if info is not None else None
    data = _quantise(pixels, bits)
    channels = data.shape[-1]

    buffer = io.BytesIO()
    if bits == 16 and fmt == "PNG" and channels != 1:
        buffer.write(png.encode_png16(data, icc, exif))
    elif bits == 16 and fmt == "TIFF":
        _write_tiff16(buffer, data, icc)
    else:
        _write_pil(buffer, data, bits, fmt, icc, exif, quality)

    return atomic_write(path, buffer.getbuffer())


def _write_tiff16(fh, data: np.ndarray, icc: bytes | None) -> None:
    import tifffile

    channels = data.shape[-1]
    kwargs: dict[str, Any] = {}
    if channels == 1:
        kwargs["photometric"] = "minisblack"
        data = data[..., 0]
    else:
        kwargs["photometric"] = "rgb"
        if channels in (2, 4):
            kwargs["extrasamples"] = ["unassalpha"]
        if channels == 2:
            kwargs["photometric"] = "minisblack"
    if icc:
        kwargs["iccprofile"] = icc
    tifffile.imwrite(fh, data, compression="zlib", planarconfig="contig", **kwargs)


def _write_pil(fh, data: np.ndarray, bits: int, fmt: str, icc, exif, quality: int) -> None:
    from PIL import Image

    channels = data.shape[-1]
    if bits == 16:  # 16-bit grey PNG
        im = Image.fromarray(data[..., 0].astype(np.uint16))
    else:
        mode = layout_for_channels(channels)
        arr = data[..., 0] if channels == 1 else data
        im = Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8))
        if im.mode != mode:
            raise ValueError(f"internal: expected a {mode} image for {channels} channels, got {im.mode}")
    kwargs: dict[str, Any] = {}
    if icc and fmt in ("PNG", "JPEG", "WEBP", "TIFF"):
        kwargs["icc_profile"] = icc
    if exif and fmt in ("PNG", "JPEG", "WEBP"):
        kwargs["exif"] = exif
    if fmt in ("JPEG", "WEBP"):
        kwargs["quality"] = int(quality)
    if fmt == "WEBP" and int(quality) >= 100:
        kwargs["lossless"] = True
        kwargs["exact"] = True  # keep colour under fully transparent pixels
    im.save(fh, format=fmt, **kwargs)
