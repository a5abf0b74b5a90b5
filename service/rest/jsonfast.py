"""V2 JSON infer bodies decoded straight into typed buffers (simdjson), with the plain decoder as the reference.

Contract: :func:`parse` returns exactly the :class:`~sepconv.service.dataplane.types.InferRequest` that
:func:`sepconv.service.rest.codec.parse_infer_request` (orjson + numpy: the reference) returns for the same body,
or ``None`` — then the caller runs the reference path, which also produces every error. The fast path never
answers an error of its own: anything it is not sure of (a parse error, a validation error, a value the reference
converts in its own way) sends the body to the reference, so both paths accept the same bodies with identical
arrays and reject the same bodies with the same errors (``tests/test_json_fast.py`` checks this on thousands of
generated bodies).

How: simdjson parses the body into its tape without a Python object per value; the header's small parts (names,
shapes, parameters, outputs) become Python objects (a bounded walk: :data:`HEADER_NODES`); each numeric input's
``data`` is copied by ``as_buffer`` into a float64 / int64 / uint64 buffer in one C loop and cast to the datatype
(flat lists, as tritonclient sends them, and nested lists whose structure is checked regular: every list of a
level has the same length, numbers only at the deepest level). It applies to every numeric datatype (FP16/32/64,
INT8..64, UINT8..64); it hands the body to the reference for BOOL and BYTES (Python objects either way: ``True`` /
``False`` singletons, one ``bytes`` per string), for integers written as ``1.0``, integers past 2**53 in float
tensors (the reference rounds those once, a double twice), values out of a datatype's range, ``null``, ragged or
irregular lists, nested data of more than :data:`MAX_ROWS` innermost lists, and bodies over :data:`MAX_BODY`.

The JSON structure limits (``json_max_elements``, ``json_max_containers``, checked by
:func:`sepconv.service.rest.body.check_structure` before the reference parses) hold here too, counted from the
parsed structure; the one scan of the body kept (its ``[`` count: :func:`_brackets`, memchr from one ``[`` to the
next, ~0.05 ms per MB when lists are few) is what proves that no list hides where a number should be.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np

from sepconv.service.dataplane.shm import SharedMemoryRegistry
from sepconv.service.dataplane.types import InferRequest
from sepconv.service.datatypes import V2_TO_NUMPY
from sepconv.service.errors import ServiceError
from sepconv.service.rest.codec import json_data, request_from_header

try:
    import simdjson
except ImportError:  # pragma: no cover - a core dependency; without it every body takes the reference path
    simdjson = None

MIN_BODY = 16 * 1024  # smaller JSON headers: orjson is as fast, and the reference path is the one to take
MAX_BODY = 16 * 1024 * 1024  # simdjson's tape is ~5x the text at worst: larger bodies take the reference path
MAX_ROWS = 4096  # nested data: innermost lists checked one by one (Python), so only when there are few
HEADER_NODES = 4096  # values in the header outside the tensors' data (names, shapes, parameters, outputs)
_EXACT = float(2**53)  # integers up to this convert to float64 exactly


class _Fallback(Exception):
    """The fast path does not apply: the caller takes the reference path."""


_local = threading.local()


def _parser() -> Any:
    parser = getattr(_local, "parser", None)
    if parser is None:
        parser = _local.parser = simdjson.Parser()
    return parser


def available() -> bool:
    return simdjson is not None


class _Counter:
    """Values and containers met outside the tensors' data, and the lists among them."""

    __slots__ = ("containers", "lists", "nodes")

    def __init__(self) -> None:
        self.nodes = self.containers = self.lists = 0


def _plain(value: Any, count: _Counter) -> Any:
    """A header value as the Python object orjson would make (bounded: :data:`HEADER_NODES`)."""
    count.nodes += 1
    if count.nodes > HEADER_NODES:
        raise _Fallback
    if isinstance(value, simdjson.Object):
        count.containers += 1
        return {k: _plain(value[k], count) for k in _keys(value)}
    if isinstance(value, simdjson.Array):
        count.containers += 1
        count.lists += 1
        return [_plain(v, count) for v in value]
    return value


def _keys(obj: Any) -> list[str]:
    """An object's keys; a repeated key (orjson keeps its last value, simdjson's lookup the first) -> fallback."""
    keys = list(obj.keys())
    if len(set(keys)) != len(keys):
        raise _Fallback
    return keys


class _Data:
    """An input's ``data``, left in simdjson's tape for :meth:`_Decoder.__call__`."""

    __slots__ = ("array",)

    def __init__(self, array: Any) -> None:
        self.array = array


def _header(doc: Any, count: _Counter) -> dict[str, Any]:
    if not isinstance(doc, simdjson.Object):
        raise _Fallback
    header: dict[str, Any] = {}
    count.containers += 1
    for key in _keys(doc):
        value = doc[key]
        if key == "inputs" and isinstance(value, simdjson.Array):
            count.containers += 1
            count.lists += 1
            inputs = []
            for item in value:
                if not isinstance(item, simdjson.Object):
                    inputs.append(_plain(item, count))
                    continue
                count.containers += 1
                entry = {}
                for k in _keys(item):
                    v = item[k]
                    entry[k] = _Data(v) if k == "data" and isinstance(v, simdjson.Array) else _plain(v, count)
                inputs.append(entry)
            header[key] = inputs
        else:
            header[key] = _plain(value, count)
    return header


