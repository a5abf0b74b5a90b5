"""An uploaded image decoded under limits, every check that can be made on the header made before any pixel is
decoded.

:func:`decode_image` takes the bytes and:

1. recognises the format from the content (PNG, JPEG, WebP; the declared content type plays no part). Another
   image format (GIF, BMP, TIFF, ...) is ``UnsupportedMediaType``; anything else ``InvalidInput``;
2. reads the size from the header (:func:`png_size`, :func:`jpeg_size`, :func:`webp_size`: before Pillow opens the
   file, since Pillow's WebP decoder allocates its canvas on open) and refuses (``TooLarge``) more than
   ``max_pixels`` pixels — a small file declaring billions of pixels is answered without decoding it;
3. refuses animated PNG / WebP (``InvalidInput``; a multi-picture JPEG gives its first picture) and pixel modes that
   have no RGB form;
4. decodes (a truncated or corrupt file is ``InvalidInput``) and converts to 8-bit RGB with
   :func:`sepconv.export.preprocessing.to_rgb`, which says what it converted.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass

from PIL import Image

from sepconv.export.preprocessing import PreprocessError, convertible, to_rgb
from sepconv.service.errors import InvalidInput, TooLarge, UnsupportedMediaType

FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
ACCEPTED = "PNG, JPEG or WebP"

_OTHER = ((b"GIF87a", "GIF"), (b"GIF89a", "GIF"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"8BPS", "PSD"),
          (b"\x00\x00\x01\x00", "ICO"), (b"\xff\x0a", "JPEG XL"), (b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
          (b"qoif", "QOI"), (b"\x97JB2", "JBIG2"), (b"DDS ", "DDS"))
_FTYP_BRANDS = {b"avif": "AVIF", b"avis": "AVIF", b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF", b"msf1": "HEIF"}


@dataclass
class DecodedImage:
    image: Image.Image  # 8-bit RGB
    format: str  # PNG | JPEG | WEBP
    width: int
    height: int
    mode: str  # the file's pixel mode before conversion
    converted: str | None  # what was converted to make it RGB, if anything

    def info(self) -> dict[str, object]:
        return {"format": self.format, "width": self.width, "height": self.height, "mode": self.mode,
                "converted": self.converted}


def sniff(data: bytes) -> str | None:
    """PNG / JPEG / WEBP from the first bytes, else ``None``."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def other_format(data: bytes) -> str | None:
    """The name of another image format the bytes start like (to say it is not supported), else ``None``."""
    for magic, name in _OTHER:
        if data.startswith(magic):
            return name
    if data[:2] == b"BM" and len(data) >= 26 and data[6:10] == b"\x00\x00\x00\x00":  # BMP: reserved words zero
        return "BMP"
    if data[4:8] == b"ftyp":
        return _FTYP_BRANDS.get(data[8:12])
    return None


def webp_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a WebP file's first chunk (lossy ``VP8 ``, lossless ``VP8L``, extended ``VP8X``)."""
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        w, h = struct.unpack_from("<HH", data, 26)
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        (bits,) = struct.unpack_from("<I", data, 21)
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(data) >= 30:
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    return None


_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk (always the first)."""
    if len(data) >= 24 and data[12:16] == b"IHDR":
        return struct.unpack_from(">II", data, 16)
    return None


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header (the first SOF marker, before the first scan)."""
    pos, size = 2, len(data)
    while pos + 4 <= size:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        if marker == 0xDA:  # start of scan before any frame header
            return None
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if marker in _SOF:
            if pos + 9 > size:
                return None
            height, width = struct.unpack_from(">HH", data, pos + 5)
            return width, height
        pos += 2 + length
    return None


HEADER_SIZE = {"PNG": png_size, "JPEG": jpeg_size, "WEBP": webp_size}


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width < 1 or height < 1:
        raise InvalidInput(f"the image declares a size of {width} x {height} pixels")
    if width * height > max_pixels:
        raise TooLarge(f"the image is {width} x {height} = {width * height:,} pixels; this server decodes at most "
                       f"{max_pixels:,} (SEPCONV_CLASSIFY_MAX_PIXELS)")


def decode_image(data: bytes, max_pixels: int) -> DecodedImage:
    """The image in ``data`` as 8-bit RGB (see the module docstring for what is refused, and how)."""
    if not data:
        raise InvalidInput(f"the image is empty: send a {ACCEPTED} file")
    fmt = sniff(data)
    if fmt is None:
        other = other_format(data)
        if other is not None:
            raise UnsupportedMediaType(f"{other} images are not supported: send {ACCEPTED}")
        raise InvalidInput(f"the body is not an image: send the bytes of a {ACCEPTED} file")
    size = HEADER_SIZE[fmt](data)  # Pillow's WebP decoder allocates its canvas on open: check before it
    if size is None:
        raise InvalidInput(f"the {fmt} image cannot be read: its header gives no image size")
    _check_size(*size, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit is checked below
            image = Image.open(io.BytesIO(data), formats=[fmt])  # reads the header only
    except Image.DecompressionBombError as exc:
        raise TooLarge(f"the image declares too many pixels ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for a bad header
        raise InvalidInput(f"the {fmt} image cannot be read: {_reason(exc)}") from None
    width, height = image.size
    _check_size(width, height, max_pixels)
    frames = getattr(image, "n_frames", 1)
    if frames > 1 and image.format != "MPO":
        raise InvalidInput(f"animated images are not supported (this {fmt} has {frames} frames): send one frame")
    mode = image.mode
    if not convertible(mode):
        raise InvalidInput(f"{fmt} images of pixel mode {mode!r} are not supported (8-bit RGB, greyscale, palette, "
                           "RGBA, CMYK or 16-bit greyscale)")
    try:
        image.load()
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt data: OSError, SyntaxError, zlib errors...
        raise InvalidInput(f"the {fmt} image is truncated or corrupt: {_reason(exc)}") from None
    try:
        rgb, converted = to_rgb(image)
    except PreprocessError as exc:
        raise InvalidInput(str(exc)) from None
    if frames > 1:
        converted = "; ".join(filter(None, [converted, f"first of {frames} pictures of a multi-picture JPEG"]))
    return DecodedImage(rgb, fmt, width, height, mode, converted)


def _reason(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__
