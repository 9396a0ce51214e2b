"""Image files <-> tensors.

``read_image(path)`` returns the image as a float32 tensor of shape (C, H, W) with values in
[0, 1] (C = 1 for grey, 3 for colour; an alpha channel is set aside) and an :class:`ImageInfo`
that holds what is needed to write a result back in the same form: channel layout, bit depth,
the alpha plane, ICC profile and EXIF. ``write_image(path, tensor, info)`` writes it back
atomically (``dip.files.atomic_write``: a temporary file in the destination folder, fsync,
then ``os.replace``; the file takes the umask's permissions).

Formats: PNG, JPEG, TIFF, BMP, WebP. Bit depths: 8 and 16 (16-bit only where the format holds
it: PNG and TIFF). Pillow reads 16-bit grey PNG/TIFF but reduces 16-bit colour to 8 bits; so
16-bit colour TIFF is read and written with tifffile, and 16-bit PNG (colour or grey+alpha) is
decoded without loss and written by a small PNG codec (``dip.images.png``).
Nothing is reduced to 8 bits without a warning (:class:`ImageWarning`).

Masks (``read_mask``): any image; a pixel whose value is non-zero in any colour channel is a
*known* pixel (1), zero is missing (0); ``invert=True`` swaps the two.

Errors: every problem with a file raises :class:`ImageError` (a ``ValueError``) whose message
names the file, what is wrong and what to do.

Modules: ``formats`` (suffixes, formats, ``ImageError``, ``ImageWarning``), ``info``
(``ImageInfo``), ``reading``, ``writing``, ``png`` (the PNG codec).
"""

from dip.images.formats import SUPPORTED_SUFFIXES, ImageError, ImageWarning, format_for_path
from dip.images.info import ImageInfo
from dip.images.png import encode_png16
from dip.images.reading import read_image, read_mask
from dip.images.writing import write_image

__all__ = [
    "ImageError",
    "ImageWarning",
    "ImageInfo",
    "read_image",
    "write_image",
    "read_mask",
    "SUPPORTED_SUFFIXES",
    "format_for_path",
    "encode_png16",
]
