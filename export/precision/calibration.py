"""Calibration inputs for a precision variant, checked against the model's input before anything is built.

* ``.npy``: model inputs ``[N, ...]`` in the model's layout, already preprocessed (floating point, finite). A file
  of another shape, the other layout, an integer dtype (raw pixels) or a pickled object array is refused, naming
  what the model takes.
* a folder of images (``.jpg``, ``.png``, ...): each decoded with Pillow and preprocessed the model's way
  (:mod:`sepconv.export.preprocessing`); an empty folder or an unreadable image is refused, naming it.
* none: :func:`synthetic_inputs` — smooth random pictures, preprocessed the model's way. Not representative of
  real data: the caller warns.

All errors are :class:`~sepconv.export.errors.ExportError`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sepconv.export.errors import ExportError
from sepconv.export.preprocessing import IMAGE_SUFFIXES, load_image, preprocess, style_for
from sepconv.export.repository.layout import MetaKey

MAX_CALIBRATION_INPUTS = 1024
SYNTHETIC_INPUTS = 16


@dataclass(frozen=True)
class InputSpec:
    """What one model input looks like (no batch axis), read off the exporter's metadata."""

    shape: tuple[int, ...]
    layout: str
    resolution: int
    style: str

    @classmethod
    def of(cls, metadata: Mapping[str, str]) -> InputSpec:
        try:
            shape = tuple(int(d) for d in json.loads(metadata[MetaKey.INPUT_SHAPE]))
            return cls(shape, metadata[MetaKey.INPUT_LAYOUT], int(metadata[MetaKey.RESOLUTION]), style_for(metadata))
        except (KeyError, ValueError, TypeError) as exc:
            raise ExportError(f"the model lacks the exporter's input metadata ({exc})") from None

    def describe(self) -> str:
        return f"[N, {', '.join(str(d) for d in self.shape)}] float32 ({self.layout}, {self.style} preprocessing)"


def load_calibration(path: Path, spec: InputSpec) -> tuple[np.ndarray, str]:
    """The calibration batch from ``path`` (a ``.npy`` or a folder of images) and a short description of it."""
    path = Path(path)
    if path.is_dir():
        return _from_images(path, spec)
    if not path.is_file():
        raise ExportError(f"calibration path {str(path)!r} does not exist "
                          "(give a .npy of inputs or a folder of images)")
    if path.suffix.lower() != ".npy":
        raise ExportError(f"calibration file {path.name}: give a .npy of model inputs {spec.describe()} "
                          "or a folder of images")
    return _from_npy(path, spec)


def _from_npy(path: Path, spec: InputSpec) -> tuple[np.ndarray, str]:
    try:
        x = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise ExportError(f"calibration file {path.name} is not a plain numeric .npy array ({exc})") from None
    except (OSError, EOFError) as exc:
        raise ExportError(f"cannot read calibration file {path.name}: {exc}") from None
    if not isinstance(x, np.ndarray) or x.dtype.kind != "f":
        kind = getattr(x, "dtype", type(x))
        hint = " (raw pixels? preprocess them the model's way first, or pass the image folder)" \
            if getattr(x, "dtype", None) is not None and x.dtype.kind in "ui" else ""
        raise ExportError(f"calibration file {path.name} holds {kind} values; the model takes {spec.describe()}{hint}")
    if x.ndim != len(spec.shape) + 1 or tuple(x.shape[1:]) != spec.shape:
        other = (spec.shape[1], spec.shape[2], spec.shape[0]) if spec.layout == "NCHW" else \
            (spec.shape[2], spec.shape[0], spec.shape[1])
        hint = ""
        if x.ndim == len(spec.shape) + 1 and tuple(x.shape[1:]) == other:
            hint = f": that is the {'NHWC' if spec.layout == 'NCHW' else 'NCHW'} layout, the model's is {spec.layout}"
        elif x.ndim == len(spec.shape):
            hint = ": one input without the batch axis? add it (x[None])"
        raise ExportError(f"calibration file {path.name} has shape {list(x.shape)}; the model takes "
                          f"{spec.describe()}{hint}")
    if x.shape[0] < 1:
        raise ExportError(f"calibration file {path.name} holds no inputs (N = 0)")
    if x.shape[0] > MAX_CALIBRATION_INPUTS:
        raise ExportError(f"calibration file {path.name} holds {x.shape[0]} inputs; at most "
                          f"{MAX_CALIBRATION_INPUTS} are used, pass a subset")
    if not np.isfinite(x).all():
        raise ExportError(f"calibration file {path.name} holds NaN or infinite values")
    return np.ascontiguousarray(x, np.float32), f"{path.name} ({x.shape[0]} inputs)"


def _from_images(folder: Path, spec: InputSpec) -> tuple[np.ndarray, str]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ExportError(f"calibration folder {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    if len(files) > MAX_CALIBRATION_INPUTS:
        raise ExportError(f"calibration folder {folder} holds {len(files)} images; at most "
                          f"{MAX_CALIBRATION_INPUTS} are used, pass a subset")
    batch = [preprocess(load_image(p), spec.resolution, spec.style, spec.layout) for p in files]
    return np.stack(batch).astype(np.float32), f"{folder.name}/ ({len(files)} images, {spec.style} preprocessing)"


def synthetic_images(n: int, seed: int = 0, size: int = 256) -> list:
    """``n`` smooth random RGB pictures (low-resolution noise, bilinearly enlarged, plus a gradient)."""
    from PIL import Image  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        cells = int(rng.integers(2, 9))
        small = rng.uniform(0, 255, (cells, cells, 3)).astype(np.uint8)
        im = np.asarray(Image.fromarray(small).resize((size, size), Image.BILINEAR), np.float32)
        ramp = np.linspace(-40, 40, size, dtype=np.float32)[None, :, None] * rng.uniform(-1, 1, 3)
        images.append(Image.fromarray(np.clip(im + ramp, 0, 255).astype(np.uint8)))
    return images


def synthetic_inputs(spec: InputSpec, n: int = SYNTHETIC_INPUTS, seed: int = 0) -> np.ndarray:
    """``n`` synthetic pictures preprocessed the model's way (plumbing only: not representative data)."""
    return np.stack([preprocess(im, spec.resolution, spec.style, spec.layout)
                     for im in synthetic_images(n, seed)]).astype(np.float32)
