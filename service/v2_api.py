"""KServe V2 / Open Inference Protocol (REST) with Triton's extensions.

Health, server and model metadata, readiness, infer (JSON and binary tensors), config, statistics,
repository index/load/unload, log settings; trace and shared-memory routes answer so that the
unmodified ``tritonclient[http]`` client works for every call it has (tracing and shared memory are
reported as not supported rather than pretended).
"""

from __future__ import annotations

import asyncio
import gzip
import hmac
import logging
import math
import time
import zlib
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from sepconv import __version__
from sepconv.service import metrics
from sepconv.service.errors import ApiError
from sepconv.service.model_config import ConfigError, config_from_json
from sepconv.service.repository import READY, LoadedModel, ModelRepository, check_name, check_version
from sepconv.service.v2_codec import InferRequest, encode_infer_response, parse_infer_request

log = logging.getLogger("sepconv.v2")

router = APIRouter(tags=["v2"])

EXTENSIONS = ["binary_tensor_data", "model_configuration", "model_repository", "model_repository(unload_dependents)",
              "statistics", "logging"]

_JSON = "application/json"


def _json(obj: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status, media_type=_JSON)


def _repo(request: Request) -> ModelRepository:
    return request.app.state.repository


async def _json_body(request: Request, *, allow_empty: bool = True) -> dict[str, Any]:
    body = await request.body()
    if not body.strip():
        if allow_empty:
            return {}
        raise ApiError(400, "a JSON body is required")
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"malformed JSON body: {exc}") from exc
    if not isinstance(obj, dict):
        raise ApiError(400, "the body must be a JSON object")
    return obj


# ------------------------------------------------------------------------------------------------
# health and server metadata
# ------------------------------------------------------------------------------------------------
@router.get("/v2/health/live")
async def live() -> Response:
    return _json({"live": True})


@router.get("/v2/health/ready")
async def ready(request: Request) -> Response:
    state = request.app.state
    ok = bool(state.startup_complete) and not state.shutting_down
    if ok and state.settings.strict_readiness:
        ok = _repo(request).all_ready()
    return _json({"ready": ok}, 200 if ok else 503)


@router.get("/v2")
async def server_metadata() -> Response:
    return _json({"name": "sepconv", "version": __version__, "extensions": EXTENSIONS})


# ------------------------------------------------------------------------------------------------
# statistics (before /v2/models/{name} so "stats" is not taken for a model name)
# ------------------------------------------------------------------------------------------------
def _stats_for(models: list[LoadedModel]) -> Response:
    return _json({"model_stats": [m.stats.as_dict(m.name, m.version) for m in models]})


@router.get("/v2/models/stats")
async def all_stats(request: Request) -> Response:
    return _stats_for(_repo(request).loaded())


@router.get("/v2/models/{model_name}/stats")
async def model_stats(request: Request, model_name: str) -> Response:
    repo = _repo(request)
    repo.get(model_name)  # 404 / 503 as fits
    return _stats_for([m for m in repo.loaded() if m.name == model_name])


@router.get("/v2/models/{model_name}/versions/{version}/stats")
async def model_version_stats(request: Request, model_name: str, version: str) -> Response:
    return _stats_for([_repo(request).get(model_name, version)])


# ------------------------------------------------------------------------------------------------
# model metadata, readiness, config
# ------------------------------------------------------------------------------------------------
def _metadata(repo: ModelRepository, model: LoadedModel) -> dict[str, Any]:
    entry = repo.entry(model.name)
    versions = sorted((v for v, s in entry.versions.items() if s.state == READY), key=int) if entry else []
    return {
        "name": model.name,
        "versions": versions or [model.version],
        "platform": model.config.platform,
        "inputs": [{"name": t.name, "datatype": t.datatype, "shape": t.shape} for t in model.inputs],
        "outputs": [{"name": t.name, "datatype": t.datatype, "shape": t.shape} for t in model.outputs],
        "parameters": {
            "version": model.version,
            "max_batch_size": model.max_batch_size,
            "execution_providers": model.providers,
            "requested_providers": model.requested_providers,
            # the exporter's bulky keys (per-layer summary, export key) stay out: /v1/models/{m}/summary serves them
            "onnx_metadata": {k: v for k, v in model.metadata.items() if not k.startswith("sepconv.")},
        },
    }


@router.get("/v2/models/{model_name}")
async def model_metadata(request: Request, model_name: str) -> Response:
    repo = _repo(request)
    return _json(_metadata(repo, repo.get(model_name)))


