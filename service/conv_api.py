"""``POST /v1/conv/{op}``: TensorFlow's conv2d, depthwise_conv2d and separable_conv2d over HTTP.

The flow of a request, cheapest checks first, nothing allocated before the limits pass:

1. body size (``Content-Length``, then while reading) against ``max_request_bytes``, and the count of JSON
   numbers/lists (commas and brackets, before parsing) against ``conv_max_list_elements`` -> 413;
2. JSON, fields and shapes (:mod:`sepconv.service.conv_request`; TF-style messages) -> 400/404/422;
3. tensor sizes from the *declared* shapes against ``conv_max_elements`` -> 413;
4. the graph for the request's signature (cached) and its accounting: largest activation and
   multiply-adds (times the batch) against ``conv_max_elements`` / ``conv_max_macs``, and a nested-list
   output against ``conv_max_list_elements`` -> 413;
5. decode the tensors, run the cached ONNX Runtime session, encode the output like the input.

``GET /v1/conv/cache`` reports the session cache (size, capacity, hits, misses, builds, evictions).
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from sepconv.export import single_op as conv_graphs
from sepconv.export.errors import ExportError
from sepconv.export.single_op import ConvGraph, ConvKey
from sepconv.service import conv_codec
from sepconv.service.conv_cache import CompiledConv, ConvCache
from sepconv.service.conv_request import ConvCall, parse
from sepconv.service.errors import ApiError
from sepconv.service.runtime import make_session, resolve_providers
from sepconv.service.settings import Settings, get_settings

router = APIRouter(tags=["convolution"])
_state_lock = threading.Lock()


def settings_of(app: Any) -> Settings:
    settings = getattr(app.state, "settings", None)
    return settings if isinstance(settings, Settings) else get_settings()


def conv_cache(app: Any) -> ConvCache:
    """The app's session cache (created on first use, sized by ``Settings.conv_cache_size``)."""
    cache = getattr(app.state, "conv_cache", None)
    if cache is None:
        with _state_lock:
            cache = getattr(app.state, "conv_cache", None)
            if cache is None:
                cache = ConvCache(settings_of(app).conv_cache_size)
                app.state.conv_cache = cache
    return cache


def _check_list_volume(body: bytes, settings: Settings) -> None:
    """Refuse huge nested-list bodies before parsing them: each JSON number and list becomes a Python object
    (~30-70 bytes), so 50 MB of ``[[0]],`` would cost gigabytes. Commas and brackets bound both counts
    (base64 strings hold neither)."""
    limit = settings.conv_max_list_elements
    values, lists = body.count(b","), body.count(b"[")
    if values > limit or lists > limit:
        raise ApiError(413, f"this body holds about {max(values, lists)} JSON numbers or lists; nested-list tensors "
                            f"are limited to {limit} (SEPCONV_CONV_MAX_LIST_ELEMENTS): send large tensors as "
                            '{"shape": [...], "datatype": "FP32", "b64": "..."}')


def _loads(body: bytes) -> Any:
    if not body.strip():
        raise ApiError(400, "empty body: send a JSON object with input and filter(s)")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:  # the stdlib also reads the NaN / Infinity / -Infinity tokens
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, f"malformed JSON body: {exc}") from None


def _check_tensor_sizes(call: ConvCall, settings: Settings) -> None:
    for ref in call.tensors.values():
        if ref.size > settings.conv_max_elements:
            raise ApiError(413, f"{ref.field} has {ref.size} elements (shape {list(ref.shape)}); this server "
                                f"accepts at most {settings.conv_max_elements} per tensor (SEPCONV_CONV_MAX_ELEMENTS)")


def _check_work(graph: ConvGraph, batch: int, settings: Settings, as_list: bool) -> None:
    biggest = graph.max_activation_elements * batch
    if biggest > settings.conv_max_elements:
        raise ApiError(413, f"the {graph.key.op} output would have {biggest} elements (batch {batch}); this server "
                            f"accepts at most {settings.conv_max_elements} per tensor (SEPCONV_CONV_MAX_ELEMENTS)")
    if as_list and graph.out_elements * batch > settings.conv_max_list_elements:
        raise ApiError(413, f"the {graph.key.op} output has {graph.out_elements * batch} elements, more than the "
                            f"{settings.conv_max_list_elements} a nested-list response may hold "
                            "(SEPCONV_CONV_MAX_LIST_ELEMENTS): send the input as {\"shape\", \"datatype\": "
                            "\"FP32\", \"b64\"} to get the output in base64")
    macs = graph.macs * batch
    if macs > settings.conv_max_macs:
        raise ApiError(413, f"this {graph.key.op} costs {macs} multiply-adds (batch {batch}); this server accepts "
                            f"at most {settings.conv_max_macs} per request (SEPCONV_CONV_MAX_MACS)")


def _compile(graph: ConvGraph, provider: str | None, settings: Settings) -> CompiledConv:
    start = time.perf_counter()
    model = graph.to_onnx()
    session = make_session(model.SerializeToString(), settings, providers=provider)
    return CompiledConv(graph=graph, session=session, provider=session.get_providers()[0],
                        build_ms=(time.perf_counter() - start) * 1e3)


def _graph_for(key: ConvKey, cache: ConvCache) -> ConvGraph:
    cached = cache.get(key)
    if cached is not None:
        return cached.graph
    try:
        return conv_graphs.build(key)
    except ExportError as exc:
        raise ApiError(422, str(exc)) from None


def handle(op: str, body: bytes, settings: Settings, cache: ConvCache) -> bytes:
    """Everything after the body is read (runs in a worker thread); returns the JSON response bytes."""
    _check_list_volume(body, settings)
    call = parse(op, _loads(body))
    _check_tensor_sizes(call, settings)
    key = dataclasses.replace(call.key, providers=tuple(resolve_providers(call.provider, settings)))
    graph = _graph_for(key, cache)
    _check_work(graph, call.batch, settings, call.output_encoding == conv_codec.LIST)

    feeds = {name: conv_codec.decode(ref) for name, ref in call.tensors.items()}
    compiled, was_cached = cache.get_or_build(key, lambda: _compile(graph, call.provider, settings))
    start = time.perf_counter()
    (output,) = compiled.session.run(["output"], feeds)
    elapsed_ms = (time.perf_counter() - start) * 1e3

    result = {
        "output": conv_codec.encode(output, call.output_encoding),
        "shape": list(output.shape),
        "params": graph.params,
        "macs": graph.macs,
        "standard_conv_macs": graph.standard_conv_macs,
        "cost_ratio": graph.cost_ratio,
        "provider": compiled.provider,
        "elapsed_ms": round(elapsed_ms, 4),
        "op": op,
        "batch_macs": graph.macs * call.batch,
        "cached": was_cached,
    }
    return orjson.dumps(result)


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
    if op not in conv_graphs.OPS:
        raise ApiError(404, f"unknown convolution op {op!r}; use one of {', '.join(conv_graphs.OPS)}")
    settings = settings_of(request.app)
    body = await request.body()  # ServiceMiddleware already refuses bodies over SEPCONV_MAX_REQUEST_BYTES (413)
    content = await run_in_threadpool(handle, op, body, settings, conv_cache(request.app))
    return Response(content=content, media_type="application/json")


@router.get("/v1/conv/cache", summary="the /v1/conv session cache: size, capacity, hits, misses, builds")
async def cache_stats(request: Request) -> dict[str, int]:
    return conv_cache(request.app).stats()
