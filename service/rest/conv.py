"""``POST /v1/conv/{op}`` (TF-exact conv2d / depthwise_conv2d / separable_conv2d) and ``GET /v1/conv/cache``.

HTTP only: the op is checked (404 before the body is read), the body read (its size is capped by
``ServiceMiddleware``: ``SEPCONV_MAX_REQUEST_BYTES`` -> 413), then one call into
:class:`sepconv.service.conv.engine.ConvEngine` in a worker thread. The engine and its session cache are made
once, by :func:`attach`.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from sepconv.service.conv.engine import ConvEngine
from sepconv.service.conv.request import check_op
from sepconv.service.settings import Settings

__all__ = ["attach", "router"]

router = APIRouter(tags=["convolution"])


def attach(app: FastAPI, settings: Settings) -> None:
    """Put the ``/v1/conv`` engine (with its session cache, sized by ``conv_cache_size``) on ``app.state``."""
    app.state.conv_engine = ConvEngine(settings)


def _engine(request: Request) -> ConvEngine:
    return request.app.state.conv_engine


_TENSOR = {"oneOf": [{"type": "array", "description": "nested list of numbers"},
                     {"type": "object", "required": ["shape", "b64"],
                      "properties": {"shape": {"type": "array", "items": {"type": "integer"}},
                                     "datatype": {"type": "string", "enum": ["FP32"]},
                                     "b64": {"type": "string", "description": "little-endian float32 bytes"}}}]}
_BODY_SCHEMA = {
    "type": "object",
    "required": ["input"],
    "properties": {
        "input": _TENSOR, "filter": _TENSOR, "depthwise_filter": _TENSOR, "pointwise_filter": _TENSOR,
        "bias": _TENSOR,
        "strides": {"description": "int, [h, w] or the 4-element TF form"},
        "padding": {"description": "'SAME', 'VALID' (default) or [[0,0],[top,bottom],[left,right],[0,0]]"},
        "dilations": {"description": "int, [h, w] or the 4-element TF form (alias: rate)"},
        "rate": {"description": "alias of dilations"},
        "data_format": {"type": "string", "enum": ["NHWC", "NCHW"]},
        "activation": {"type": "string", "enum": ["relu", "relu6", "hard_sigmoid", "hard_swish"]},
        "provider": {"type": "string", "description": "cpu | cuda | auto | ORT provider names"},
    },
}
_EXAMPLE = {  # the seeds' worked example: depthwise_conv2d gives [[[[0,36,9,27],[0,54,9,27]], ...]]
    "input": [[[[1, 1], [2, 1], [3, 1], [4, 1]]] * 4],
    "filter": [[[[0, 2], [1, 3]]] * 3] * 3,
    "strides": [1, 1, 1, 1],
    "padding": "VALID",
}


@router.post("/v1/conv/{op}", summary="TensorFlow-exact conv2d / depthwise_conv2d / separable_conv2d",
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                 "schema": _BODY_SCHEMA, "example": _EXAMPLE}}}})
async def conv(op: str, request: Request) -> Response:
    """Run one convolution with TensorFlow's semantics. Body: ``input`` and ``filter`` (conv2d,
    depthwise_conv2d) or ``depthwise_filter`` + ``pointwise_filter`` (separable_conv2d), optional ``bias``,
    ``strides``, ``padding`` (default ``VALID``), ``dilations`` (alias ``rate``), ``data_format``
    (``NHWC`` default or ``NCHW``), ``activation`` (``relu``, ``relu6``), ``provider``.
    Tensors are nested lists or ``{"shape", "datatype": "FP32", "b64"}``; ``output`` uses the input's encoding
    (non-finite values in nested lists are the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``).
    ``macs`` and ``standard_conv_macs`` are per image (``batch_macs`` for the whole batch)."""
    check_op(op)
    body = await request.body()  # ServiceMiddleware already refuses bodies over SEPCONV_MAX_REQUEST_BYTES (413)
    content = await run_in_threadpool(_engine(request).handle, op, body)
    return Response(content=content, media_type="application/json")


@router.get("/v1/conv/cache", summary="the /v1/conv session cache: size, capacity, hits, misses, builds")
async def cache_stats(request: Request) -> dict[str, int]:
    return _engine(request).cache.stats()
