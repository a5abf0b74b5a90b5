"""Tensors in ``/v1/conv`` requests and responses: nested JSON lists or base64.

Two encodings, chosen by the client per tensor:

* a nested list of numbers, e.g. ``[[[[1, 2], [3, 4]]]]``;
* ``{"shape": [...], "datatype": "FP32", "b64": "<base64 of little-endian float32 bytes>"}``.

The response's ``output`` uses the encoding of the request's ``input``.

Non-finite values are accepted and propagated, as TensorFlow does. In a nested list they are written as the
strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` (strict JSON has no literal for them); on input those
strings, the bare ``NaN``/``Infinity``/``-Infinity`` tokens Python and JavaScript emit, and ``null`` (read as
NaN) are all accepted. Base64 tensors carry them natively as IEEE-754 bits.

A tensor is first *peeked* (:func:`peek`): its shape is read without decoding anything, so that the size
limits are enforced before any allocation; :func:`decode` then produces the float32 array.

Errors: a malformed tensor is :class:`~sepconv.service.errors.InvalidInput` (400), a datatype other than FP32
:class:`~sepconv.service.errors.Unprocessable` (422).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from sepconv.service.errors import InvalidInput, Unprocessable

LIST = "list"
B64 = "b64"
DATATYPE = "FP32"
NONFINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}
_B64_KEYS = {"shape", "datatype", "b64"}


@dataclass(frozen=True)
class TensorRef:
    """A request tensor whose shape is known but whose values are not decoded yet."""

    field: str
    shape: tuple[int, ...]
    encoding: str
    raw: Any

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def loads(body: bytes) -> Any:
    """The JSON document of a body; besides strict JSON, the bare ``NaN`` / ``Infinity`` / ``-Infinity``
    tokens Python and JavaScript emit (read by the stdlib parser when orjson refuses them)."""
    if not body.strip():
        raise InvalidInput("empty body: send a JSON object with input and filter(s)")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise InvalidInput(f"malformed JSON body: {exc}") from None


def _peek_list(field: str, value: list) -> tuple[int, ...]:
    """The shape of a nested list read along its first elements (raggedness is caught by :func:`decode`)."""
    shape: list[int] = []
    node: Any = value
    while isinstance(node, list):
        shape.append(len(node))
        if not node:
            break
        node = node[0]
        if len(shape) > 8:
            raise InvalidInput(f"{field}: nested list is deeper than 8 levels")
    if isinstance(node, (dict, bool)):
        raise InvalidInput(f"{field}: nested list holds {type(node).__name__} values; expected numbers")
    return tuple(shape)


def _peek_b64(field: str, value: dict) -> tuple[int, ...]:
    unknown = set(value) - _B64_KEYS
    missing = _B64_KEYS - set(value) - {"datatype"}
    if unknown or missing:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(sorted(missing))}")
        if unknown:
            parts.append(f"unknown key(s) {', '.join(sorted(unknown))}")
        raise InvalidInput(f"{field}: an encoded tensor is {{\"shape\", \"datatype\": \"FP32\", \"b64\"}}; "
                           f"{'; '.join(parts)}")
    datatype = value.get("datatype", DATATYPE)
    if not isinstance(datatype, str) or datatype.upper() != DATATYPE:
        raise Unprocessable(f"{field}: datatype {datatype!r} is not supported; /v1/conv computes in float32, send "
                            f"\"FP32\" (little-endian float32 bytes)")
    shape = value["shape"]
    if (not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
            or any(d < 0 for d in shape)):
        raise InvalidInput(f"{field}: shape must be a list of non-negative ints, got {shape!r}")
    if len(shape) > 8:
        raise InvalidInput(f"{field}: shape has {len(shape)} dimensions; at most 8 are accepted")
    if not isinstance(value["b64"], str):
        raise InvalidInput(f"{field}: b64 must be a base64 string")
    return tuple(shape)


def peek(field: str, value: Any) -> TensorRef:
    """Read a tensor's shape and encoding without decoding its values."""
    if isinstance(value, list):
        return TensorRef(field, _peek_list(field, value), LIST, value)
    if isinstance(value, dict):
        return TensorRef(field, _peek_b64(field, value), B64, value)
    raise InvalidInput(f"{field} must be a nested list of numbers or {{\"shape\", \"datatype\": \"FP32\", \"b64\"}}, "
                       f"got {type(value).__name__}")


