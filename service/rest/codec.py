"""Decoding V2 inference requests and encoding responses, JSON and Triton's binary tensor extension.

Request body = a JSON header, optionally followed by raw tensor bytes; the header length comes in the
``Inference-Header-Content-Length`` HTTP header and each binary input says its size in
``parameters.binary_data_size``. Responses put outputs in binary the same way when the client asks
(``binary_data_output`` for all, or ``binary_data`` per requested output). BYTES tensors travel as
4-byte little-endian length + bytes per element.

Decoding produces the data plane's transport-neutral :class:`~sepconv.service.dataplane.types.InferRequest`;
encoding takes its :class:`~sepconv.service.dataplane.types.InferResponse`. A requested output's
``parameters.classification`` (Triton's classification extension) is decoded here, served by the data plane.
Everything here is plain functions over bytes/numpy (no pydantic) to keep the hot path short; every client mistake
raises ``InvalidInput`` (a protocol feature this server does not offer, ``NotSupported``).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson

from sepconv.service.dataplane.shm import SharedMemoryRegistry, tensor_ref
from sepconv.service.dataplane.tensors import (
    check_shape,
    shm_input,
    tensor_bytes,
    tensor_from_bytes,
)
from sepconv.service.dataplane.types import InferRequest, InferResponse, InputTensor, RequestedOutput
from sepconv.service.datatypes import V2_TO_NUMPY
from sepconv.service.errors import InvalidInput

__all__ = ["encode_infer_response", "json_data", "parse_infer_request", "request_from_header"]

_OPT = orjson.OPT_SERIALIZE_NUMPY


def _bad(message: str) -> InvalidInput:
    return InvalidInput(message)




def _shape(value: Any, name: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in value):
        raise _bad(f"input {name!r}: 'shape' must be a list of integers")
    return check_shape(value, name)


def _bool_param(params: dict[str, Any], key: str, where: str) -> bool | None:
    if key not in params:
        return None
    value = params[key]
    if not isinstance(value, bool):
        raise _bad(f"{where}: parameter {key!r} must be true or false")
    return value


def json_data(data: Any, datatype: str, shape: list[int], name: str) -> np.ndarray:
    count = math.prod(shape)
    if datatype == "BYTES":
        flat = data
        if isinstance(flat, list) and flat and isinstance(flat[0], list):
            flat = np.array(flat, dtype=object).reshape(-1).tolist()
        if not isinstance(flat, list):
            raise _bad(f"input {name!r}: 'data' must be a list")
        if len(flat) != count:
            raise _bad(f"input {name!r}: shape {shape} needs {count} elements, 'data' has {len(flat)}")
        items = []
        for x in flat:
            if isinstance(x, str):
                items.append(x.encode("utf-8"))
            elif isinstance(x, dict) and isinstance(x.get("b64"), str):
                try:
                    items.append(base64.b64decode(x["b64"], validate=True))
                except ValueError as exc:
                    raise _bad(f"input {name!r}: bad base64 in BYTES data") from exc
            else:
                raise _bad(f"input {name!r}: BYTES elements must be strings")
        arr = np.empty(count, dtype=object)
        arr[:] = items
        return arr.reshape(shape)
    dtype = V2_TO_NUMPY[datatype]
    if not isinstance(data, list):
        raise _bad(f"input {name!r}: 'data' must be a list (flat or nested)")
    if datatype == "BOOL":
        ok = all(isinstance(x, bool) for x in (data if not data or not isinstance(data[0], list)
                                                 else np.array(data, dtype=object).reshape(-1)))
        if not ok:
            raise _bad(f"input {name!r}: BOOL data must be true/false")
    if datatype != "BOOL":
        # numpy would read "1.5" and true as numbers (Triton answers 400): JSON numbers only
        flat = data if not data or not isinstance(data[0], list) else np.array(data, dtype=object).reshape(-1)
        if flat is not data and any(isinstance(x, list) for x in flat):
            raise _bad(f"input {name!r}: 'data' is not a regular (rectangular) array")
        if not all(type(x) is float or type(x) is int for x in flat):
            raise _bad(f"input {name!r}: {datatype} data must be JSON numbers (no strings, booleans or null)")
    if dtype.kind == "f" and data and not isinstance(data[0], list):
        # the usual case (tritonclient sends flat lists): fromiter skips np.array's shape discovery
        try:
            arr = np.fromiter(data, dtype=dtype, count=len(data))
        except (ValueError, TypeError, OverflowError) as exc:
            raise _bad(f"input {name!r}: 'data' must hold only {datatype} numbers ({exc})") from exc
        if arr.size != count:
            raise _bad(f"input {name!r}: shape {shape} needs {count} elements, 'data' has {arr.size}")
        if np.isnan(arr).any():  # JSON has no NaN: it came from null
            raise _bad(f"input {name!r}: 'data' holds null")
        return arr.reshape(shape)
    try:
        arr = np.array(data, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise _bad(f"input {name!r}: 'data' is not a regular array of {datatype} numbers ({exc})") from exc
    if dtype.kind in "iu" and arr.size:
        # np.array silently truncates floats into ints; refuse non-integers instead
        try:
            probe = np.array(data, dtype=np.float64)
        except (ValueError, TypeError) as exc:
            raise _bad(f"input {name!r}: 'data' is not numeric") from exc
        if not np.array_equal(probe, np.floor(probe)):
            raise _bad(f"input {name!r}: {datatype} data must be integers")
        info = np.iinfo(dtype)
        if probe.min() < info.min or probe.max() > info.max:
            raise _bad(f"input {name!r}: values out of range for {datatype}")
    if arr.dtype == object:
        raise _bad(f"input {name!r}: 'data' is not a regular (rectangular) array")
    if dtype.kind == "f" and np.isnan(arr).any():
        raise _bad(f"input {name!r}: 'data' holds null")
    if arr.size != count:
        raise _bad(f"input {name!r}: shape {shape} needs {count} elements, 'data' has {arr.size}")
    return arr.reshape(shape)


def parse_infer_request(body: bytes, header_length: int | None,
                        shm: SharedMemoryRegistry | None = None) -> InferRequest:
    """Decode a V2 infer body (JSON or JSON + binary tensors; tensors in the regions of ``shm``)."""
    if header_length is not None:
        if header_length < 0 or header_length > len(body):
            raise _bad(f"Inference-Header-Content-Length {header_length} does not fit a body of {len(body)} bytes")
        header_bytes, binary = body[:header_length], memoryview(body)[header_length:]
    else:
        header_bytes, binary = body, memoryview(b"")
    try:
        header = orjson.loads(header_bytes)
    except orjson.JSONDecodeError as exc:
        raise _bad(f"malformed JSON in the inference request: {exc}") from exc
    return request_from_header(header, binary, shm, json_data)


DataDecoder = Callable[[Any, str, list[int], str], np.ndarray]


def request_from_header(header: Any, binary: memoryview, shm: SharedMemoryRegistry | None,
                        json_data: DataDecoder) -> InferRequest:
    """The request a parsed JSON header describes (``binary``: the bytes after it); ``json_data`` decodes an
    input's ``data`` (the plain decoder, or :mod:`sepconv.service.rest.jsonfast`'s)."""
    if not isinstance(header, dict):
        raise _bad("the inference request must be a JSON object")
    params = header.get("parameters") or {}
    if not isinstance(params, dict):
        raise _bad("'parameters' must be an object")
    req_id = header.get("id")
    if req_id is not None and not isinstance(req_id, str):
        req_id = str(req_id)
    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise _bad("'inputs' must be a non-empty list")
    inputs: list[InputTensor] = []
    offset = 0
    seen: set[str] = set()
    for raw in raw_inputs:
        if not isinstance(raw, dict):
            raise _bad("each input must be an object with name, shape, datatype")
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise _bad("each input needs a 'name'")
        if name in seen:
            raise _bad(f"input {name!r} is given twice")
        seen.add(name)
        datatype = raw.get("datatype")
        if datatype not in V2_TO_NUMPY:
            raise _bad(f"input {name!r}: unsupported datatype {datatype!r}")
        shape = _shape(raw.get("shape"), name)
        iparams = raw.get("parameters") or {}
        if not isinstance(iparams, dict):
            raise _bad(f"input {name!r}: 'parameters' must be an object")
        ref = tensor_ref(iparams, f"input {name!r}")
        size = iparams.get("binary_data_size")
        if ref is not None:
            if "data" in raw or size is not None:
                raise _bad(f"input {name!r}: give either 'data', binary_data_size or a shared-memory region")
            if shm is None:
                raise _bad(f"input {name!r}: Unable to find shared memory region: {ref.region!r}")
            arr = shm_input(shm, ref, datatype, shape, name)
        elif size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise _bad(f"input {name!r}: binary_data_size must be a non-negative integer")
            if "data" in raw:
                raise _bad(f"input {name!r}: give either 'data' or binary_data_size, not both")
            if offset + size > len(binary):
                raise _bad(f"input {name!r}: binary_data_size {size} runs past the end of the body "
                           f"({len(binary) - offset} binary bytes left)")
            arr = tensor_from_bytes(binary[offset:offset + size], datatype, shape, name, "binary_data_size")
            offset += size
        elif "data" in raw:
            arr = json_data(raw["data"], datatype, shape, name)
        else:
            raise _bad(f"input {name!r} has neither 'data' nor parameters.binary_data_size")
        inputs.append(InputTensor(name=name, datatype=datatype, shape=shape, array=arr))
    if offset != len(binary):
        raise _bad(f"the body has {len(binary) - offset} binary bytes that no input's binary_data_size accounts for")

    binary_output = bool(_bool_param(params, "binary_data_output", "request"))
    outputs: list[RequestedOutput] | None = None
    raw_outputs = header.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list):
            raise _bad("'outputs' must be a list")
        outputs = []
        for raw in raw_outputs:
            if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
                raise _bad("each requested output must be an object with a 'name'")
            oparams = raw.get("parameters") or {}
            if not isinstance(oparams, dict):
                raise _bad(f"output {raw['name']!r}: 'parameters' must be an object")
            if "shared_memory_region" in oparams and "classification" in oparams:
                raise _bad(f"output {raw['name']!r}: can't set both 'shared_memory_region' and 'classification'")
            oref = tensor_ref(oparams, f"output {raw['name']!r}")
            classes = oparams.get("classification", 0)
            if isinstance(classes, bool) or not isinstance(classes, int) or not 0 <= classes < 2**32:
                raise _bad(f"output {raw['name']!r}: 'classification' must be a non-negative integer (the number of "
                           f"classes to return), got {classes!r}")
            b = _bool_param(oparams, "binary_data", f"output {raw['name']!r}")
            outputs.append(RequestedOutput(name=raw["name"], binary=binary_output if b is None else b,
                                           classification=classes, shm=oref))
        if len({o.name for o in outputs}) != len(outputs):
            raise _bad("an output is requested twice")
    return InferRequest(id=req_id, inputs=inputs, outputs=outputs, binary_output=binary_output, parameters=params)


def encode_infer_response(response: InferResponse) -> tuple[bytes, int | None]:
    """(body, header_length) — header_length is None when the body is all JSON (no output asked for binary)."""
    out_json: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for out in response.outputs:
        name, datatype, arr, binary = out.name, out.datatype, out.array, out.binary
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
        if out.shm is not None:
            pass  # written into its region by the data plane: name, datatype and shape only, as Triton answers
        elif binary:
            blob = tensor_bytes(arr, datatype)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif datatype == "BYTES":
            entry["data"] = [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)
                             for x in arr.reshape(-1)]
        else:
            entry["data"] = np.ascontiguousarray(arr).reshape(-1)
        out_json.append(entry)
    head: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id is not None:
        head["id"] = response.id
    head["outputs"] = out_json
    header = orjson.dumps(head, option=_OPT)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)
