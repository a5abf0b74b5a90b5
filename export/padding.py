"""TensorFlow's stride/dilation/padding rules, defined once, and :class:`ConvGeometry`, the value that carries them.

Every convolution in the project (the networks, the single-op graphs behind `/v1/conv`, the
accounting) resolves its padding here, so `SAME` means exactly what `tf.nn.conv2d` means.

A :class:`ConvGeometry` is read once (strides and dilations to ``(h, w)`` pairs, padding to a mode or explicit
:class:`Pads`, each checked) and then only answers questions: the pads and output size for an input
(:meth:`ConvGeometry.resolve`), or itself with explicit pads (:meth:`ConvGeometry.resolved`, what a cache key holds).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

from sepconv.export.errors import ExportError

PaddingSpec = str | Sequence[Sequence[int]] | Sequence[int]
LAYOUTS = ("NHWC", "NCHW")
PADDING_MODES = ("SAME", "VALID", "SYMMETRIC")

# Larger strides, dilations or pads than this are nonsense for an image and overflow ONNX's int64 attributes.
MAX_SPATIAL = 2**31 - 1


def _int(value: object, what: str, spec: object) -> int:
    """``value`` as an int: Python/numpy integers only (not bools, floats or strings), at most MAX_SPATIAL."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ExportError(f"{what} must be an int or a list of ints, got {spec!r}")
    if abs(int(value)) > MAX_SPATIAL:
        raise ExportError(f"{what} {spec!r} is out of range (at most {MAX_SPATIAL})")
    return int(value)


def spatial_pair(value: int | Sequence[int], what: str, data_format: str = "NHWC") -> tuple[int, int]:
    """Read strides/dilations as TF accepts them: an int, ``[h, w]`` or the 4-element form."""
    if not isinstance(value, (Sequence, numbers.Integral)) or isinstance(value, (str, bytes)):
        raise ExportError(f"{what} must be an int or a list of ints, got {value!r}")
    if isinstance(value, numbers.Integral):
        v = _int(value, what, value)
        pair = (v, v)
    else:
        items = [_int(v, what, value) for v in value]
        if len(items) == 1:
            pair = (items[0], items[0])
        elif len(items) == 2:
            pair = (items[0], items[1])
        elif len(items) == 4:
            n_ax, c_ax = (0, 3) if data_format == "NHWC" else (0, 1)
            if items[n_ax] != 1 or items[c_ax] != 1:
                raise ExportError(f"{what} {items}: the batch and channel entries must be 1 ({data_format})")
            pair = (items[1], items[2]) if data_format == "NHWC" else (items[2], items[3])
        else:
            raise ExportError(f"{what} must have 1, 2 or 4 entries, got {len(items)}")
    if pair[0] < 1 or pair[1] < 1:
        raise ExportError(f"{what} must be >= 1, got {list(pair)}")
    return pair


@dataclass(frozen=True)
class Pads:
    top: int
    bottom: int
    left: int
    right: int

    def onnx(self) -> list[int]:
        """ONNX ``pads`` order: [top, left, bottom, right]."""
        return [self.top, self.left, self.bottom, self.right]

    @property
    def is_zero(self) -> bool:
        return not (self.top or self.bottom or self.left or self.right)


def effective_kernel(k: int, dilation: int) -> int:
    return (k - 1) * dilation + 1


def same_pad_1d(size: int, k: int, stride: int, dilation: int) -> tuple[int, int]:
    """TF SAME: out = ceil(in/stride); the odd pixel goes after."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + effective_kernel(k, dilation) - size, 0)
    return total // 2, total - total // 2


def symmetric_pad_1d(k: int, dilation: int) -> tuple[int, int]:
    """PyTorch-style ``padding=(k-1)*d//2`` on both sides."""
    p = effective_kernel(k, dilation) // 2
    return p, p


def parse_padding(padding: PaddingSpec | Pads, data_format: str = "NHWC") -> str | Pads:
    """Read a TF padding argument: a mode (``"SAME"``, ``"VALID"``, ``"SYMMETRIC"`` (PyTorch style), any case)
    or explicit pads — TF's ``[[0,0],[top,bottom],[left,right],[0,0]]`` (NHWC order; NCHW puts the channel pair
    second), ``[[top,bottom],[left,right]]`` or a flat ``[top, bottom, left, right]``."""
    if isinstance(padding, Pads):
        return padding
    if isinstance(padding, str):
        mode = padding.upper()
        if mode in PADDING_MODES:
            return mode
        raise ExportError(f"padding must be 'SAME', 'VALID', 'SYMMETRIC' or explicit pads, got {padding!r}")
    if not isinstance(padding, Sequence):
        raise ExportError(f"padding must be 'SAME', 'VALID', 'SYMMETRIC' or explicit pads, got {padding!r}")
    what = "explicit padding"
    rows = [[_int(v, what, padding) for v in p] if isinstance(p, (list, tuple)) else _int(p, what, padding)
            for p in padding]
    if len(rows) == 4 and all(isinstance(r, list) for r in rows):
        if any(len(r) != 2 for r in rows):
            raise ExportError(f"explicit padding needs 4 pairs [before, after], got {padding!r}")
        n_ax, c_ax, h_ax, w_ax = (0, 3, 1, 2) if data_format == "NHWC" else (0, 1, 2, 3)
        if rows[n_ax] != [0, 0] or rows[c_ax] != [0, 0]:
            raise ExportError(f"explicit padding {rows}: batch and channel pads must be [0, 0] ({data_format})")
        pads = Pads(rows[h_ax][0], rows[h_ax][1], rows[w_ax][0], rows[w_ax][1])
    elif len(rows) == 2 and all(isinstance(r, list) and len(r) == 2 for r in rows):
        pads = Pads(rows[0][0], rows[0][1], rows[1][0], rows[1][1])
    elif len(rows) == 4 and all(isinstance(r, int) for r in rows):
        pads = Pads(*rows)  # type: ignore[arg-type]
    else:
        raise ExportError(
            f"explicit padding must be [[0,0],[top,bottom],[left,right],[0,0]], got {padding!r}"
        )
    if min(pads.top, pads.bottom, pads.left, pads.right) < 0:
        raise ExportError(f"explicit padding must be >= 0, got {padding!r}")
    return pads


