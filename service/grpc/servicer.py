"""Triton's ``inference.GRPCInferenceService``: each RPC is one :class:`~sepconv.service.dataplane.dataplane.DataPlane`
call plus the protobuf conversion, as each REST route is (:mod:`sepconv.service.rest.v2`).

* health and metadata: ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata;
* ModelInfer: a :class:`GrpcInfer` (the ``InferCall`` of this transport: :mod:`sepconv.service.grpc.codec`) handed
  to ``DataPlane.infer`` — the same scheduler, statistics and metrics as REST, so requests of both transports
  batch together;
* ModelStreamInfer: requests read as they come and run concurrently (they batch too); responses are written in
  the order of the requests; a failed request becomes that response's ``error_message`` and the stream goes on;
* ModelConfig, ModelStatistics (the REST JSON objects are the protobufs' JSON mapping: ``json_format`` converts),
  RepositoryIndex / RepositoryModelLoad / RepositoryModelUnload and LogSettings changes (the admin rules of REST:
  ``DataPlane.authorize`` — model control ``explicit``, and the ``authorization: Bearer <token>`` metadata when
  an admin token is set; no browser speaks gRPC, so there is no cross-origin check);
* Triton's system shared-memory extension: SystemSharedMemoryRegister / Unregister / Status on the data plane's
  registry of regions (a region may be registered by a peer on this host, ``settings.shared_memory``); inputs and
  outputs name regions in their parameters (:mod:`sepconv.service.grpc.codec`). CUDA shared memory: status
  answers no regions, registering it ``UNIMPLEMENTED``; trace settings answer ``UNIMPLEMENTED`` with a message
  (DESIGN.md).

Typed errors become gRPC status codes in :mod:`sepconv.service.grpc.errors` (the :func:`~.errors.rpc` decorator).
Every infer request counts in the server's in-flight tracker shared with REST: ``alone`` (the scheduler may then
run it inline) means no other request of either transport is being handled, and shutdown waits for both.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

import grpc
from google.protobuf import json_format

from sepconv.service.dataplane.dataplane import DataPlane
from sepconv.service.dataplane.shm import SharedMemoryRegistry
from sepconv.service.dataplane.tensors import DECODE_OFFLOAD_BYTES
from sepconv.service.dataplane.types import InferRequest, InferResponse
from sepconv.service.errors import NotFound, ServiceError
from sepconv.service.grpc import codec
from sepconv.service.grpc.errors import message_of, rpc
from sepconv.service.grpc.generated import grpc_service_pb2 as pb
from sepconv.service.grpc.generated import grpc_service_pb2_grpc as pb_grpc
from sepconv.service.grpc.generated import model_config_pb2
from sepconv.service.settings import is_loopback

log = logging.getLogger("sepconv.grpc")

# requests of one stream being decoded/queued/run at once; the stream stops reading past it (flow control), and
# past max_request_bytes of messages held (one request always passes): a stream holds what one request may
STREAM_WINDOW = 64


class Tracker(Protocol):
    """Requests being handled by the server, every transport together
    (:class:`~sepconv.service.dataplane.inflight.InFlight`)."""

    count: int

    async def alone(self) -> bool: ...


class GrpcInfer:
    """One ``ModelInferRequest``, for :meth:`DataPlane.infer` (an ``InferCall``)."""

    __slots__ = ("request", "shm")

    def __init__(self, request: Any, shm: SharedMemoryRegistry | None = None) -> None:
        self.request = request
        self.shm = shm

    async def decode(self) -> InferRequest:
        if self.request.ByteSize() > DECODE_OFFLOAD_BYTES:
            return await asyncio.to_thread(codec.decode_request, self.request, self.shm)
        return codec.decode_request(self.request, self.shm)

    def encode(self, response: InferResponse) -> Any:
        return codec.encode_response(response)


def bearer_token(context: grpc.aio.ServicerContext) -> str | None:
    """The token of ``authorization: Bearer <token>`` metadata; ``None`` when there is none."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            text = value.decode("latin-1") if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


