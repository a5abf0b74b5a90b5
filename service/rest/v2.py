"""KServe V2 / Open Inference Protocol over REST, with Triton's extensions: the routes.

Each route does the HTTP part (path parameters, body, headers, status) and makes ONE call into the
:class:`~sepconv.service.dataplane.dataplane.DataPlane`, which does the work for every transport. Health,
server and model metadata, readiness, infer (JSON and binary tensors), config, statistics, repository
index/load/unload, log settings, Triton's system shared-memory extension (register / unregister / status; a
region may be registered by a client on this host, see ``settings.shared_memory``); trace and CUDA shared-memory
routes answer so that the unmodified ``tritonclient[http]`` client works for every call it has (reported as not
supported rather than pretended). Errors are typed; :mod:`sepconv.service.rest.errors` gives their status.

An infer request: :func:`handle_infer` (called by :mod:`sepconv.service.rest.fastpath` for POSTs, or by the
routes below) -> ``DataPlane.infer`` with a :class:`RestInfer` (body read, ``Content-Encoding``,
:func:`~sepconv.service.rest.codec.parse_infer_request`; then
:func:`~sepconv.service.rest.codec.encode_infer_response` and response compression) -> input checks -> the
model's scheduler -> ``session.run``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.datastructures import Headers
from starlette.responses import Response

from sepconv.service.dataplane.dataplane import DataPlane
from sepconv.service.dataplane.shm import SharedMemoryRegistry
from sepconv.service.dataplane.tensors import DECODE_OFFLOAD_BYTES
from sepconv.service.dataplane.types import InferRequest, InferResponse
from sepconv.service.errors import InvalidInput
from sepconv.service.rest import body as bodies
from sepconv.service.rest import deps, jsonfast
from sepconv.service.rest.codec import encode_infer_response, parse_infer_request
from sepconv.service.settings import Settings, host_of, is_loopback

router = APIRouter(tags=["v2"])

_JSON = "application/json"
_BINARY = "application/octet-stream"


def _json(obj: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status, media_type=_JSON)


# ------------------------------------------------------------------------------------------------
# health and server metadata
# ------------------------------------------------------------------------------------------------
@router.get("/v2/health/live")
async def live(request: Request) -> Response:
    return _json({"live": deps.dataplane(request).live()})


@router.get("/v2/health/ready")
async def ready(request: Request) -> Response:
    ok = deps.dataplane(request).ready()
    return _json({"ready": ok}, 200 if ok else 503)


@router.get("/v2")
async def server_metadata(request: Request) -> Response:
    return _json(deps.dataplane(request).server_metadata())


# ------------------------------------------------------------------------------------------------
# statistics (before /v2/models/{name} so "stats" is not taken for a model name)
# ------------------------------------------------------------------------------------------------
@router.get("/v2/models/stats")
async def all_stats(request: Request) -> Response:
    return _json(deps.dataplane(request).statistics())


@router.get("/v2/models/{model_name}/stats")
async def model_stats(request: Request, model_name: str) -> Response:
    return _json(deps.dataplane(request).statistics(model_name))


@router.get("/v2/models/{model_name}/versions/{version}/stats")
async def model_version_stats(request: Request, model_name: str, version: str) -> Response:
    return _json(deps.dataplane(request).statistics(model_name, version))


# ------------------------------------------------------------------------------------------------
# model metadata, readiness, config
# ------------------------------------------------------------------------------------------------
@router.get("/v2/models/{model_name}")
async def model_metadata(request: Request, model_name: str) -> Response:
    return _json(deps.dataplane(request).model_metadata(model_name))


@router.get("/v2/models/{model_name}/versions/{version}")
async def model_version_metadata(request: Request, model_name: str, version: str) -> Response:
    return _json(deps.dataplane(request).model_metadata(model_name, version))


def _ready_response(request: Request, name: str, version: str | None) -> Response:
    state = deps.dataplane(request).model_ready(name, version)
    if not state.ready:
        return _json({"name": name, "ready": False, "error": state.reason}, 503)
    return _json({"name": name, "version": state.version, "ready": True})


@router.get("/v2/models/{model_name}/ready")
async def model_ready(request: Request, model_name: str) -> Response:
    return _ready_response(request, model_name, None)


@router.get("/v2/models/{model_name}/versions/{version}/ready")
async def model_version_ready(request: Request, model_name: str, version: str) -> Response:
    return _ready_response(request, model_name, version)


@router.get("/v2/models/{model_name}/config")
async def model_config(request: Request, model_name: str) -> Response:
    return _json(deps.dataplane(request).model_config(model_name))


@router.get("/v2/models/{model_name}/versions/{version}/config")
async def model_version_config(request: Request, model_name: str, version: str) -> Response:
    return _json(deps.dataplane(request).model_config(model_name, version))


# ------------------------------------------------------------------------------------------------
# inference
# ------------------------------------------------------------------------------------------------
class RestInfer:
    """One infer request over HTTP, for :meth:`DataPlane.infer` (an ``InferCall``): decode reads the body
    (``Content-Encoding`` undone, capped at ``max_request_bytes``) and parses it with the
    ``Inference-Header-Content-Length`` split; encode builds the response, compressed for
    ``Accept-Encoding``, with the header length when outputs are binary."""

    __slots__ = ("headers", "limit", "request", "settings", "shm")

    def __init__(self, request: Request, settings: Settings, shm: SharedMemoryRegistry | None = None) -> None:
        self.request = request
        self.headers: Headers = request.headers
        self.settings = settings
        self.limit = settings.max_request_bytes
        self.shm = shm

    async def decode(self) -> InferRequest:
        body = await self.request.body()
        headers = self.headers
        encoding = headers.get("content-encoding")
        if encoding:
            body = bodies.decompress(body, encoding, self.limit)
        header_length = headers.get("inference-header-content-length")
        hl = None
        if header_length is not None:
            try:
                hl = int(header_length)
            except ValueError as exc:
                raise InvalidInput(f"Inference-Header-Content-Length {header_length!r} is not an integer") from exc
        if len(body) > DECODE_OFFLOAD_BYTES:
            return await asyncio.to_thread(self._parse, body, hl)
        return self._parse(body, hl)

    def _parse(self, body: bytes, hl: int | None) -> InferRequest:
        s = self.settings
        fast = jsonfast.parse(body, hl, self.shm, s.json_max_elements, s.json_max_containers)
        if fast is not None:  # a JSON body decoded into typed buffers (the same request the reference gives)
            return fast
        bodies.check_structure(body if hl is None else body[:max(hl, 0)], s.json_max_elements, s.json_max_containers)
        return parse_infer_request(body, hl, self.shm)

    def encode(self, response: InferResponse) -> Response:
        body, hlen = encode_infer_response(response)
        body, encoding = bodies.compress(body, self.headers.get("accept-encoding", ""))
        headers: dict[str, str] = {}
        if encoding is not None:
            headers["Content-Encoding"] = encoding
        if hlen is not None:
            headers["Inference-Header-Content-Length"] = str(hlen)
        return Response(body, media_type=_BINARY if hlen is not None else _JSON, headers=headers)


async def handle_infer(request: Request, model_name: str, version: str | None) -> Response:
    """POST .../infer: one call into the data plane. ``alone`` (the scheduler may then run it on the event loop):
    see :meth:`~sepconv.service.dataplane.inflight.InFlight.alone` — no other request in hand, none waiting."""
    state = request.app.state
    dataplane = state.dataplane
    return await dataplane.infer(model_name, version, RestInfer(request, state.settings, dataplane.shm),
                                 alone=await state.in_flight.alone())


@router.post("/v2/models/{model_name}/infer")
async def infer(request: Request, model_name: str) -> Response:
    return await handle_infer(request, model_name, None)


@router.post("/v2/models/{model_name}/versions/{version}/infer")
async def infer_version(request: Request, model_name: str, version: str) -> Response:
    return await handle_infer(request, model_name, version)


# ------------------------------------------------------------------------------------------------
# repository
# ------------------------------------------------------------------------------------------------
def _bearer_token(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; ``None`` when there is no such header."""
    auth = request.headers.get("authorization", "")
    scheme, _, given = auth.partition(" ")
    if not auth or scheme.lower() != "bearer":
        return None
    return given.strip()


