"""Reading image files: ``read_image`` (pixels as a float32 (C, H, W) tensor in [0, 1] and an
``ImageInfo``) and ``read_mask``.

Pillow opens every format; 16-bit colour PNG is decoded without loss in two passes of
Pillow's decoder (``_read_png16``) or by ``dip.images.png``; 16-bit colour TIFF, and TIFF
layouts Pillow cannot open, are read with tifffile. EXIF orientation is applied; alpha goes
to ``ImageInfo.alpha``. Every problem with a file raises ``ImageError`` naming the file.
"""
from __future__ import annotations

import logging
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from dip.images import png
from dip.images.formats import ImageError, layout_for_channels
from dip.images.info import ImageInfo

__all__ = ["read_image", "read_mask"]

logger = logging.getLogger("dip.images")

_EXIF_ORIENTATION = 0x0112


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise ImageError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise ImageError(f"{path}: is a directory, not an image file; give an image file")
    if not os.access(path, os.R_OK):
        raise ImageError(f"{path}: cannot be read (permission denied); check its permissions")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: the file is empty (0 bytes); give a valid image file")


def _open_pil(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{path}: the image is too large to read safely ({exc})") from None
    except UnidentifiedImageError:
        raise ImageError(
            f"{path}: not an image file that can be read (supported: PNG, JPEG, TIFF, BMP, WebP)"
        ) from None
    except PermissionError:
        raise ImageError(f"{path}: cannot be read (permission denied); check its permissions") from None
    except (OSError, SyntaxError, ValueError, struct.error, EOFError) as exc:
        raise ImageError(f"{path}: cannot be read as an image ({exc}); the file may be corrupt") from None
    if im.width <= 0 or im.height <= 0:
        raise ImageError(f"{path}: the image is empty ({im.width}x{im.height} pixels)")
    return im


def _load_error(path: Path, exc: BaseException) -> ImageError:
    return ImageError(
        f"{path}: image data is truncated or corrupt ({exc}); re-export or re-download the file"
    )


def _pil_load(im, path: Path) -> None:
    try:
        im.load()
    except (OSError, SyntaxError, ValueError, struct.error, EOFError, zlib.error) as exc:
        raise _load_error(path, exc) from None


def _orientation(im) -> int:
    try:
        return int(im.getexif().get(_EXIF_ORIENTATION, 1) or 1)
    except Exception:  # a malformed EXIF block must not stop reading the pixels
        return 1


def _exif_bytes(im, applied_orientation: bool) -> bytes | None:
    try:
        exif = im.getexif()
    except Exception:
        return None
    if not exif:
        return None
    if applied_orientation and _EXIF_ORIENTATION in exif:
        exif[_EXIF_ORIENTATION] = 1
    try:
        data = exif.tobytes()
    except Exception:
        return None
    return data or None


def _orient_array(a: np.ndarray, orientation: int) -> np.ndarray:
    """Apply EXIF orientation (1..8) to an (H, W[, C]) array, as ImageOps.exif_transpose does."""
    if orientation == 2:
        return a[:, ::-1]
    if orientation == 3:
        return a[::-1, ::-1]
    if orientation == 4:
        return a[::-1, :]
    if orientation == 5:
        return np.swapaxes(a, 0, 1)
    if orientation == 6:
        return np.swapaxes(a, 0, 1)[:, ::-1]
    if orientation == 7:
        return np.swapaxes(a, 0, 1)[::-1, ::-1]
    if orientation == 8:
        return np.swapaxes(a, 0, 1)[::-1, :]
    return a


def _single_tile(im):
    """The decoder tile of a Pillow image read in one piece, and its raw mode ("RGB;16B", ...);
    (None, None) for images in several tiles."""
    tile = im.tile[0] if len(im.tile) == 1 else None
    rawmode = tile.args if tile is not None else None
    if isinstance(rawmode, tuple):
        rawmode = rawmode[0]
    return tile, rawmode


def _read_png16(im, path: Path) -> np.ndarray:
    """Full-precision pixels of a 16-bit colour (or grey+alpha) PNG: (H, W, C) uint16.

    Pillow's PNG decoder undoes the row filters in C and then unpacks each 16-bit big-endian
    sample to its high byte (raw mode "RGB;16B"). Decoding a second time with the
    little-endian unpacker ("RGB;16L"), which keeps the other byte of each sample, gives the
    low bytes. Layouts without such an unpacker (grey+alpha) are decoded by ``dip.images.png.decode_png``.
    """
    from PIL import Image

    tile, rawmode = _single_tile(im)
    if rawmode in ("RGB;16B", "RGBA;16B"):
        try:
            _pil_load(im, path)
            high = np.asarray(im, dtype=np.uint16)
            low_im = Image.open(path)
            low_im.tile = [tile._replace(args=rawmode.replace(";16B", ";16L"))]
            _pil_load(low_im, path)
            low = np.asarray(low_im, dtype=np.uint16)
            return (high << 8) | low
        except ImageError:
            raise
        except Exception as exc:  # an unexpected Pillow change: fall back to the direct decoder
            logger.debug("two-pass 16-bit PNG decode failed (%s); using the direct decoder", exc)
    try:
        return png.decode_png(path)
    except ImageError:
        raise
    except (ValueError, zlib.error, struct.error) as exc:
        raise _load_error(path, exc) from None


def _tiff_bits(im) -> int:
    try:
        bits = im.tag_v2.get(258)
    except AttributeError:
        return 8
    if isinstance(bits, (tuple, list)):
        bits = bits[0] if bits else 8
    return int(bits or 8)


def _read_tiff_tifffile(path: Path) -> np.ndarray:
    import tifffile

    try:
        a = tifffile.imread(path, key=0)
    except Exception as exc:
        raise _load_error(path, exc) from None
    return np.asarray(a)


def _pixels_from_pil(im, path: Path) -> tuple[np.ndarray, str, int]:
    """Pixels of a Pillow image as (H, W, C) integer array, its layout and bit depth."""
    mode = im.mode
    if mode == "P" or mode == "PA":
        has_alpha = mode == "PA" or "transparency" in im.info
        im = im.convert("RGBA" if has_alpha else "RGB")
        mode = im.mode
    elif mode == "1":
        im = im.convert("L")
        mode = "L"
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGB")
        mode = "RGB"
    elif mode == "La":
        im = im.convert("LA")
        mode = "LA"
    elif mode == "RGBa":
        im = im.convert("RGBA")
        mode = "RGBA"
    elif mode == "L" and "transparency" in im.info:
        im = im.convert("LA")
        mode = "LA"
    elif mode == "RGB" and "transparency" in im.info:
        im = im.convert("RGBA")
        mode = "RGBA"

    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        a = np.asarray(im).astype(np.uint16)
        return a[..., None], "L", 16
    if mode == "I":
        a = np.asarray(im)
        if a.min() < 0 or a.max() > 65535:
            raise ImageError(
                f"{path}: 32-bit integer pixels outside 0..65535 are not supported; "
                "convert the image to 8 or 16 bits"
            )
        return a.astype(np.uint16)[..., None], "L", 16
    if mode == "F":
        raise ImageError(
            f"{path}: floating-point images are not supported; convert it to 8 or 16 bits"
        )
    if mode not in ("L", "LA", "RGB", "RGBA"):
        try:
            im = im.convert("RGBA" if "A" in mode else "RGB")
        except Exception:
            raise ImageError(
                f"{path}: pixel format {mode!r} is not supported; convert it to RGB or grey"
            ) from None
        mode = im.mode
    a = np.asarray(im, dtype=np.uint8)
    if a.ndim == 2:
        a = a[..., None]
    return a, mode, 8


def _is_tiff(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _tiff_array(a: np.ndarray, path: Path) -> np.ndarray:
    """(H, W, C) from tifffile's array of one page; ImageError for unsupported layouts."""
    if a.dtype not in (np.uint8, np.uint16):
        raise ImageError(
            f"{path}: TIFF with {a.dtype} samples is not supported; convert it to 8 or 16 bits"
        )
    if a.ndim == 3 and a.shape[0] in (2, 3, 4) and a.shape[-1] not in (1, 2, 3, 4):
        a = np.moveaxis(a, 0, -1)  # planar configuration
    pixels = a if a.ndim == 3 else a[..., None]
    if pixels.ndim != 3 or pixels.shape[-1] > 4:
        raise ImageError(f"{path}: TIFF of shape {a.shape} is not supported; save it as grey or RGB(A)")
    return pixels


def _read_tiff_plain(path: Path):
    """A TIFF that Pillow cannot open (e.g. 16-bit grey+alpha), read with tifffile."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            a = page.asarray()
            icc_tag = page.tags.get(34675)
            orient_tag = page.tags.get(274)
            icc = bytes(icc_tag.value) if icc_tag is not None else None
            orientation = int(orient_tag.value) if orient_tag is not None else 1
    except Exception as exc:
        raise ImageError(
            f"{path}: not an image file that can be read ({exc}); supported: PNG, JPEG, TIFF, BMP, WebP"
        ) from None
    return _tiff_array(np.asarray(a), path), "TIFF", icc, None, orientation


def _read_with_pil(im, path: Path):
    """Pixels (H, W, C) uint8/uint16 after EXIF orientation, and the file's metadata."""
    fmt = im.format or "?"
    source_mode = im.mode
    pixels: np.ndarray | None = None
    bit_depth = 8
    if fmt == "PNG":
        _, rawmode = _single_tile(im)
        if rawmode in ("RGB;16B", "RGBA;16B", "LA;16B"):
            pixels = _read_png16(im, path)
            bit_depth = 16
            source_mode = {"RGB;16B": "RGB;16", "RGBA;16B": "RGBA;16", "LA;16B": "LA;16"}[rawmode]
    elif fmt == "TIFF" and _tiff_bits(im) > 8 and im.mode not in ("I;16", "I;16B", "I;16L", "I;16N", "F", "I"):
        pixels = _tiff_array(_read_tiff_tifffile(path), path)
        bit_depth = 16 if pixels.dtype == np.uint16 else 8
        source_mode = f"{layout_for_channels(pixels.shape[-1])};{bit_depth}"

    if pixels is None:
        _pil_load(im, path)
        pixels, layout, bit_depth = _pixels_from_pil(im, path)
    else:
        layout = layout_for_channels(pixels.shape[-1])
    # after the pixels: Pillow's PNG reader loads the whole file to look for EXIF
    orientation = _orientation(im)
    icc = im.info.get("icc_profile") or None
    applied = orientation != 1
    if applied:
        pixels = _orient_array(pixels, orientation)
    # a TIFF's "EXIF" as Pillow gives it is the file's own IFD (strip offsets, sizes, ...):
    # not metadata to carry into another file
    exif = _exif_bytes(im, applied) if fmt != "TIFF" else None
    if layout in ("RGB", "RGBA") and source_mode == "CMYK":
        icc = None  # a CMYK profile does not describe the converted RGB pixels
    return pixels, layout, bit_depth, fmt, icc, exif, source_mode


def read_image(path: str | os.PathLike) -> tuple[torch.Tensor, ImageInfo]:
    """Read an image file.

    Returns ``(image, info)``: image is a float32 tensor (C, H, W) in [0, 1], C = 1 (grey) or 3
    (colour); palette images become RGB(A), 1-bit and 16-bit grey become grey, CMYK becomes
    RGB; EXIF orientation is applied; an alpha channel goes to ``info.alpha``.
    Raises ImageError for a missing, unreadable, empty, truncated or non-image file.
    """
    path = Path(path)
    _check_readable(path)
    try:
        im = _open_pil(path)
    except ImageError:
        if not _is_tiff(path):
            raise
        pixels, fmt, icc, exif, orientation = _read_tiff_plain(path)
        layout, bit_depth = layout_for_channels(pixels.shape[-1]), 16 if pixels.dtype == np.uint16 else 8
        source_mode = f"{layout};{bit_depth}"
        if orientation != 1:
            pixels = _orient_array(pixels, orientation)
    else:
        pixels, layout, bit_depth, fmt, icc, exif, source_mode = _read_with_pil(im, path)
    if pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise ImageError(f"{path}: the image is empty ({pixels.shape[1]}x{pixels.shape[0]} pixels)")

    maxval = 65535.0 if bit_depth == 16 else 255.0
    arr = torch.from_numpy(np.ascontiguousarray(pixels).astype(np.float32) / maxval).permute(2, 0, 1)
    alpha = None
    if layout in ("LA", "RGBA"):
        alpha = arr[-1:].clone()
        arr = arr[:-1]
    image = arr.contiguous()
    info = ImageInfo(
        mode=layout,
        bit_depth=bit_depth,
        alpha=alpha,
        icc_profile=icc,
        exif=exif,
        format=fmt,
        size=(int(image.shape[1]), int(image.shape[2])),
        source_mode=source_mode,
    )
    return image, info


def read_mask(path: str | os.PathLike, invert: bool = False) -> torch.Tensor:
    """Read a mask image: (1, H, W) float32 of 0 and 1, 1 = known pixel.

    A pixel is known when any of its colour channels is non-zero (alpha is ignored);
    ``invert=True`` marks non-zero pixels as missing instead.
    """
    image, _ = read_image(path)
    known = (image > 0).any(dim=0, keepdim=True)
    if invert:
        known = ~known
    return known.to(torch.float32)
