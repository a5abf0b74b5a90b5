"""Tensor bytes on the wire, for every transport: the raw little-endian form and Triton's BYTES form.

* :func:`decode_bytes_elements` / :func:`encode_bytes_elements` — BYTES tensors as per element a uint32 LE length
  and the bytes (REST's binary extension, gRPC's ``raw_*_contents``, shared memory);
* :func:`tensor_from_bytes` — a tensor of a V2 datatype and shape from its raw bytes (size checked; a view when
  the buffer is aligned, else a copy);
* :func:`tensor_bytes` — a tensor's raw bytes (a buffer, no copy when it is already contiguous little-endian);
* :func:`check_shape` — the limits every transport puts on a declared shape (rank, dimensions, element count);
* :func:`shm_input` — an input tensor read from a registered shared-memory region
  (:mod:`sepconv.service.dataplane.shm`).

Every client mistake raises ``InvalidInput`` naming the tensor.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

from sepconv.service.dataplane.shm import SharedMemoryRegistry, TensorRef
from sepconv.service.datatypes import V2_TO_NUMPY
from sepconv.service.errors import InvalidInput

# A request body larger than this is decoded in a worker thread: decoding (BYTES elements, JSON numbers) is Python
# work of up to ~0.1 s per MiB, and on the event loop it would stall every other request of every transport meanwhile.
DECODE_OFFLOAD_BYTES = 4 * 1024 * 1024

MAX_RANK = 32  # numpy allows 64 dimensions; no model here needs more than a handful
MAX_DIM = 2**31 - 1


def check_shape(shape: list[int], name: str) -> list[int]:
    """``shape`` (a list of ints) if its rank, dimensions and element count are within the limits, else
    ``InvalidInput`` naming the input. Even an empty tensor (a 0 somewhere) cannot have more than ``MAX_DIM``
    elements in its other dimensions."""
    if len(shape) > MAX_RANK:
        raise InvalidInput(f"input {name!r}: shape has {len(shape)} dimensions (at most {MAX_RANK})")
    if any(d < 0 for d in shape):
        raise InvalidInput(f"input {name!r}: shape {shape} has a negative dimension")
    if any(d > MAX_DIM for d in shape) or math.prod(d or 1 for d in shape) > MAX_DIM:
        raise InvalidInput(f"input {name!r}: shape {shape} is too large")
    return shape


def decode_bytes_elements(buf: memoryview, count: int, name: str) -> np.ndarray:
    """Triton's BYTES binary form: per element a uint32 LE length and the bytes."""
    items: list[bytes] = []
    pos, size = 0, len(buf)
    for _ in range(count):
        if pos + 4 > size:
            raise InvalidInput(f"input {name!r}: BYTES data ends inside an element length")
        (n,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        if pos + n > size:
            raise InvalidInput(f"input {name!r}: BYTES element of {n} bytes runs past the data")
        items.append(bytes(buf[pos:pos + n]))
        pos += n
    if pos != size:
        raise InvalidInput(f"input {name!r}: {size - pos} bytes left over after {count} BYTES elements")
    arr = np.empty(count, dtype=object)
    arr[:] = items
    return arr


def encode_bytes_elements(arr: np.ndarray) -> bytes:
    parts = []
    for item in arr.reshape(-1):
        b = item if isinstance(item, bytes) else str(item).encode("utf-8")
        parts.append(struct.pack("<I", len(b)))
        parts.append(b)
    return b"".join(parts)


def tensor_from_bytes(data: Any, datatype: str, shape: list[int], name: str, where: str) -> np.ndarray:
    """The tensor in ``data`` (a bytes-like object); ``where`` names the size field in messages."""
    count = math.prod(shape)
    view = memoryview(data).cast("B")
    if datatype == "BYTES":
        return decode_bytes_elements(view, count, name).reshape(shape)
    dtype = V2_TO_NUMPY[datatype]
    if view.nbytes != count * dtype.itemsize:
        raise InvalidInput(f"input {name!r}: shape {shape} of {datatype} needs {count * dtype.itemsize} bytes, "
                           f"{where} is {view.nbytes}")
    arr = np.frombuffer(view, dtype=dtype, count=count).reshape(shape)
    return arr if arr.flags.aligned else arr.copy()


def tensor_bytes(arr: np.ndarray, datatype: str) -> Any:
    """The raw bytes of an output (a buffer; BYTES in their wire form)."""
    if datatype == "BYTES":
        return encode_bytes_elements(arr)
    out = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
    return memoryview(out).cast("B")


def shm_input(registry: SharedMemoryRegistry, ref: TensorRef, datatype: str, shape: list[int],
              name: str) -> np.ndarray:
    """Input ``name`` from shared memory: the server's own copy of the region's bytes, checked as binary data."""
    what = f"input {name!r}"
    if datatype != "BYTES":
        need = math.prod(shape) * V2_TO_NUMPY[datatype].itemsize
        if ref.byte_size != need:  # before reading anything
            raise InvalidInput(f"{what}: shape {shape} of {datatype} needs {need} bytes, shared_memory_byte_size "
                               f"is {ref.byte_size}")
    return tensor_from_bytes(registry.read(ref, what), datatype, shape, name, "shared_memory_byte_size")