def _admin(request: Request) -> DataPlane:
    """The data plane, once its admin check passed for this state-changing request."""
    dataplane = deps.dataplane(request)
    dataplane.authorize(_bearer_token(request), loopback_host=is_loopback(host_of(request.headers.get("host", ""))))
    return dataplane


@router.post("/v2/repository/index")
async def repository_index(request: Request) -> Response:
    body = await bodies.json_object(request)
    return _json(deps.dataplane(request).repository_index(body.get("ready", False)))


@router.post("/v2/repository/models/{model_name}/load")
async def repository_load(request: Request, model_name: str) -> Response:
    dataplane = _admin(request)
    body = await bodies.json_object(request)
    await dataplane.load(model_name, body.get("parameters"))
    return _json({})


@router.post("/v2/repository/models/{model_name}/unload")
async def repository_unload(request: Request, model_name: str) -> Response:
    dataplane = _admin(request)
    await bodies.json_object(request)
    await dataplane.unload(model_name)
    return _json({})


# ------------------------------------------------------------------------------------------------
# logging, trace, shared memory (Triton extensions the client has calls for)
# ------------------------------------------------------------------------------------------------
@router.get("/v2/logging")
async def get_logging(request: Request) -> Response:
    return _json(deps.dataplane(request).log_settings())


