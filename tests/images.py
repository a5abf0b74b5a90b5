"""Test images made here (no files shipped): smooth synthetic pictures in every format and mode, and crafted
files that declare what they do not hold (decompression bombs, truncated data)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def picture(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth RGB picture (gradients and waves, no RNG) that networks respond to differently per seed."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    chans = [np.sin(0.05 * (seed + 1) * x + 0.9 * c + seed) * np.cos(0.031 * y * (c + 1) - 0.4 * seed)
             for c in range(3)]
    arr = np.stack(chans, axis=-1) * 0.5 + 0.5
    arr = arr * np.linspace(0.3, 1.0, width)[None, :, None]
    return Image.fromarray(np.clip(arr * 255, 0, 255).round().astype(np.uint8), "RGB")


def encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid-looking PNG of a few dozen bytes whose header declares ``width x height`` RGB pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def webp_bomb(width: int = 16_384, height: int = 16_384) -> bytes:
    """An extended (VP8X) WebP header declaring a ``width x height`` canvas, and no image data worth the name."""
    vp8x = bytes([0, 0, 0, 0]) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    body = b"WEBP" + b"VP8X" + struct.pack("<I", len(vp8x)) + vp8x
    return b"RIFF" + struct.pack("<I", len(body)) + body


def jpeg_bomb(width: int = 60_000, height: int = 60_000) -> bytes:
    """A small real JPEG whose frame header (SOF0) is rewritten to declare ``width x height``."""
    data = bytearray(encode(picture(16, 16), "JPEG"))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)
