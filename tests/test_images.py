"""dip.images: round trips per format, mode and bit depth; metadata; masks; errors; atomic writes."""
from __future__ import annotations

import importlib
import io
import os
import stat
import struct
import sys
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms, ImageOps

from dip import images

RNG = np.random.default_rng(1234)


def _u8(h, w, c):
    return RNG.integers(0, 256, size=(h, w, c), dtype=np.uint8)


def _u16(h, w, c):
    return RNG.integers(0, 65536, size=(h, w, c), dtype=np.uint16)


def _as_int(t: torch.Tensor, bits: int) -> np.ndarray:
    maxval = 65535 if bits == 16 else 255
    return np.rint(t.permute(1, 2, 0).numpy() * maxval).astype(np.int64)


def _tensor(a: np.ndarray) -> torch.Tensor:
    maxval = 65535.0 if a.dtype == np.uint16 else 255.0
    return torch.from_numpy(a.astype(np.float32) / maxval).permute(2, 0, 1)


# ------------------------------------------------------------------------------- round trips
LOSSLESS = ["png", "tif", "bmp"]


@pytest.mark.parametrize("ext", LOSSLESS + ["webp"])
@pytest.mark.parametrize("layout", ["L", "RGB", "RGBA", "LA"])
def test_round_trip_8bit(tmp_path, ext, layout):
    channels = {"L": 1, "LA": 1, "RGB": 3, "RGBA": 3}[layout]
    pixels = _u8(11, 17, channels)
    alpha = _u8(11, 17, 1) if "A" in layout else None
    info = images.ImageInfo(layout, 8, alpha=None if alpha is None else _tensor(alpha))
    path = tmp_path / f"x.{ext}"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images.write_image(path, _tensor(pixels), info, quality=100)
    image, got = images.read_image(path)
    assert got.bit_depth == 8 and got.size == (11, 17)
    expect_alpha = alpha is not None and ext != "bmp"
    if ext == "bmp" and alpha is not None:
        assert any(issubclass(w.category, images.ImageWarning) for w in caught)
    assert (got.alpha is not None) == expect_alpha
    if ext == "webp":  # no grey mode in WebP: grey comes back as equal RGB channels
        assert got.mode in ((layout,) if channels == 3 else ("RGB", "RGBA"))
        np.testing.assert_array_equal(_as_int(image, 8)[..., :1], pixels.astype(np.int64)[..., :1])
    else:
        assert got.mode == (layout if expect_alpha or "A" not in layout else layout[:-1])
        np.testing.assert_array_equal(_as_int(image, 8), pixels)
    if expect_alpha:
        np.testing.assert_array_equal(_as_int(got.alpha, 8), alpha)


@pytest.mark.parametrize("ext", ["png", "tif"])
@pytest.mark.parametrize("layout", ["L", "RGB", "RGBA", "LA"])
def test_round_trip_16bit_exact(tmp_path, ext, layout):
    channels = {"L": 1, "LA": 1, "RGB": 3, "RGBA": 3}[layout]
    pixels = _u16(9, 14, channels)
    alpha = _u16(9, 14, 1) if "A" in layout else None
    info = images.ImageInfo(layout, 16, alpha=None if alpha is None else _tensor(alpha))
    path = tmp_path / f"x.{ext}"
    images.write_image(path, _tensor(pixels), info)
    image, got = images.read_image(path)
    assert (got.mode, got.bit_depth) == (layout, 16)
    np.testing.assert_array_equal(_as_int(image, 16), pixels)
    if alpha is not None:
        np.testing.assert_array_equal(_as_int(got.alpha, 16), alpha)


def test_16bit_colour_png_read_by_other_tools_is_16bit(tmp_path):
    """Our 16-bit PNG is a standard one: Pillow sees 16-bit samples (its raw mode) and its
    high bytes equal ours; tifffile-written 16-bit TIFF is read without loss."""
    pixels = _u16(6, 7, 3)
    images.write_image(tmp_path / "a.png", _tensor(pixels), images.ImageInfo("RGB", 16))
    im = Image.open(tmp_path / "a.png")
    assert im.tile[0].args == "RGB;16B"
    np.testing.assert_array_equal(np.asarray(im), (pixels >> 8).astype(np.uint8))
    import tifffile

    tifffile.imwrite(tmp_path / "b.tif", pixels, photometric="rgb")
    image, info = images.read_image(tmp_path / "b.tif")
    assert info.bit_depth == 16 and info.mode == "RGB"
    np.testing.assert_array_equal(_as_int(image, 16), pixels)


def test_16bit_grey_png_from_pillow(tmp_path):
    pixels = _u16(5, 8, 1)[..., 0]
    Image.fromarray(pixels).save(tmp_path / "g.png")
    image, info = images.read_image(tmp_path / "g.png")
    assert (info.mode, info.bit_depth, info.source_mode) == ("L", 16, "I;16")
    np.testing.assert_array_equal(_as_int(image, 16)[..., 0], pixels)