@router.post("/v2/logging")
async def set_logging(request: Request) -> Response:
    dataplane = _admin(request)
    body = await bodies.json_object(request)
    return _json(dataplane.set_log_settings(body))


@router.get("/v2/trace/setting")
async def get_trace(request: Request) -> Response:
    return _json(deps.dataplane(request).trace_settings())


@router.get("/v2/models/{model_name}/trace/setting")
async def get_model_trace(request: Request, model_name: str) -> Response:
    return _json(deps.dataplane(request).trace_settings(model_name))


@router.post("/v2/trace/setting")
async def set_trace(request: Request) -> Response:
    body = await bodies.json_object(request)
    return _json(deps.dataplane(request).set_trace_settings(body))


@router.post("/v2/models/{model_name}/trace/setting")
async def set_model_trace(request: Request, model_name: str) -> Response:
    body = await bodies.json_object(request)
    return _json(deps.dataplane(request).set_trace_settings(body, model_name))


def _local_client(request: Request) -> bool:
    """Whether the peer is on this host (a loopback address) and sent the request to a loopback name (not a
    DNS-rebound one): shared memory is for such clients."""
    client = request.client
    return (client is not None and is_loopback(client.host)
            and is_loopback(host_of(request.headers.get("host", ""))))


@router.get("/v2/systemsharedmemory/status")
@router.get("/v2/systemsharedmemory/region/{region}/status")
async def shm_status(request: Request, region: str | None = None) -> Response:
    return _json(deps.dataplane(request).shared_memory_status(region))


@router.post("/v2/systemsharedmemory/region/{region}/register")
async def shm_register(request: Request, region: str) -> Response:
    body = await bodies.json_object(request)
    deps.dataplane(request).register_shared_memory(region, body.get("key"), body.get("offset", 0),
                                                   body.get("byte_size"), local=_local_client(request))
    return _json({})


@router.post("/v2/systemsharedmemory/unregister")
@router.post("/v2/systemsharedmemory/region/{region}/unregister")
async def shm_unregister(request: Request, region: str | None = None) -> Response:
    deps.dataplane(request).unregister_shared_memory(region)
    return _json({})


@router.get("/v2/cudasharedmemory/status")
@router.get("/v2/cudasharedmemory/region/{region}/status")
async def cuda_shm_status(request: Request, region: str | None = None) -> Response:
    return _json(deps.dataplane(request).shared_memory_status(region, cuda=True))


@router.post("/v2/systemsharedmemory/register")
async def shm_register_unnamed() -> Response:
    raise InvalidInput("register a system shared-memory region at /v2/systemsharedmemory/region/{name}/register")


@router.post("/v2/cudasharedmemory/register")
@router.post("/v2/cudasharedmemory/region/{region}/register")
async def cuda_shm_register(request: Request, region: str | None = None) -> Response:
    deps.dataplane(request).register_shared_memory(region, None, 0, 0, local=False, cuda=True)
    return _json({})


@router.post("/v2/cudasharedmemory/unregister")
@router.post("/v2/cudasharedmemory/region/{region}/unregister")
async def cuda_shm_unregister(request: Request, region: str | None = None) -> Response:
    deps.dataplane(request).unregister_shared_memory(region, cuda=True)
    return _json({})
