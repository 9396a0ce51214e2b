"""A small PNG codec (numpy and zlib): the 16-bit layouts Pillow cannot read or write exactly.

``decode_png(path)`` decodes a non-interlaced 8- or 16-bit grey, grey+alpha, RGB or RGBA PNG
to an (H, W, C) uint8 / uint16 array; ``encode_png16(pixels)`` encodes (H, W, C) uint16
pixels as a 16-bit PNG, with an ICC profile (iCCP) and EXIF (eXIf) when given.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from dip.images.formats import ImageError

__all__ = ["decode_png", "encode_png16", "unfilter"]


def unfilter(data: bytes, height: int, row_bytes: int, bpp: int) -> np.ndarray:
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


def decode_png(path: Path) -> np.ndarray:
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
    rows = unfilter(raw, height, width * bpp, bpp)
    if depth == 8:
        return rows.reshape(height, width, channels)
    return rows.view(">u2").reshape(height, width, channels).astype(np.uint16)


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