@router.get("/v2/models/{model_name}/versions/{version}")
async def model_version_metadata(request: Request, model_name: str, version: str) -> Response:
    repo = _repo(request)
    return _json(_metadata(repo, repo.get(model_name, version)))


def _ready_response(repo: ModelRepository, name: str, version: str | None) -> Response:
    try:
        model = repo.get(name, version)
    except ApiError as exc:
        if exc.status_code == 503:
            return _json({"name": name, "ready": False, "error": exc.message}, 503)
        raise
    return _json({"name": name, "version": model.version, "ready": True})


@router.get("/v2/models/{model_name}/ready")
async def model_ready(request: Request, model_name: str) -> Response:
    return _ready_response(_repo(request), model_name, None)


@router.get("/v2/models/{model_name}/versions/{version}/ready")
async def model_version_ready(request: Request, model_name: str, version: str) -> Response:
    return _ready_response(_repo(request), model_name, version)


@router.get("/v2/models/{model_name}/config")
async def model_config(request: Request, model_name: str) -> Response:
    model = _repo(request).get(model_name)
    return _json(model.config.to_json(model.providers))


@router.get("/v2/models/{model_name}/versions/{version}/config")
async def model_version_config(request: Request, model_name: str, version: str) -> Response:
    model = _repo(request).get(model_name, version)
    return _json(model.config.to_json(model.providers))


# ------------------------------------------------------------------------------------------------
# inference
# ------------------------------------------------------------------------------------------------
def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    enc = encoding.strip().lower()
    if enc in ("", "identity"):
        return body
    if enc == "gzip":
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif enc == "deflate":
        d = zlib.decompressobj()
    else:
        raise ApiError(415, f"unsupported Content-Encoding {encoding!r} (gzip, deflate)")
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ApiError(400, f"the {enc} body does not decompress: {exc}") from exc
    if len(out) > limit or d.unconsumed_tail:
        raise ApiError(413, f"the decompressed body is over the limit of {limit} bytes")
    return out


def _feed(model: LoadedModel, req: InferRequest) -> tuple[dict[str, np.ndarray], int]:
    specs = model.input_map
    given = {t.name for t in req.inputs}
    unknown = given - specs.keys()
    if unknown:
        raise ApiError(400, f"unknown input(s) {', '.join(sorted(unknown))} for model {model.name!r} "
                            f"(inputs: {', '.join(specs)})")
    missing = specs.keys() - given
    if missing:
        raise ApiError(400, f"missing input(s) {', '.join(sorted(missing))} for model {model.name!r}")
    batched = model.max_batch_size > 0
    batch = 1
    feed: dict[str, np.ndarray] = {}
    batches = set()
    for t in req.inputs:
        spec = specs[t.name]
        if t.datatype != spec.datatype:
            raise ApiError(400, f"input {t.name!r}: datatype {t.datatype}, the model expects {spec.datatype}")
        if len(t.shape) != len(spec.shape) or any(
                s != -1 and d != s for d, s in zip(t.shape, spec.shape, strict=True)):
            raise ApiError(400, f"input {t.name!r}: shape {t.shape} does not match the model's {spec.shape}")
        if math.prod(t.shape) == 0:
            raise ApiError(400, f"input {t.name!r}: shape {t.shape} is empty")
        if batched:
            batches.add(t.shape[0])
        arr = t.array
        if t.datatype == "BYTES":  # ONNX strings are UTF-8 text
            try:
                arr = np.array([x.decode("utf-8") for x in arr.reshape(-1)], dtype=object).reshape(t.shape)
            except UnicodeDecodeError as exc:
                raise ApiError(400, f"input {t.name!r}: BYTES elements must be UTF-8 text ({exc})") from exc
        feed[t.name] = arr
    if batched:
        if len(batches) != 1:
            raise ApiError(400, f"inputs disagree on the batch size: {sorted(batches)}")
        batch = batches.pop()
        if batch > model.max_batch_size:
            raise ApiError(400, f"batch size {batch} is over the model's max_batch_size {model.max_batch_size}")
    return feed, batch


