"""Image preprocessing the way a model's weights expect it: the ONE place that turns a picture into a model input.

Contract: :func:`preprocess` ``(PIL image, resolution, style, layout) -> float32 array`` of shape ``[3, R, R]``
(``NCHW``) or ``[R, R, 3]`` (``NHWC``), no batch axis. Styles:

* ``"keras"`` (Keras applications' ``'tf'`` mode; random weights use it too): RGB, PIL bilinear resize to ``R x R``,
  then ``x / 127.5 - 1``.
* ``"torchvision"`` (torchvision's ImageNet transforms): RGB, resize the short side to ``int(R * 256 / 224)``
  (bilinear), centre crop ``R x R``, ``x / 255``, then ``(x - mean) / std`` per channel.

:func:`style_of` picks the style from a model's metadata (``MetaKey`` keys: where the weights came from).
numpy and Pillow only (Pillow imported when an image is decoded), so the server can reuse it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sepconv.export.errors import ExportError
from sepconv.export.repository.layout import MetaKey

STYLES = ("keras", "torchvision")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})


def style_of(metadata: Mapping[str, str]) -> str:
    """``"torchvision"`` for a model whose weights came from torchvision, else ``"keras"``."""
    if metadata.get(MetaKey.WEIGHTS_ORIGIN) == "torchvision":
        return "torchvision"
    return "keras"


def preprocess(image: Any, resolution: int, style: str, layout: str) -> np.ndarray:
    """One PIL image -> the model input for one image (float32, ``[3,R,R]`` or ``[R,R,3]``)."""
    from PIL import Image  # noqa: PLC0415

    if style not in STYLES:
        raise ExportError(f"unknown preprocessing style {style!r}: one of {', '.join(STYLES)}")
    if layout not in ("NCHW", "NHWC"):
        raise ExportError(f"unknown layout {layout!r}: NCHW or NHWC")
    r = int(resolution)
    image = image.convert("RGB")
    if style == "keras":
        x = np.asarray(image.resize((r, r), Image.BILINEAR), np.float32) / 127.5 - 1.0
    else:
        w, h = image.size
        short = int(r * 256 / 224)
        scale = short / min(w, h)
        size = (max(short, round(w * scale)), max(short, round(h * scale)))
        image = image.resize(size, Image.BILINEAR)
        left, top = (size[0] - r) // 2, (size[1] - r) // 2
        image = image.crop((left, top, left + r, top + r))
        x = (np.asarray(image, np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    x = x.astype(np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)) if layout == "NCHW" else x


def load_image(path: Path) -> Any:
    """Decode one image file fully (a truncated or non-image file raises :class:`ExportError` naming it)."""
    from PIL import Image, UnidentifiedImageError  # noqa: PLC0415

    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ExportError(f"cannot read image {path}: {exc}") from None
