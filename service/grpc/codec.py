"""Triton's ``ModelInferRequest`` / ``ModelInferResponse`` <-> the data plane's request and response objects.

Decoding (:func:`decode_request`) follows Triton's gRPC frontend:

* tensor data comes either in ``raw_input_contents`` — then for every input, in the order of ``inputs``: the
  little-endian bytes of the tensor (BYTES: per element a uint32 LE length and the bytes, as in REST's binary
  extension) — or in each input's typed ``contents`` (``bool_contents``, ``int_contents`` for INT8/16/32,
  ``int64_contents``, ``uint_contents`` for UINT8/16/32, ``uint64_contents``, ``fp32_contents``,
  ``fp64_contents``, ``bytes_contents``), never both; FP16 (which has no typed field) only raw, as in Triton;
* requested outputs by name (their ``binary_data`` parameter means nothing over gRPC), with Triton's
  classification extension (``classification``: K, an integer parameter; the data plane answers the top-K
  strings);
* Triton's system shared-memory extension: an input or output whose parameters name a ``shared_memory_region``
  (with ``shared_memory_byte_size`` and optional ``shared_memory_offset``) is read from / written into that
  registered region (:mod:`sepconv.service.dataplane.shm`); such an input takes no other data;
* request parameters become a plain dict.

Encoding (:func:`encode_response`) answers every output in ``raw_output_contents``, as Triton does (tritonclient
reads either form); an output written into shared memory gets an empty entry there (the entries stay aligned
with ``outputs``) and its region in its parameters. Every client mistake raises ``InvalidInput`` with a message
naming the tensor; the model checks (names, datatypes, shapes, batch) are the data plane's, shared with REST.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sepconv.service.dataplane.shm import SharedMemoryRegistry, TensorRef, tensor_ref
from sepconv.service.dataplane.tensors import check_shape, shm_input, tensor_bytes, tensor_from_bytes
from sepconv.service.dataplane.types import InferRequest, InferResponse, InputTensor, RequestedOutput
from sepconv.service.datatypes import V2_TO_NUMPY
from sepconv.service.errors import InvalidInput
from sepconv.service.grpc.generated import grpc_service_pb2 as pb

# datatype -> the InferTensorContents field that carries it (FP16 and BF16 have none: raw only)
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_ALL_FIELDS = sorted(set(CONTENTS_FIELD.values()))


def _shape(dims: Any, name: str) -> list[int]:
    return check_shape(list(dims), name)


def parameters_dict(params: Any) -> dict[str, Any]:
    """A protobuf map of ``InferParameter`` (or any message with a ``parameter_choice`` oneof) as a dict."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        which = value.WhichOneof("parameter_choice")
        out[key] = getattr(value, which) if which else None
    return out