def _decode_b64(ref: TensorRef) -> np.ndarray:
    text: str = ref.raw["b64"]
    if "\n" in text or " " in text:  # MIME-style line wrapping (base64.encodebytes)
        text = "".join(text.split())
    want = ref.size * 4
    encoded = 4 * math.ceil(want / 3)
    stripped = text.rstrip("=")
    if not (encoded - 2 <= len(stripped) <= encoded) or len(text) > encoded:
        got = len(stripped) * 3 // 4
        raise InvalidInput(f"{ref.field}: b64 holds about {got} bytes, but shape {list(ref.shape)} FP32 needs "
                           f"{want} bytes")
    try:
        data = base64.b64decode(stripped + "=" * (-len(stripped) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"{ref.field}: b64 is not valid base64 ({exc})") from None
    if len(data) != want:
        raise InvalidInput(f"{ref.field}: b64 holds {len(data)} bytes, but shape {list(ref.shape)} FP32 needs "
                           f"{want} bytes")
    return np.frombuffer(data, dtype="<f4").astype(np.float32, copy=False).reshape(ref.shape)


def _holds_bool(raw: list) -> bool:
    """Whether a nested list holds ``true``/``false`` anywhere (numpy would take them as 1/0). Serialised again,
    the list's only tokens that can spell them are the booleans: numbers cannot, and any string is refused by the
    conversion anyway."""
    text = orjson.dumps(raw)
    return b"true" in text or b"false" in text


def _decode_list(ref: TensorRef) -> np.ndarray:
    if _holds_bool(ref.raw):
        raise InvalidInput(f"{ref.field}: nested list holds bool values (true/false); expected numbers")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # overflow to ±inf, as a float32 cast does
            arr = np.array(ref.raw, dtype=np.float32)
    except ValueError as exc:
        text = str(exc)
        if "inhomogeneous" in text or "sequence" in text:
            raise InvalidInput(f"{ref.field}: ragged nested list (rows of different lengths; shape starts "
                               f"{list(ref.shape)})") from None
        raise InvalidInput(f"{ref.field}: values must be numbers (or \"NaN\"/\"Infinity\"/\"-Infinity\"): "
                           f"{text}") from None
    except TypeError as exc:
        raise InvalidInput(f"{ref.field}: values must be numbers: {exc}") from None
    if arr.shape != ref.shape:
        raise InvalidInput(f"{ref.field}: ragged nested list (shape along the first elements is {list(ref.shape)}, "
                           f"the whole list is {list(arr.shape)})")
    return arr


def decode(ref: TensorRef) -> np.ndarray:
    """The tensor as a C-contiguous float32 array of ``ref.shape``."""
    arr = _decode_b64(ref) if ref.encoding == B64 else _decode_list(ref)
    return np.ascontiguousarray(arr)


def _nonfinite_to_str(value: Any) -> Any:
    if isinstance(value, list):
        return [_nonfinite_to_str(v) for v in value]
    if value != value:
        return NONFINITE["nan"]
    if value in (math.inf, -math.inf):
        return NONFINITE["inf"] if value > 0 else NONFINITE["-inf"]
    return value


def encode(array: np.ndarray, encoding: str) -> Any:
    """``array`` in ``encoding`` (:data:`LIST` or :data:`B64`), ready for JSON."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    if encoding == B64:
        return {"shape": list(array.shape), "datatype": DATATYPE,
                "b64": base64.b64encode(array.astype("<f4", copy=False).tobytes()).decode("ascii")}
    values = array.tolist()
    if not bool(np.isfinite(array).all()):
        values = _nonfinite_to_str(values)
    return values


def from_b64(value: dict) -> np.ndarray:
    """Decode a ``{"shape", "datatype", "b64"}`` object (for clients and tests)."""
    return decode(peek("tensor", value))


def to_b64(array: np.ndarray) -> dict:
    return encode(array, B64)
