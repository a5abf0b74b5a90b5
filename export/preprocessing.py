"""Image preprocessing for the exported classifiers: one definition, used by the server's classify route and by
whatever else turns pictures into model inputs (INT8 calibration from an image folder). Needs numpy and Pillow only.

* :func:`style_for` — the style a model needs, from its ONNX metadata: ``"torchvision"`` for weights imported
  from a torchvision file (``MetaKey.WEIGHTS_ORIGIN``), ``"keras"`` for Keras weights and seeded random ones
  (which follow Keras' conventions).
* :func:`to_rgb` — any decoded PIL image to 8-bit RGB, saying what was converted (greyscale, palette, alpha,
  CMYK, 16-bit greyscale scaled to 8 bits); a mode that has no faithful RGB form raises :class:`PreprocessError`.
* :func:`preprocess` — ``(RGB PIL image, resolution, style, layout) -> float32 array`` of one image,
  ``[3, R, R]`` (NCHW) or ``[R, R, 3]`` (NHWC), no batch axis:

  - ``keras`` (``keras.applications.mobilenet_v2.preprocess_input`` after ``keras.utils.load_img``): PIL bilinear
    resize to R x R, then ``x / 127.5 - 1``;
  - ``torchvision`` (``Resize(int(R*256/224))``, ``CenterCrop(R)``, ``ToTensor()``, ``Normalize(mean, std)``):
    PIL bilinear resize of the short side to ``int(R*256/224)`` (the long side ``int(S*long/short)``), centre crop
    R x R at ``int(round((size - R) / 2))``, ``/ 255``, then ``(x - mean) / std`` per channel with ImageNet's
    mean and std — all in float32, as torch computes it.

* :func:`describe` — the same recipe as a JSON-able dict (what the classify route echoes).
* :func:`load_image` — one image file decoded fully and made RGB (INT8 calibration folders).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sepconv.export.errors import ExportError
from sepconv.export.repository.layout import MetaKey

if TYPE_CHECKING:
    from PIL import Image

KERAS = "keras"
TORCHVISION = "torchvision"
STYLES = (KERAS, TORCHVISION)
LAYOUTS = ("NCHW", "NHWC")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCHVISION_RESIZE_RATIO = (256, 224)  # torchvision's ImageNet evaluation: resize to 256, crop 224

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})

_GREY_MODES = {
    "L": "greyscale", "1": "1-bit black and white", "LA": "greyscale with alpha",
    "P": "palette", "PA": "palette with alpha", "RGBA": "RGB with alpha", "RGBa": "RGB with alpha",
    "RGBX": "RGB with padding", "CMYK": "CMYK", "YCbCr": "YCbCr", "LAB": "CIELab", "HSV": "HSV",
}
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class PreprocessError(ExportError):
    """An image or recipe this module cannot turn into a model input (a ``ValueError``)."""


def style_for(metadata: dict[str, str]) -> str:
    """``"torchvision"`` when the model's weights came from a torchvision file, else ``"keras"`` (Keras files,
    seeded random weights, and models that say nothing). An origin this module does not know is refused."""
    origin = (metadata.get(MetaKey.WEIGHTS_ORIGIN) or "").strip().lower()
    if origin in ("", KERAS):
        return KERAS
    if origin == TORCHVISION:
        return TORCHVISION
    raise PreprocessError(f"the model's weights come from {origin!r}; only Keras-style and torchvision "
                          "preprocessing are known")


def convertible(mode: str) -> bool:
    """Whether :func:`to_rgb` takes images of this Pillow mode (known from a file's header, before decoding)."""
    return mode == "RGB" or mode in _GREY_MODES or mode in _SIXTEEN_BIT


def to_rgb(image: Image.Image) -> tuple[Image.Image, str | None]:
    """(8-bit RGB image, what was converted or ``None``). Alpha is dropped as ``Image.convert("RGB")`` drops it
    (what ``keras.utils.load_img`` and torchvision's ImageNet loaders do); 16-bit greyscale is scaled to 8 bits
    (``round(v / 257)``) rather than clipped; float images are refused."""
    mode = image.mode
    if mode == "RGB":
        return image, None
    if mode in _SIXTEEN_BIT:
        from PIL import Image  # noqa: PLC0415

        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode != "I" or values.max(initial=0) > 255 else 255.0
        if values.min(initial=0) < 0 or values.max(initial=0) > 65535:
            raise PreprocessError(f"{mode} image with values outside 0..65535 cannot be shown as RGB")
        grey = np.rint(values * (255.0 / top)).astype(np.uint8)
        bits = "16-bit" if top > 255 else "32-bit integer"
        return Image.fromarray(grey, "L").convert("RGB"), f"{bits} greyscale ({mode}) scaled to 8-bit RGB"
    if mode in _GREY_MODES:
        what = _GREY_MODES[mode] if _GREY_MODES[mode] == mode else f"{_GREY_MODES[mode]} ({mode})"
        return image.convert("RGB"), f"{what} converted to RGB"
    raise PreprocessError(f"images of mode {mode!r} are not supported (send 8-bit RGB, greyscale, palette, "
                          "RGBA, CMYK or 16-bit greyscale)")


def _check(resolution: int, style: str, layout: str) -> None:
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise PreprocessError(f"resolution must be a positive integer, got {resolution!r}")
    if style not in STYLES:
        raise PreprocessError(f"preprocessing style must be one of {', '.join(STYLES)}, got {style!r}")
    if layout not in LAYOUTS:
        raise PreprocessError(f"layout must be NCHW or NHWC, got {layout!r}")


def torchvision_resize_size(resolution: int) -> int:
    """The short side torchvision's recipe resizes to before its centre crop: ``int(R * 256 / 224)``."""
    num, den = TORCHVISION_RESIZE_RATIO
    return int(resolution * num / den)


def torchvision_resized_shape(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) after ``transforms.Resize(size)``: the short side becomes ``size``, the long side
    ``int(size * long / short)`` (torchvision's ``_compute_resized_output_size``)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def centre_crop_box(width: int, height: int, crop: int) -> tuple[int, int, int, int]:
    """PIL's (left, top, right, bottom) of torchvision's ``CenterCrop(crop)`` (offsets ``int(round(d / 2))``)."""
    top = int(round((height - crop) / 2.0))
    left = int(round((width - crop) / 2.0))
    return left, top, left + crop, top + crop


def preprocess(image: Image.Image, resolution: int, style: str, layout: str) -> np.ndarray:
    """One RGB image as the model's float32 input, without the batch axis (see the module docstring)."""
    from PIL import Image  # noqa: PLC0415

    _check(resolution, style, layout)
    if image.mode != "RGB":
        raise PreprocessError(f"preprocess needs an RGB image, got mode {image.mode!r} (convert it with to_rgb)")
    if style == KERAS:
        if image.size != (resolution, resolution):
            image = image.resize((resolution, resolution), Image.Resampling.BILINEAR)
        x = np.asarray(image, dtype=np.float32)
        x = x / np.float32(127.5) - np.float32(1.0)
    else:
        width, height = torchvision_resized_shape(*image.size, torchvision_resize_size(resolution))
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.BILINEAR)
        image = image.crop(centre_crop_box(width, height, resolution))
        x = np.asarray(image, dtype=np.float32) / np.float32(255.0)
        x = (x - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    x = x.astype(np.float32, copy=False)
    return np.ascontiguousarray(x.transpose(2, 0, 1)) if layout == "NCHW" else np.ascontiguousarray(x)


def describe(resolution: int, style: str, layout: str) -> dict[str, Any]:
    """The recipe :func:`preprocess` applies, as JSON-able fields."""
    _check(resolution, style, layout)
    out: dict[str, Any] = {"style": style, "resolution": resolution, "layout": layout, "interpolation": "bilinear"}
    if style == KERAS:
        out.update({"resize": [resolution, resolution], "crop": None, "scale": "x / 127.5 - 1",
                    "mean": None, "std": None})
    else:
        size = torchvision_resize_size(resolution)
        out.update({"resize": f"short side to {size}", "crop": [resolution, resolution],
                    "scale": "x / 255, then (x - mean) / std", "mean": list(IMAGENET_MEAN),
                    "std": list(IMAGENET_STD)})
    return out


def load_image(path: Path) -> Image.Image:
    """Decode one image file fully, as 8-bit RGB (a truncated, non-image or unconvertible file raises
    :class:`PreprocessError` naming it)."""
    from PIL import Image, UnidentifiedImageError  # noqa: PLC0415

    try:
        with Image.open(path) as im:
            im.load()
            rgb, _ = to_rgb(im)
            return rgb.copy() if rgb is im else rgb
    except PreprocessError as exc:
        raise PreprocessError(f"cannot use image {path}: {exc}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise PreprocessError(f"cannot read image {path}: {exc}") from None