async def handle_infer(request: Request, model_name: str, version: str | None) -> Response:
    """POST .../infer: decode, run through the model's scheduler (which calls ``session.run``), encode."""
    start = time.perf_counter_ns()
    model = _repo(request).get(model_name, version)
    try:
        body = await request.body()
        headers = request.headers
        encoding = headers.get("content-encoding")
        if encoding:
            body = _decompress(body, encoding, request.app.state.settings.max_request_bytes)
        header_length = headers.get("inference-header-content-length")
        hl = None
        if header_length is not None:
            try:
                hl = int(header_length)
            except ValueError as exc:
                raise ApiError(400, f"Inference-Header-Content-Length {header_length!r} is not an integer") from exc
        req = parse_infer_request(body, hl)
        feed, batch = _feed(model, req)
        outputs_map = model.output_map
        if req.outputs is None:
            wanted = [(o.name, req.binary_output) for o in model.outputs]
        else:
            for o in req.outputs:
                if o.name not in outputs_map:
                    raise ApiError(400, f"unknown output {o.name!r} for model {model.name!r} "
                                        f"(outputs: {', '.join(outputs_map)})")
            wanted = [(o.name, o.binary) for o in req.outputs]
        in_flight = getattr(request.app.state, "in_flight", None)  # HTTP requests being handled, this one too
        job = await model.scheduler.submit(feed, [n for n, _ in wanted], batch,
                                           alone=in_flight is not None and in_flight.count <= 1)
        result = job.result or {}
        t_enc = time.perf_counter_ns()
        body_out, hlen = encode_infer_response(
            model.name, model.version, req.id,
            [(n, outputs_map[n].datatype, result[n], binary) for n, binary in wanted])
        accept = headers.get("accept-encoding", "")
        resp_headers: dict[str, str] = {}
        if accept and len(body_out) >= 1024:
            if "gzip" in accept:
                body_out = gzip.compress(body_out, compresslevel=1)
                resp_headers["Content-Encoding"] = "gzip"
            elif "deflate" in accept:
                body_out = zlib.compress(body_out, 1)
                resp_headers["Content-Encoding"] = "deflate"
        if hlen is not None:
            resp_headers["Inference-Header-Content-Length"] = str(hlen)
        end = time.perf_counter_ns()
        model.stats.record_request(True, end - start, job.queue_ns, job.input_ns, job.infer_ns,
                                   job.output_ns + (end - t_enc))
        children = model.metric_children
        if children is None:
            labels = (model.name, model.version)
            children = (metrics.INFER_REQUESTS.labels(*labels), metrics.INFER_LATENCY.labels(*labels),
                        metrics.INFER_QUEUE.labels(*labels))
        children[0].inc()
        children[1].observe((end - start) / 1e9)
        children[2].observe(job.queue_ns / 1e9)
        media = "application/octet-stream" if hlen is not None else _JSON
        return Response(body_out, media_type=media, headers=resp_headers)
    except ApiError as exc:
        model.stats.record_request(False, time.perf_counter_ns() - start)
        metrics.INFER_REQUESTS.labels(model.name, model.version).inc()
        metrics.INFER_FAILURES.labels(model.name, model.version, str(exc.status_code)).inc()
        raise


@router.post("/v2/models/{model_name}/infer")
async def infer(request: Request, model_name: str) -> Response:
    return await handle_infer(request, model_name, None)


@router.post("/v2/models/{model_name}/versions/{version}/infer")
async def infer_version(request: Request, model_name: str, version: str) -> Response:
    check_version(version)
    return await handle_infer(request, model_name, version)


