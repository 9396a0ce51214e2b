"""Image files <-> tensors.

``read_image(path)`` returns the image as a float32 tensor of shape (C, H, W) with values in
[0, 1] (C = 1 for grey, 3 for colour; an alpha channel is set aside) and an :class:`ImageInfo`
that holds what is needed to write a result back in the same form: channel layout, bit depth,
the alpha plane, ICC profile and EXIF. ``write_image(path, tensor, info)`` writes it back
atomically (a temporary file in the destination folder, then ``os.replace``).

Formats: PNG, JPEG, TIFF, BMP, WebP. Bit depths: 8 and 16 (16-bit only where the format holds
it: PNG and TIFF). Pillow reads 16-bit grey PNG/TIFF but reduces 16-bit colour to 8 bits; so
16-bit colour TIFF is read and written with tifffile, and 16-bit PNG (colour or grey+alpha) is
decoded without loss (see ``_read_png16``) and written by a small PNG encoder in this module.
Nothing is reduced to 8 bits without a warning (:class:`ImageWarning`).

Masks (``read_mask``): any image; a pixel whose value is non-zero in any colour channel is a
*known* pixel (1), zero is missing (0); ``invert=True`` swaps the two.

Errors: every problem with a file raises :class:`ImageError` (a ``ValueError``) whose message
names the file, what is wrong and what to do.
"""
from __future__ import annotations

import dataclasses
import io
import logging
import os
import struct
import tempfile
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "ImageError",
    "ImageWarning",
    "ImageInfo",
    "read_image",
    "write_image",
    "read_mask",
    "SUPPORTED_SUFFIXES",
    "format_for_path",
]

logger = logging.getLogger(__name__)

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
_FORMATS_16BIT = {"PNG", "TIFF"}
#: formats that can store an alpha channel
_FORMATS_ALPHA = {"PNG", "TIFF", "WEBP"}
_EXIF_ORIENTATION = 0x0112


class ImageError(ValueError):
    """A file cannot be used as an image: missing, unreadable, not an image, truncated, empty,
    or of a pixel format that is not supported. The message says which and what to do."""