def test_jpeg_round_trip_is_close(tmp_path):
    yy, xx = np.mgrid[0:24, 0:32]
    smooth = np.stack([yy * 8, xx * 6, (yy + xx) * 4], -1).astype(np.uint8)
    images.write_image(tmp_path / "s.jpg", _tensor(smooth), None, quality=95)
    image, info = images.read_image(tmp_path / "s.jpg")
    assert (info.format, info.mode, info.bit_depth) == ("JPEG", "RGB", 8)
    assert np.abs(_as_int(image, 8) - smooth).mean() < 3


def test_16bit_to_8bit_format_warns(tmp_path):
    with pytest.warns(images.ImageWarning, match="8 bits"):
        images.write_image(tmp_path / "x.jpg", torch.rand(3, 8, 8), images.ImageInfo("RGB", 16))
    with pytest.warns(images.ImageWarning, match="alpha"):
        images.write_image(tmp_path / "y.jpg", torch.rand(3, 8, 8),
                           images.ImageInfo("RGBA", 8, alpha=torch.rand(1, 8, 8)))
    _, info = images.read_image(tmp_path / "y.jpg")
    assert info.bit_depth == 8 and info.alpha is None


def test_alpha_resized_when_output_is_larger(tmp_path):
    alpha = torch.zeros(1, 5, 6)
    alpha[:, :, 3:] = 1.0
    images.write_image(tmp_path / "big.png", torch.rand(3, 20, 24), images.ImageInfo("RGBA", 8, alpha=alpha))
    _, info = images.read_image(tmp_path / "big.png")
    assert info.alpha.shape == (1, 20, 24)
    assert info.alpha[0, :, :10].max() < 0.05 and info.alpha[0, :, 14:].min() > 0.95


# ------------------------------------------------------------------------------- decoders
def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


def _png_every_filter(pixels: np.ndarray, depth: int) -> bytes:
    """A PNG whose rows use filter types 0..4 in turn (reference encoder for the decoder test)."""
    h, w, c = pixels.shape
    raw = pixels.astype(">u2" if depth == 16 else np.uint8).reshape(h, -1).view(np.uint8).astype(int)
    bpp = c * depth // 8
    rows = []
    for r in range(h):
        f = r % 5
        line, prev = raw[r], raw[r - 1] if r else np.zeros_like(raw[0])
        out = []
        for i, x in enumerate(line):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            cc = prev[i - bpp] if i >= bpp else 0
            pred = [0, a, b, (a + b) // 2, _paeth(a, b, cc)][f]
            out.append((x - pred) % 256)
        rows.append(bytes([f]) + bytes(out))
    colour = {1: 0, 2: 4, 3: 2, 4: 6}[c]

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b""))


@pytest.mark.parametrize("depth,channels", [(8, 3), (8, 4), (16, 2), (16, 3), (16, 4)])
def test_png_decoders_handle_every_filter(tmp_path, depth, channels):
    pixels = (_u16 if depth == 16 else _u8)(10, 7, channels)
    path = tmp_path / "f.png"
    path.write_bytes(_png_every_filter(pixels, depth))
    np.testing.assert_array_equal(images.png.decode_png(path), pixels)
    image, info = images.read_image(path)
    assert info.bit_depth == depth
    colour = pixels[..., : (1 if channels <= 2 else 3)]
    np.testing.assert_array_equal(_as_int(image, depth), colour)
    if channels in (2, 4):
        np.testing.assert_array_equal(_as_int(info.alpha, depth), pixels[..., -1:])


# ------------------------------------------------------------------------------- conversions
def test_palette_and_bilevel_and_cmyk(tmp_path):
    rgb = Image.fromarray(_u8(12, 10, 3))
    rgb.quantize(16).save(tmp_path / "p.png")
    image, info = images.read_image(tmp_path / "p.png")
    assert (info.mode, info.source_mode, image.shape[0]) == ("RGB", "P", 3)
    np.testing.assert_array_equal(_as_int(image, 8), np.asarray(Image.open(tmp_path / "p.png").convert("RGB")))

    pal = rgb.quantize(16)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "pt.png", transparency=0)
    _, info = images.read_image(tmp_path / "pt.png")
    assert info.mode == "RGBA" and info.alpha is not None and float(info.alpha.min()) == 0.0

    Image.fromarray(_u8(9, 9, 1)[..., 0] > 127).save(tmp_path / "b.png")
    image, info = images.read_image(tmp_path / "b.png")
    assert info.mode == "L" and set(np.unique(_as_int(image, 8))) <= {0, 255}

    Image.fromarray(_u8(8, 8, 4), mode="CMYK").save(tmp_path / "c.jpg")
    image, info = images.read_image(tmp_path / "c.jpg")
    assert info.mode == "RGB" and image.shape == (3, 8, 8)