def _typed(tensor: Any, datatype: str, shape: list[int], name: str) -> np.ndarray:
    contents = tensor.contents
    field = CONTENTS_FIELD.get(datatype)
    given = [f for f in _ALL_FIELDS if len(getattr(contents, f))] if tensor.HasField("contents") else []
    if field is None:
        raise InvalidInput(f"input {name!r}: {datatype} data can only be sent in raw_input_contents "
                           f"(InferTensorContents has no {datatype} field)")
    if any(f != field for f in given):
        raise InvalidInput(f"input {name!r}: a {datatype} tensor takes its data in contents.{field}, "
                           f"not {', '.join(f for f in given if f != field)}")
    values = getattr(contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise InvalidInput(f"input {name!r}: shape {shape} needs {count} elements, contents.{field} has "
                           f"{len(values)}")
    if datatype == "BYTES":
        arr = np.empty(count, dtype=object)
        arr[:] = list(values)
        return arr.reshape(shape)
    dtype = V2_TO_NUMPY[datatype]
    if dtype.kind in "iu" and dtype.itemsize < 4:  # carried in a 32-bit field: it must fit the datatype
        wide = np.fromiter(values, dtype=np.int64, count=count)
        info = np.iinfo(dtype)
        if count and (wide.min() < info.min or wide.max() > info.max):
            raise InvalidInput(f"input {name!r}: values out of range for {datatype}")
        return wide.astype(dtype).reshape(shape)
    return np.fromiter(values, dtype=dtype, count=count).reshape(shape)


def _classification(param: Any, name: str) -> int:
    """Triton's classification extension: ``classification`` = K, an integer parameter (the data plane answers
    the top-K strings as a BYTES tensor, :mod:`sepconv.service.dataplane.classification`)."""
    which = param.WhichOneof("parameter_choice")
    value = getattr(param, which) if which in ("int64_param", "uint64_param") else None
    if value is None or not 0 <= value < 2**32:
        shown = getattr(param, which) if which else None
        raise InvalidInput(f"output {name!r}: 'classification' must be a non-negative integer (the number of "
                           f"classes to return), got {shown!r}")
    return int(value)


def decode_request(request: Any, shm: SharedMemoryRegistry | None = None) -> InferRequest:
    """A ``ModelInferRequest`` as the data plane's :class:`InferRequest` (see the module docstring); tensors in
    shared memory come from the regions of ``shm``."""
    tensors = request.inputs
    if not tensors:
        raise InvalidInput("the request has no inputs")
    raw = request.raw_input_contents
    refs = [tensor_ref(parameters_dict(t.parameters), f"input {t.name!r}") if t.parameters else None
            for t in tensors]
    in_raw = sum(ref is None for ref in refs)  # raw_input_contents holds the inputs not in shared memory
    if raw and len(raw) != in_raw:
        raise InvalidInput(f"raw_input_contents has {len(raw)} entries for {in_raw} inputs (when used, it "
                           "must hold every input's data but those in shared memory, in the order of 'inputs')")
    raw_index = 0
    inputs: list[InputTensor] = []
    seen: set[str] = set()
    for i, tensor in enumerate(tensors):
        name = tensor.name
        if not name:
            raise InvalidInput("each input needs a 'name'")
        if name in seen:
            raise InvalidInput(f"input {name!r} is given twice")
        seen.add(name)
        datatype = tensor.datatype
        if datatype not in V2_TO_NUMPY:
            raise InvalidInput(f"input {name!r}: unsupported datatype {datatype!r}")
        shape = _shape(tensor.shape, name)
        ref = refs[i]
        if ref is not None:
            if tensor.HasField("contents"):
                raise InvalidInput(f"input {name!r}: contents must not be given for an input in shared memory")
            if shm is None:
                raise InvalidInput(f"input {name!r}: Unable to find shared memory region: {ref.region!r}")
            arr = shm_input(shm, ref, datatype, shape, name)
        elif raw:
            if tensor.HasField("contents"):
                raise InvalidInput(f"input {name!r}: contents must not be given when raw_input_contents is used")
            arr = tensor_from_bytes(raw[raw_index], datatype, shape, name, "raw_input_contents")
            raw_index += 1
        else:
            arr = _typed(tensor, datatype, shape, name)
        inputs.append(InputTensor(name=name, datatype=datatype, shape=shape, array=arr))

    outputs: list[RequestedOutput] | None = None
    if request.outputs:
        outputs = []
        for out in request.outputs:
            if not out.name:
                raise InvalidInput("each requested output needs a 'name'")
            classes = 0
            oref: TensorRef | None = None
            if out.parameters:
                params = out.parameters
                if "shared_memory_region" in params and "classification" in params:
                    raise InvalidInput(f"output {out.name!r}: can't set both 'shared_memory_region' and "
                                       "'classification'")
                oref = tensor_ref(parameters_dict(params), f"output {out.name!r}")
                if "classification" in params:
                    classes = _classification(params["classification"], out.name)
            outputs.append(RequestedOutput(name=out.name, binary=True, classification=classes, shm=oref))
        if len({o.name for o in outputs}) != len(outputs):
            raise InvalidInput("an output is requested twice")
    params = parameters_dict(request.parameters) if request.parameters else {}
    return InferRequest(id=request.id or None, inputs=inputs, outputs=outputs, binary_output=True,
                        parameters=params)


def encode_response(response: InferResponse) -> Any:
    """The data plane's :class:`InferResponse` as a ``ModelInferResponse``, every output raw."""
    message = pb.ModelInferResponse(model_name=response.model_name, model_version=response.model_version,
                                    id=response.id or "")
    raw = message.raw_output_contents
    for out in response.outputs:
        arr = out.array
        tensor = message.outputs.add()
        tensor.name = out.name
        tensor.datatype = out.datatype
        tensor.shape.extend(arr.shape)
        if out.shm is not None:  # written into the region by the data plane
            ref = out.shm
            tensor.parameters["shared_memory_region"].string_param = ref.region
            tensor.parameters["shared_memory_byte_size"].int64_param = ref.byte_size
            if ref.offset:
                tensor.parameters["shared_memory_offset"].int64_param = ref.offset
            raw.append(b"")
        else:
            raw.append(bytes(tensor_bytes(arr, out.datatype)))
    return message