class ImageWarning(UserWarning):
    """Something was changed on writing (bit depth reduced, alpha dropped) because the output
    format cannot hold it."""


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
    def from_dict(cls, data: dict[str, Any]) -> "ImageInfo":
        """Inverse of :meth:`to_dict`; unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        if kwargs.get("size") is not None:
            kwargs["size"] = tuple(int(s) for s in kwargs["size"])
        return cls(**kwargs)


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


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------
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


def _png_unfilter(data: bytes, height: int, row_bytes: int, bpp: int) -> np.ndarray:
    """Undo PNG row filters (non-interlaced). Returns (height, row_bytes) uint8."""
    buf = np.frombuffer(data, dtype=np.uint8)
    if buf.size < height * (row_bytes + 1):
        raise ValueError("not enough image data")
    rows = buf[: height * (row_bytes + 1)].reshape(height, row_bytes + 1)
    out = np.zeros((height, row_bytes), dtype=np.uint8)
    prev = np.zeros(row_bytes, dtype=np.int32)
    for r in range(height):
        ftype = int(rows[r, 0])
        line = rows[r, 1:].astype(np.int32)
        if ftype == 0:
            cur = line
        elif ftype == 1:  # Sub: running sum per byte position within a pixel
            cur = np.cumsum(line.reshape(-1, bpp), axis=0).reshape(-1) & 0xFF
        elif ftype == 2:  # Up
            cur = (line + prev) & 0xFF
        elif ftype in (3, 4):  # Average, Paeth: sequential along the row
            cur = np.empty(row_bytes, dtype=np.int32)
            left = np.zeros(bpp, dtype=np.int32)
            upleft = np.zeros(bpp, dtype=np.int32)
            for i in range(0, row_bytes, bpp):
                up = prev[i : i + bpp]
                if ftype == 3:
                    val = (line[i : i + bpp] + ((left + up) >> 1)) & 0xFF
                else:
                    p = left + up - upleft
                    pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - upleft)
                    pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
                    val = (line[i : i + bpp] + pred) & 0xFF
                cur[i : i + bpp] = val
                left, upleft = val, up
        else:
            raise ValueError(f"unknown PNG filter type {ftype}")
        out[r] = cur
        prev = cur
    return out


def _read_png_direct(path: Path) -> np.ndarray:
    """Decode a non-interlaced 8- or 16-bit grey/grey+alpha/RGB/RGBA PNG with numpy and zlib:
    (H, W, C) uint8 or uint16. Used for layouts Pillow reduces to 8 bits without an exact path."""
    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG file")
    pos, idat, header = 8, [], None
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        ctype = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if len(body) < length:
            raise ValueError("chunk runs past the end of the file")
        if ctype == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif ctype == b"IDAT":
            idat.append(body)
        elif ctype == b"IEND":
            break
        pos += 12 + length
    if header is None:
        raise ValueError("no IHDR chunk")
    width, height, depth, colour_type, _, _, interlace = header
    channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(colour_type)
    if depth not in (8, 16) or channels is None:
        raise ValueError(f"unexpected PNG header (bit depth {depth}, colour type {colour_type})")
    if interlace:
        raise ImageError(
            f"{path}: interlaced 16-bit grey+alpha PNG is not supported; save it non-interlaced"
        )
    raw = zlib.decompress(b"".join(idat))
    bpp = depth // 8 * channels
    rows = _png_unfilter(raw, height, width * bpp, bpp)
    if depth == 8:
        return rows.reshape(height, width, channels)
    return rows.view(">u2").reshape(height, width, channels).astype(np.uint16)


def _read_png16(im, path: Path) -> np.ndarray:
    """Full-precision pixels of a 16-bit colour (or grey+alpha) PNG: (H, W, C) uint16.

    Pillow's PNG decoder undoes the row filters in C and then unpacks each 16-bit big-endian
    sample to its high byte (raw mode "RGB;16B"). Decoding a second time with the
    little-endian unpacker ("RGB;16L"), which keeps the other byte of each sample, gives the
    low bytes. Layouts without such an unpacker (grey+alpha) are decoded by ``_png_unfilter``.
    """
    from PIL import Image

    tile = im.tile[0] if len(im.tile) == 1 else None
    rawmode = tile.args if tile is not None else None
    if isinstance(rawmode, tuple):
        rawmode = rawmode[0]
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
        return _read_png_direct(path)
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


def _layout_for_channels(c: int) -> str:
    return {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[c]


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
        tile = im.tile[0] if len(im.tile) == 1 else None
        rawmode = tile.args if tile is not None else None
        if isinstance(rawmode, tuple):
            rawmode = rawmode[0]
        if rawmode in ("RGB;16B", "RGBA;16B", "LA;16B"):
            pixels = _read_png16(im, path)
            bit_depth = 16
            source_mode = {"RGB;16B": "RGB;16", "RGBA;16B": "RGBA;16", "LA;16B": "LA;16"}[rawmode]
    elif fmt == "TIFF" and _tiff_bits(im) > 8 and im.mode not in ("I;16", "I;16B", "I;16L", "I;16N", "F", "I"):
        pixels = _tiff_array(_read_tiff_tifffile(path), path)
        bit_depth = 16 if pixels.dtype == np.uint16 else 8
        source_mode = f"{_layout_for_channels(pixels.shape[-1])};{bit_depth}"

    if pixels is None:
        _pil_load(im, path)
        pixels, layout, bit_depth = _pixels_from_pil(im, path)
    else:
        layout = _layout_for_channels(pixels.shape[-1])
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
        layout, bit_depth = _layout_for_channels(pixels.shape[-1]), 16 if pixels.dtype == np.uint16 else 8
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


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------
def _png_chunk(ctype: bytes, body: bytes) -> bytes:
    return (
        struct.pack(">I", len(body))
        + ctype
        + body
        + struct.pack(">I", zlib.crc32(ctype + body) & 0xFFFFFFFF)
    )


def encode_png16(pixels: np.ndarray, icc_profile: bytes | None = None, exif: bytes | None = None) -> bytes:
    """Encode (H, W, C) uint16 pixels, C in 1..4, as a 16-bit PNG (rows filtered with 'Up').

    The ICC profile goes into an iCCP chunk and EXIF into an eXIf chunk.
    """
    if pixels.dtype != np.uint16 or pixels.ndim != 3 or pixels.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(f"encode_png16 needs (H, W, C) uint16 with C in 1..4, got {pixels.shape} {pixels.dtype}")
    height, width, channels = pixels.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    be = pixels.astype(">u2").reshape(height, width * channels).view(np.uint8)
    up = be.astype(np.int16)
    up[1:] -= be[:-1].astype(np.int16)
    filtered = np.empty((height, width * channels * 2 + 1), dtype=np.uint8)
    filtered[:, 0] = 2
    filtered[0, 0] = 0
    filtered[:, 1:] = (up & 0xFF).astype(np.uint8)
    filtered[0, 1:] = be[0]
    out = [b"\x89PNG\r\n\x1a\n", _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0))]
    if icc_profile:
        out.append(_png_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc_profile)))
    if exif:
        body = exif[6:] if exif.startswith(b"Exif\x00\x00") else exif
        out.append(_png_chunk(b"eXIf", body))
    out.append(_png_chunk(b"IDAT", zlib.compress(filtered.tobytes(), 6)))
    out.append(_png_chunk(b"IEND", b""))
    return b"".join(out)


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
    if bits == 16 and fmt not in _FORMATS_16BIT:
        warnings.warn(
            f"{path.name}: {fmt} holds 8 bits per sample; writing 8 bits (use .png or .tif to keep 16)",
            ImageWarning,
            stacklevel=2,
        )
        bits = 8

    alpha = info.alpha if (info is not None and keep_alpha) else None
    if alpha is not None and fmt not in _FORMATS_ALPHA:
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
        buffer.write(encode_png16(data, icc, exif))
    elif bits == 16 and fmt == "TIFF":
        _write_tiff16(buffer, data, icc)
    else:
        _write_pil(buffer, data, bits, fmt, icc, exif, quality)

    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(buffer.getbuffer())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
    return path


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
        mode = _layout_for_channels(channels)
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