# ------------------------------------------------------------------------------------------------
# repository
# ------------------------------------------------------------------------------------------------
def _check_admin(request: Request) -> None:
    token = request.app.state.settings.admin_token
    if not token:
        return
    auth = request.headers.get("authorization", "")
    scheme, _, given = auth.partition(" ")
    if not auth or scheme.lower() != "bearer":
        raise ApiError(401, "this repository operation needs an 'Authorization: Bearer <token>' header",
                       headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ApiError(403, "the bearer token is not valid")


@router.post("/v2/repository/index")
async def repository_index(request: Request) -> Response:
    body = await _json_body(request)
    ready_only = body.get("ready", False)
    if not isinstance(ready_only, bool):
        raise ApiError(400, "'ready' must be true or false")
    return _json(_repo(request).index(ready_only=ready_only))


@router.post("/v2/repository/models/{model_name}/load")
async def repository_load(request: Request, model_name: str) -> Response:
    _check_admin(request)
    check_name(model_name)
    body = await _json_body(request)
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise ApiError(400, "'parameters' must be an object")
    if any(k.startswith("file:") for k in params):
        raise ApiError(400, "loading a model from uploaded files is not supported; put it in the repository")
    override = None
    if "config" in params:
        raw = params["config"]
        try:
            obj = orjson.loads(raw) if isinstance(raw, str | bytes) else raw
            override = config_from_json(obj, model_name)
        except (orjson.JSONDecodeError, ConfigError) as exc:
            raise ApiError(400, f"invalid 'config' parameter: {exc}") from exc
    repo = _repo(request)
    await asyncio.to_thread(repo.load, model_name, override)
    return _json({})


@router.post("/v2/repository/models/{model_name}/unload")
async def repository_unload(request: Request, model_name: str) -> Response:
    _check_admin(request)
    check_name(model_name)
    await _json_body(request)
    await asyncio.to_thread(_repo(request).unload, model_name)
    return _json({})


# ------------------------------------------------------------------------------------------------
# logging, trace, shared memory (Triton extensions the client has calls for)
# ------------------------------------------------------------------------------------------------
_LEVELS = {"error": logging.ERROR, "warning": logging.WARNING, "info": logging.INFO, "verbose": logging.DEBUG}


def _log_settings() -> dict[str, Any]:
    level = logging.getLogger("sepconv").getEffectiveLevel()
    return {
        "log_file": "",
        "log_info": level <= logging.INFO,
        "log_warning": level <= logging.WARNING,
        "log_error": level <= logging.ERROR,
        "log_verbose_level": 1 if level <= logging.DEBUG else 0,
        "log_format": "default",
    }


@router.get("/v2/logging")
async def get_logging() -> Response:
    return _json(_log_settings())


@router.post("/v2/logging")
async def set_logging(request: Request) -> Response:
    body = await _json_body(request)
    known = {"log_file", "log_info", "log_warning", "log_error", "log_verbose_level", "log_format"}
    unknown = set(body) - known
    if unknown:
        raise ApiError(400, f"unknown log setting(s): {', '.join(sorted(unknown))}")
    if body.get("log_file"):
        raise ApiError(400, "log_file cannot be changed at run time")
    for key in ("log_info", "log_warning", "log_error"):
        if key in body and not isinstance(body[key], bool):
            raise ApiError(400, f"{key} must be true or false")
    verbose = body.get("log_verbose_level", 0)
    if not isinstance(verbose, int) or isinstance(verbose, bool) or verbose < 0:
        raise ApiError(400, "log_verbose_level must be a non-negative integer")
    if verbose > 0:
        level = logging.DEBUG
    elif body.get("log_info", True):
        level = logging.INFO
    elif body.get("log_warning", True):
        level = logging.WARNING
    else:
        level = logging.ERROR
    logging.getLogger("sepconv").setLevel(level)
    return _json(_log_settings())


_TRACE_OFF = {"trace_level": ["OFF"], "trace_rate": "1000", "trace_count": "-1", "log_frequency": "0",
              "trace_file": "", "trace_mode": "triton"}


@router.get("/v2/trace/setting")
async def get_trace() -> Response:
    return _json(_TRACE_OFF)


@router.get("/v2/models/{model_name}/trace/setting")
async def get_model_trace(request: Request, model_name: str) -> Response:
    _repo(request).get(model_name)
    return _json(_TRACE_OFF)


async def _set_trace(request: Request) -> Response:
    body = await _json_body(request)
    level = body.get("trace_level")
    if level not in (None, ["OFF"], "OFF", []):
        raise ApiError(400, "tracing is not supported by this server (trace_level can only be OFF); "
                            "use POST /v1/models/{m}/profile for per-layer timings")
    return _json(_TRACE_OFF)


@router.post("/v2/trace/setting")
async def set_trace(request: Request) -> Response:
    return await _set_trace(request)


@router.post("/v2/models/{model_name}/trace/setting")
async def set_model_trace(request: Request, model_name: str) -> Response:
    _repo(request).get(model_name)
    return await _set_trace(request)


@router.get("/v2/systemsharedmemory/status")
@router.get("/v2/systemsharedmemory/region/{region}/status")
@router.get("/v2/cudasharedmemory/status")
@router.get("/v2/cudasharedmemory/region/{region}/status")
async def shm_status(region: str | None = None) -> Response:
    if region:
        raise ApiError(404, f"no shared-memory region {region!r} (shared memory is not supported)")
    return _json([])


@router.post("/v2/systemsharedmemory/register")
@router.post("/v2/systemsharedmemory/region/{region}/register")
@router.post("/v2/cudasharedmemory/register")
@router.post("/v2/cudasharedmemory/region/{region}/register")
async def shm_register(region: str | None = None) -> Response:
    raise ApiError(400, "shared-memory tensors are not supported by this server; send binary tensor data")


@router.post("/v2/systemsharedmemory/unregister")
@router.post("/v2/systemsharedmemory/region/{region}/unregister")
@router.post("/v2/cudasharedmemory/unregister")
@router.post("/v2/cudasharedmemory/region/{region}/unregister")
async def shm_unregister(region: str | None = None) -> Response:
    return _json({})
