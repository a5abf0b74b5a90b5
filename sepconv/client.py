"""A small client for ``POST /v1/conv/{op}`` mirroring ``tf.nn``, returning numpy arrays.

    >>> from sepconv.client import depthwise_conv2d
    >>> y = depthwise_conv2d("http://127.0.0.1:8000", x, f, strides=[1, 1, 1, 1], padding="SAME")

Tensors travel base64-encoded (little-endian float32), so values — NaN and Inf included — arrive bit-exact.
:func:`call` returns the whole response (params, macs, cost_ratio, provider, ...) next to the array.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

Padding = str | Sequence[Sequence[int]]
IntOrList = int | Sequence[int]


class ConvError(RuntimeError):
    """The server refused the request (``status`` 4xx/5xx, ``message`` from its ``{"error": ...}``)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


@dataclass
class ConvResult:
    output: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)  # the response without "output"


def _encode(array: Any) -> dict[str, Any]:
    arr = np.ascontiguousarray(np.asarray(array, dtype=np.float32))
    return {"shape": list(arr.shape), "datatype": "FP32",
            "b64": base64.b64encode(arr.astype("<f4", copy=False).tobytes()).decode("ascii")}


def _decode(value: dict[str, Any]) -> np.ndarray:
    data = base64.b64decode(value["b64"])
    return np.frombuffer(data, dtype="<f4").astype(np.float32).reshape(value["shape"])


def call(url: str, op: str, tensors: dict[str, Any], *, timeout: float = 120.0,
         client: httpx.Client | None = None, **args: Any) -> ConvResult:
    """POST one convolution: ``tensors`` (input, filter(s), bias) as arrays, ``args`` as JSON values."""
    body: dict[str, Any] = {name: _encode(value) for name, value in tensors.items() if value is not None}
    body.update({k: v for k, v in args.items() if v is not None})
    target = url.rstrip("/") + f"/v1/conv/{op}"
    response = (client.post(target, json=body, timeout=timeout) if client is not None
                else httpx.post(target, json=body, timeout=timeout))
    try:
        payload = response.json()
    except ValueError:
        raise ConvError(response.status_code, response.text[:500]) from None
    if response.status_code != 200:
        raise ConvError(response.status_code, str(payload.get("error", payload)) if isinstance(payload, dict)
                        else str(payload))
    output = _decode(payload.pop("output"))
    return ConvResult(output, payload)


def conv2d(url: str, input: Any, filters: Any, strides: IntOrList = 1, padding: Padding = "VALID",
           data_format: str = "NHWC", dilations: IntOrList | None = None, *, bias: Any = None,
           activation: str | None = None, provider: str | None = None, **kwargs: Any) -> np.ndarray:
    """``tf.nn.conv2d(input, filters, strides, padding, data_format, dilations)`` run by the server."""
    return call(url, "conv2d", {"input": input, "filter": filters, "bias": bias}, strides=_json(strides),
                padding=_json(padding), data_format=data_format, dilations=_json(dilations), activation=activation,
                provider=provider, **kwargs).output


def depthwise_conv2d(url: str, input: Any, filter: Any, strides: IntOrList = 1, padding: Padding = "VALID",
                     data_format: str | None = None, dilations: IntOrList | None = None, *, bias: Any = None,
                     activation: str | None = None, provider: str | None = None, **kwargs: Any) -> np.ndarray:
    """``tf.nn.depthwise_conv2d(input, filter, strides, padding, data_format, dilations)`` run by the server."""
    return call(url, "depthwise_conv2d", {"input": input, "filter": filter, "bias": bias}, strides=_json(strides),
                padding=_json(padding), data_format=data_format, dilations=_json(dilations), activation=activation,
                provider=provider, **kwargs).output


def separable_conv2d(url: str, input: Any, depthwise_filter: Any, pointwise_filter: Any, strides: IntOrList = 1,
                     padding: Padding = "VALID", data_format: str | None = None, dilations: IntOrList | None = None,
                     *, bias: Any = None, activation: str | None = None, provider: str | None = None,
                     **kwargs: Any) -> np.ndarray:
    """``tf.nn.separable_conv2d(input, depthwise_filter, pointwise_filter, strides, padding, data_format,
    dilations)`` run by the server."""
    return call(url, "separable_conv2d",
                {"input": input, "depthwise_filter": depthwise_filter, "pointwise_filter": pointwise_filter,
                 "bias": bias},
                strides=_json(strides), padding=_json(padding), data_format=data_format, dilations=_json(dilations),
                activation=activation, provider=provider, **kwargs).output


def _json(value: Any) -> Any:
    """Tuples and numpy ints as plain JSON values."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    return [_json(v) for v in value]
