"""The data plane's request and response objects, independent of any transport.

A transport decodes its wire format into an :class:`InferRequest` (REST: :mod:`sepconv.service.rest.codec`;
a gRPC transport would build the same objects from protobufs) and encodes the :class:`InferResponse` it gets
back. :class:`InferCall` is how a transport hands a request to :meth:`DataPlane.infer
<sepconv.service.dataplane.dataplane.DataPlane.infer>`: decoding and encoding run inside the data plane's
accounting, so a request that fails to decode counts as a failed request of its model (as Triton counts it)
and the encoding time is part of the request's time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np

from sepconv.service.dataplane.shm import TensorRef


@dataclass
class InputTensor:
    name: str
    datatype: str  # V2 datatype: FP32, INT64, BYTES...
    shape: list[int]
    array: np.ndarray  # BYTES: an object array of ``bytes``


@dataclass
class RequestedOutput:
    name: str
    binary: bool  # REST's binary tensor extension (``binary_data``); other transports ignore it
    classification: int = 0  # Triton's classification extension: the top-K as BYTES strings (0 = the tensor)
    shm: TensorRef | None = None  # Triton's shared-memory extension: written into this region, not returned


@dataclass
class InferRequest:
    id: str | None
    inputs: list[InputTensor]
    outputs: list[RequestedOutput] | None  # None = all outputs, each with ``binary_output``
    binary_output: bool
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class OutputTensor:
    name: str
    datatype: str
    array: np.ndarray
    binary: bool
    shm: TensorRef | None = None  # written into this shared-memory region (the response carries no data)


@dataclass
class InferResponse:
    model_name: str
    model_version: str
    id: str | None
    outputs: list[OutputTensor]


R = TypeVar("R", covariant=True)


class InferCall(Protocol[R]):
    """One infer request as a transport holds it."""

    async def decode(self) -> InferRequest:
        """Read and decode the request (raises ``InvalidInput`` and friends for a client's mistake)."""
        ...

    def encode(self, response: InferResponse) -> R:
        """The transport's answer for ``response`` (e.g. an HTTP response)."""
        ...