def test_exif_orientation_applied_and_reset(tmp_path):
    pixels = _u8(6, 10, 3)
    im = Image.fromarray(pixels)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    exif[0x010F] = "dip-test-camera"
    im.save(tmp_path / "o.png", exif=exif.tobytes())
    image, info = images.read_image(tmp_path / "o.png")
    expected = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "o.png")))
    assert image.shape == (3, 10, 6) and info.size == (10, 6)
    np.testing.assert_array_equal(_as_int(image, 8), expected)
    images.write_image(tmp_path / "o2.jpg", image, info)
    out = Image.open(tmp_path / "o2.jpg").getexif()
    assert out.get(0x0112) == 1 and out.get(0x010F) == "dip-test-camera"


@pytest.mark.parametrize("name,bits", [("a.png", 8), ("a.jpg", 8), ("a.webp", 8), ("a.tif", 8),
                                       ("b.png", 16), ("b.tif", 16)])
def test_icc_profile_carried(tmp_path, name, bits):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    info = images.ImageInfo("RGB", bits, icc_profile=icc)
    images.write_image(tmp_path / name, torch.rand(3, 8, 9), info)
    _, got = images.read_image(tmp_path / name)
    assert got.icc_profile == icc


def test_info_dict_round_trip():
    info = images.ImageInfo("RGBA", 16, alpha=torch.rand(1, 3, 4), icc_profile=b"x", exif=None, format="PNG",
                        size=(3, 4), source_mode="RGBA;16")
    back = images.ImageInfo.from_dict(info.to_dict())
    assert back.mode == "RGBA" and back.bit_depth == 16 and back.size == (3, 4)
    assert torch.equal(back.alpha, info.alpha) and back.channels == 3


# ------------------------------------------------------------------------------- masks
def test_read_mask_nonzero_is_known(tmp_path):
    m = np.zeros((6, 7, 3), np.uint8)
    m[1, 2, 0] = 1          # any non-zero channel marks a known pixel
    m[3:, :, :] = 255
    Image.fromarray(m).save(tmp_path / "m.png")
    mask = images.read_mask(tmp_path / "m.png")
    assert mask.shape == (1, 6, 7) and mask.dtype == torch.float32
    assert mask[0, 1, 2] == 1 and mask[0, 0, 0] == 0 and mask[0, 3:].min() == 1
    inv = images.read_mask(tmp_path / "m.png", invert=True)
    assert torch.equal(inv, 1 - mask)


# ------------------------------------------------------------------------------- errors
def _png_bytes():
    buf = io.BytesIO()
    Image.fromarray(_u8(40, 40, 3)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("case,needle", [
    ("missing", "no such file"),
    ("dir", "directory"),
    ("empty", "empty"),
    ("text", "not an image"),
    ("truncated_png", "truncated"),
    ("truncated_jpeg", "truncated"),
])
def test_read_errors(tmp_path, case, needle):
    path = tmp_path / "bad.png"
    if case == "dir":
        path.mkdir()
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "text":
        path.write_text("hello, this is not an image\n")
    elif case == "truncated_png":
        data = _png_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif case == "truncated_jpeg":
        path = tmp_path / "bad.jpg"
        buf = io.BytesIO()
        Image.fromarray(_u8(64, 64, 3)).save(buf, format="JPEG")
        path.write_bytes(buf.getvalue()[:700])
    with pytest.raises(images.ImageError, match=needle) as exc:
        images.read_image(path)
    assert isinstance(exc.value, ValueError) and str(path) in str(exc.value)


def test_write_errors_leave_existing_file(tmp_path):
    target = tmp_path / "keep.png"
    target.write_bytes(b"original")
    with pytest.raises(ValueError, match="C = 1 or 3"):
        images.write_image(target, torch.rand(2, 5, 5))
    with pytest.raises(images.ImageError, match="unsupported image format"):
        images.write_image(tmp_path / "x.gif", torch.rand(3, 5, 5))
    with pytest.raises(images.ImageError, match="does not exist"):
        images.write_image(tmp_path / "nope" / "x.png", torch.rand(3, 5, 5))
    with pytest.raises(images.ImageError, match="already exists"):
        images.write_image(target, torch.rand(3, 5, 5), overwrite=False)
    assert target.read_bytes() == b"original"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.png"]  # no temporary files left


def test_write_is_atomic_replace(tmp_path):
    target = tmp_path / "out.png"
    images.write_image(target, torch.zeros(3, 4, 4))
    images.write_image(target, torch.ones(3, 4, 4))
    image, _ = images.read_image(target)
    assert float(image.min()) == 1.0
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


@pytest.mark.skipif(not hasattr(os, "fchmod"), reason="POSIX permissions")
def test_written_images_take_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        images.write_image(tmp_path / "a.png", torch.zeros(3, 4, 4))
        images.write_image(tmp_path / "b.tif", torch.zeros(1, 4, 4), bit_depth=16)
    finally:
        os.umask(old)
    assert {stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()} == {0o644}


def test_dip_io_is_a_deprecated_alias(monkeypatch):
    monkeypatch.delitem(sys.modules, "dip.io", raising=False)
    with pytest.warns(DeprecationWarning, match="dip.images"):
        old = importlib.import_module("dip.io")
    assert old.read_image is images.read_image and old.ImageInfo is images.ImageInfo
    assert set(old.__all__) == set(images.__all__)