def mode_pads(mode: str, in_hw: tuple[int, int], kernel_hw: tuple[int, int], strides: tuple[int, int],
              dilations: tuple[int, int]) -> Pads:
    """The pads a padding mode (one of :data:`PADDING_MODES`) gives on this input."""
    if mode == "SAME":
        return Pads(*same_pad_1d(in_hw[0], kernel_hw[0], strides[0], dilations[0]),
                    *same_pad_1d(in_hw[1], kernel_hw[1], strides[1], dilations[1]))
    if mode == "SYMMETRIC":
        return Pads(*symmetric_pad_1d(kernel_hw[0], dilations[0]), *symmetric_pad_1d(kernel_hw[1], dilations[1]))
    return Pads(0, 0, 0, 0)  # VALID


def conv_output_hw(
    in_hw: tuple[int, int],
    kernel_hw: tuple[int, int],
    strides: tuple[int, int],
    dilations: tuple[int, int],
    pads: Pads,
) -> tuple[int, int]:
    """Output size of a convolution; refuses a kernel larger than the padded input."""
    out = []
    for size, k, s, d, before, after, axis in (
        (in_hw[0], kernel_hw[0], strides[0], dilations[0], pads.top, pads.bottom, "height"),
        (in_hw[1], kernel_hw[1], strides[1], dilations[1], pads.left, pads.right, "width"),
    ):
        padded = size + before + after
        ek = effective_kernel(k, d)
        if ek > padded:
            raise ExportError(
                f"kernel {axis} {k} (dilated to {ek}) is larger than the padded input {axis} {padded}"
            )
        out.append((padded - ek) // s + 1)
    return out[0], out[1]


@dataclass(frozen=True, init=False)
class ConvGeometry:
    """Where a convolution's window goes: TF's ``strides``, ``padding``, ``dilations`` and ``data_format``.

    Built from any form TF accepts (an int, ``[h, w]`` or the 4-element form; a padding mode or explicit pads)
    and checked at once; afterwards ``strides``/``dilations`` are ``(h, w)`` pairs and ``padding`` is a mode
    (``"SAME"``, ``"VALID"``, ``"SYMMETRIC"``) or :class:`Pads`. ``data_format`` only says how the 4-element
    forms are ordered (the graph itself is NCHW). Equal geometries compare and hash equal.
    The default is stride 1, ``SAME``, no dilation, NHWC.
    """

    strides: tuple[int, int]
    padding: str | Pads
    dilations: tuple[int, int]
    data_format: str

    def __init__(self, strides: int | Sequence[int] = 1, padding: PaddingSpec | Pads = "SAME",
                 dilations: int | Sequence[int] = 1, data_format: str = "NHWC") -> None:
        if data_format not in LAYOUTS:
            raise ExportError(f"data_format must be NHWC or NCHW, got {data_format!r}")
        object.__setattr__(self, "data_format", data_format)
        object.__setattr__(self, "strides", spatial_pair(strides, "strides", data_format))
        object.__setattr__(self, "dilations", spatial_pair(dilations, "dilations", data_format))
        object.__setattr__(self, "padding", parse_padding(padding, data_format))

    def pads(self, in_hw: tuple[int, int], kernel_hw: tuple[int, int]) -> Pads:
        """The explicit pads on an ``in_hw`` input with a ``kernel_hw`` kernel."""
        if isinstance(self.padding, Pads):
            return self.padding
        return mode_pads(self.padding, in_hw, kernel_hw, self.strides, self.dilations)

    def resolve(self, in_hw: tuple[int, int], kernel_hw: tuple[int, int]) -> tuple[Pads, tuple[int, int]]:
        """The pads and the output ``(height, width)``; refuses a kernel larger than the padded input."""
        pads = self.pads(in_hw, kernel_hw)
        return pads, conv_output_hw(in_hw, kernel_hw, self.strides, self.dilations, pads)

    def resolved(self, in_hw: tuple[int, int], kernel_hw: tuple[int, int]) -> ConvGeometry:
        """This geometry with its padding made explicit for that input (one form per graph: a cache key)."""
        pads = self.pads(in_hw, kernel_hw)
        if pads == self.padding:
            return self
        same = object.__new__(ConvGeometry)  # every field is already checked: skip __init__ (the /v1/conv path)
        for name, value in (("strides", self.strides), ("padding", pads), ("dilations", self.dilations),
                            ("data_format", self.data_format)):
            object.__setattr__(same, name, value)
        return same