def _setting(value: Any) -> pb.LogSettingsResponse.SettingValue:
    if isinstance(value, bool):
        return pb.LogSettingsResponse.SettingValue(bool_param=value)
    if isinstance(value, int):
        return pb.LogSettingsResponse.SettingValue(uint32_param=value)
    return pb.LogSettingsResponse.SettingValue(string_param=str(value))


async def _unimplemented(context: grpc.aio.ServicerContext, what: str) -> None:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{what} is not supported by this server")


def local_peer(context: grpc.aio.ServicerContext) -> bool:
    """Whether the peer is on this host: a loopback address or a Unix socket."""
    kind, _, address = (context.peer() or "").partition(":")
    if kind == "unix":
        return True
    if kind in ("ipv4", "ipv6"):
        return is_loopback(address.rpartition(":")[0])  # "ipv4:127.0.0.1:5000", "ipv6:[::1]:5000"
    return False


def _region_status(status: dict[str, Any]) -> Any:
    return pb.SystemSharedMemoryStatusResponse.RegionStatus(name=status["name"], key=status["key"],
                                                            offset=status["offset"], byte_size=status["byte_size"])


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane, in_flight: Tracker) -> None:
        self.dataplane = dataplane
        self.in_flight = in_flight

    # -- health and metadata -------------------------------------------------------------------------
    @rpc
    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=self.dataplane.live())

    @rpc
    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=self.dataplane.ready())

    @rpc
    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        # as Triton: an unknown model (or version) is simply not ready; a malformed version is an error
        try:
            state = self.dataplane.model_ready(request.name, request.version or None)
        except NotFound:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=state.ready)

    @rpc
    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        meta = self.dataplane.server_metadata()
        return pb.ServerMetadataResponse(name=meta["name"], version=meta["version"], extensions=meta["extensions"])

    @rpc
    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        meta = self.dataplane.model_metadata(request.name, request.version or None)
        tensors = lambda key: [pb.ModelMetadataResponse.TensorMetadata(  # noqa: E731
            name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in meta[key]]
        return pb.ModelMetadataResponse(name=meta["name"], versions=meta["versions"], platform=meta["platform"],
                                        inputs=tensors("inputs"), outputs=tensors("outputs"))

    @rpc
    async def ModelConfig(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        config = self.dataplane.model_config(request.name, request.version or None)
        return pb.ModelConfigResponse(config=json_format.ParseDict(config, model_config_pb2.ModelConfig(),
                                                                   ignore_unknown_fields=True))

    @rpc
    async def ModelStatistics(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        stats = self.dataplane.statistics(request.name or None, request.version or None)
        return json_format.ParseDict(stats, pb.ModelStatisticsResponse(), ignore_unknown_fields=True)

    # -- inference -----------------------------------------------------------------------------------
    @rpc
    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        tracker = self.in_flight
        tracker.count += 1
        try:
            return await self.dataplane.infer(request.model_name, request.model_version or None,
                                              GrpcInfer(request, self.dataplane.shm), alone=await tracker.alone())
        finally:
            tracker.count -= 1

    async def _stream_one(self, request: Any) -> Any:
        tracker = self.in_flight
        tracker.count += 1
        try:
            response = await self.dataplane.infer(request.model_name, request.model_version or None,
                                                  GrpcInfer(request, self.dataplane.shm),
                                                  alone=await tracker.alone())
            return pb.ModelStreamInferResponse(infer_response=response)
        except Exception as exc:  # noqa: BLE001 - one request's failure is its response, the stream goes on
            if not isinstance(exc, ServiceError):
                log.exception("unexpected error in a ModelStreamInfer request")
            return pb.ModelStreamInferResponse(error_message=message_of(exc), infer_response=pb.ModelInferResponse(
                model_name=request.model_name, model_version=request.model_version, id=request.id))
        finally:
            tracker.count -= 1

    async def ModelStreamInfer(self, request_iterator: AsyncIterator[Any],
                               context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        """Read requests while earlier ones run; answer each in the order it came."""
        pending: asyncio.Queue[tuple[asyncio.Task[Any], int] | None] = asyncio.Queue()
        budget = self.dataplane.settings.max_request_bytes
        held = [0, 0]  # bytes, requests
        window = asyncio.Condition()
        failure: list[BaseException] = []

        def room(size: int) -> bool:
            return held[1] == 0 or (held[1] < STREAM_WINDOW and held[0] + size <= budget)

        async def read() -> None:
            try:
                async for request in request_iterator:
                    size = request.ByteSize()
                    async with window:
                        await window.wait_for(lambda size=size: room(size))
                        held[0] += size
                        held[1] += 1
                    pending.put_nowait((asyncio.ensure_future(self._stream_one(request)), size))
            except Exception as exc:  # noqa: BLE001 - the call is broken (cancelled, message too large...)
                failure.append(exc)
            finally:
                pending.put_nowait(None)

        reader = asyncio.ensure_future(read())
        try:
            while (item := await pending.get()) is not None:
                task, size = item
                response = await task
                async with window:
                    held[0] -= size
                    held[1] -= 1
                    window.notify_all()
                yield response
            if failure and not isinstance(failure[0], asyncio.CancelledError):
                raise failure[0]
        finally:
            reader.cancel()
            while not pending.empty():
                item = pending.get_nowait()
                if item is not None:
                    item[0].cancel()

    # -- repository ------------------------------------------------------------------------------------
    @rpc
    async def RepositoryIndex(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        rows = self.dataplane.repository_index(request.ready)
        return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(
            name=r["name"], version=r.get("version", ""), state=str(r["state"]), reason=r.get("reason", ""))
            for r in rows])

    @rpc
    async def RepositoryModelLoad(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.dataplane.authorize(bearer_token(context))
        params = codec.parameters_dict(request.parameters) if request.parameters else None
        await self.dataplane.load(request.model_name, params)
        return pb.RepositoryModelLoadResponse()

    @rpc
    async def RepositoryModelUnload(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.dataplane.authorize(bearer_token(context))
        await self.dataplane.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    # -- logging -----------------------------------------------------------------------------------------
    @rpc
    async def LogSettings(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        changes = codec.parameters_dict(request.settings)
        if changes:  # a change: the admin rules of repository load/unload (REST: POST /v2/logging)
            self.dataplane.authorize(bearer_token(context))
        settings = self.dataplane.set_log_settings(changes) if changes else self.dataplane.log_settings()
        return pb.LogSettingsResponse(settings={k: _setting(v) for k, v in settings.items()})

    # -- not offered: UNIMPLEMENTED with a message ----------------------------------------------------------
    async def TraceSetting(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "tracing is not supported by this server; use POST "
                                                          "/v1/models/{m}/profile for per-layer timings")

    # -- system shared memory -------------------------------------------------------------------------
    @rpc
    async def SystemSharedMemoryStatus(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        regions = self.dataplane.shared_memory_status(request.name or None)
        return pb.SystemSharedMemoryStatusResponse(regions={r["name"]: _region_status(r) for r in regions})

    @rpc
    async def SystemSharedMemoryRegister(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.dataplane.register_shared_memory(request.name, request.key, request.offset, request.byte_size,
                                              local=local_peer(context))
        return pb.SystemSharedMemoryRegisterResponse()

    @rpc
    async def SystemSharedMemoryUnregister(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.dataplane.unregister_shared_memory(request.name or None)
        return pb.SystemSharedMemoryUnregisterResponse()

    @rpc
    async def CudaSharedMemoryStatus(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.dataplane.shared_memory_status(request.name or None, cuda=True)
        return pb.CudaSharedMemoryStatusResponse()

    async def CudaSharedMemoryRegister(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await _unimplemented(context, "CUDA shared memory")

    @rpc
    async def CudaSharedMemoryUnregister(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.CudaSharedMemoryUnregisterResponse()