def _regular(array: Any, shape_count: int) -> int:
    """The number of lists in nested ``array`` when it is regular with ``shape_count`` numbers (else
    ``_Fallback``): every list of a level has that level's length; that numbers sit only at the deepest level is
    proven by the caller's count of ``[`` in the body."""
    dims = []
    node = array
    while isinstance(node, simdjson.Array):
        dims.append(len(node))
        if not dims[-1]:
            raise _Fallback
        node = node[0]
    if math.prod(dims) != shape_count or math.prod(dims[:-1]) > MAX_ROWS:
        raise _Fallback
    level = [array]
    lists = 1
    for depth, size in enumerate(dims):
        nxt = []
        for node in level:
            if not isinstance(node, simdjson.Array) or len(node) != size:
                raise _Fallback
            if depth + 1 < len(dims):
                nxt.extend(node)
        lists += len(nxt)
        level = nxt
    return lists


class _Decoder:
    """``json_data`` for :func:`request_from_header`: typed buffers from the tape, counting what it decoded."""

    def __init__(self) -> None:
        self.values = 0
        self.lists = 0

    def __call__(self, data: Any, datatype: str, shape: list[int], name: str) -> np.ndarray:
        if not isinstance(data, _Data):
            raise _Fallback  # not a list: the reference says what is wrong
        array = data.array
        dtype = V2_TO_NUMPY[datatype]
        if datatype in ("BOOL", "BYTES") or dtype.kind not in "fiu" or not len(array):
            raise _Fallback
        kind = "d" if dtype.kind == "f" else ("u" if dtype == np.uint64 else "i")
        try:
            buf = array.as_buffer(of_type=kind)
        except (TypeError, ValueError) as exc:  # null, true, strings, 1.5 in an integer tensor, out of range
            raise _Fallback from exc
        values = np.frombuffer(buf, dtype={"d": np.float64, "i": np.int64, "u": np.uint64}[kind])
        count = math.prod(shape)
        if values.size != count:
            raise _Fallback
        self.lists += _regular(array, count) if isinstance(array[0], simdjson.Array) else 1
        self.values += count
        if kind == "d":
            if count and (values.max() >= _EXACT or values.min() <= -_EXACT):
                raise _Fallback  # maybe an integer past 2**53: the reference rounds it once
        elif dtype.itemsize < 8:
            info = np.iinfo(dtype)
            if values.min() < info.min or values.max() > info.max:
                raise _Fallback
        with np.errstate(over="ignore"):  # 1e300 into FP16/FP32 is inf, as in the reference
            return values.astype(dtype, copy=False).reshape(shape)


def _brackets(text: bytes, limit: int) -> int:
    """The number of ``[`` in ``text``, counted up to ``limit + 1``. ``bytes.find`` is memchr (vectorised) and
    the lists are few (the tensors' data are flat lists or :data:`MAX_ROWS` rows at most), where
    ``bytes.count`` compares byte by byte (~0.5 ms per MB)."""
    n, i = 0, text.find(b"[")
    while i >= 0 and n <= limit:
        n += 1
        i = text.find(b"[", i + 1)
    return n


def parse(body: bytes, header_length: int | None, shm: SharedMemoryRegistry | None, max_elements: int,
          max_containers: int, *, min_body: int = MIN_BODY) -> InferRequest | None:
    """The request in ``body``, or ``None`` when the reference path must decode it (see the module docstring)."""
    if simdjson is None:
        return None
    if header_length is not None:
        if header_length < 0 or header_length > len(body):
            return None
        text, binary = body[:header_length], memoryview(body)[header_length:]
    else:
        text, binary = body, memoryview(b"")
    if not min_body <= len(text) <= MAX_BODY:
        return None
    count, decoder = _Counter(), _Decoder()
    try:
        try:
            doc = _parser().parse(text)
        except RuntimeError:  # proxies of an earlier document still alive (an exception kept them): a new parser
            _local.parser = None
            doc = _parser().parse(text)
    except (ValueError, RuntimeError, UnicodeDecodeError):
        return None
    try:
        request = request_from_header(_header(doc, count), binary, shm, decoder)
    except (_Fallback, ServiceError, ValueError, TypeError, OverflowError, IndexError, KeyError):
        return None
    lists = count.lists + decoder.lists
    if _brackets(text, lists) != lists:  # a list where a number should be (or a bracket in a string: the reference)
        return None
    containers = count.containers + decoder.lists
    if containers > max_containers or containers + count.nodes + decoder.values > max_elements:
        return None  # the reference answers 413
    return request


__all__ = ["available", "json_data", "parse"]
