"""The gRPC server beside uvicorn: one process, one event loop, the same data plane.

:class:`GrpcServer` builds a ``grpc.aio`` server on ``settings.host:settings.grpc_port`` with

* Triton's ``inference.GRPCInferenceService`` (:class:`~sepconv.service.grpc.servicer.InferenceServicer`);
* ``grpc.health.v1.Health`` (:class:`ModelHealth`): service ``""`` (and ``inference.GRPCInferenceService``) is
  the server's readiness (``DataPlane.ready``), a model's name its readiness; ``Check`` asks the data plane each
  time, ``Watch`` is kept in step by a registry hook (:class:`HealthHook`: load and unload of every model);
* server reflection (``grpc.reflection.v1alpha``) listing those services;
* the message size limit: a request over ``settings.max_request_bytes`` is refused by gRPC itself with
  ``RESOURCE_EXHAUSTED`` (as a REST body over it gets 413); responses are not capped.

Start it once the models are loaded, on the loop that serves REST (:func:`sepconv.service.app.create_app`'s
lifespan does); :meth:`GrpcServer.stop` first marks every health status NOT_SERVING, then stops taking RPCs and
lets those in flight finish within the grace period.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from sepconv.service.dataplane.dataplane import DataPlane
from sepconv.service.errors import NotFound
from sepconv.service.grpc.generated import grpc_service_pb2 as pb
from sepconv.service.grpc.generated import grpc_service_pb2_grpc as pb_grpc
from sepconv.service.grpc.servicer import InferenceServicer, Tracker
from sepconv.service.registry.model import LoadedModel
from sepconv.service.registry.registry import ModelRegistry, ModelRegistryHook
from sepconv.service.settings import Settings

log = logging.getLogger("sepconv.grpc")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class ModelHealth(health.aio.HealthServicer):
    """grpc.health.v1 for the server (``""``, ``inference.GRPCInferenceService``) and each model (its name).

    ``Check`` answers from the data plane (so it is never stale); an unknown model is ``NOT_FOUND``, as the
    health protocol asks for an unknown service. ``Watch`` is the reference implementation's, fed by
    :meth:`refresh` (called by :class:`HealthHook` and at start)."""

    def __init__(self, dataplane: DataPlane) -> None:
        super().__init__()
        self.dataplane = dataplane

    def status_of(self, service: str) -> int | None:
        if service in ("", SERVICE_NAME):
            return SERVING if self.dataplane.ready() else NOT_SERVING
        try:
            return SERVING if self.dataplane.model_ready(service).ready else NOT_SERVING
        except NotFound:
            return None
        except Exception:  # noqa: BLE001 - a malformed name is no service of ours
            return None

    async def Check(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        status = self.status_of(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def refresh(self, *services: str) -> None:
        """Push the current status of ``services`` to their watchers."""
        for service in services:
            status = self.status_of(service)
            if status is not None:
                await self.set(service, status)


class HealthHook(ModelRegistryHook):
    """Keeps :class:`ModelHealth`'s watched statuses in step with the registry (hooks run in loading threads)."""

    def __init__(self, servicer: ModelHealth, loop: asyncio.AbstractEventLoop) -> None:
        self.servicer = servicer
        self.loop = loop

    def _schedule(self, name: str, status: int | None) -> None:
        async def update() -> None:
            if status is None:
                await self.servicer.refresh(name, "")
            else:
                await self.servicer.set(name, status)
                await self.servicer.refresh("")

        try:
            self.loop.call_soon_threadsafe(lambda: self.loop.create_task(update()))
        except RuntimeError:  # the loop is closed: nobody is watching any more
            pass

    def on_load(self, model: LoadedModel) -> None:
        self._schedule(model.name, SERVING)  # the version becomes READY right after its hooks ran

    def on_unload(self, model: LoadedModel) -> None:
        self._schedule(model.name, None)  # another version (or a reload) may still serve it: ask the registry


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class GrpcServer:
    """The gRPC transport's server; see the module docstring."""

    def __init__(self, settings: Settings, dataplane: DataPlane, registry: ModelRegistry, in_flight: Tracker,
                 port: int | None = None) -> None:
        self.settings = settings
        self.dataplane = dataplane
        self.registry = registry
        self.in_flight = in_flight
        self.requested_port = settings.grpc_port if port is None else port
        self.port = 0  # the port bound, once started
        self.server: grpc.aio.Server | None = None
        self.health: ModelHealth | None = None
        self._hook: HealthHook | None = None

    async def start(self) -> None:
        options = [
            ("grpc.max_receive_message_length", int(self.settings.max_request_bytes)),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),  # a port in use is an error, not a second server sharing it
            ("grpc.max_concurrent_streams", int(self.settings.grpc_max_streams_per_connection)),
            ("grpc.max_connection_idle_ms", int(self.settings.grpc_max_idle_s * 1000)),
        ]
        # Past maximum_concurrent_rpcs a call is answered RESOURCE_EXHAUSTED at once: the messages held in memory
        # are bounded by it times max_request_bytes (the receive limit above).
        server = grpc.aio.server(options=options,
                                 maximum_concurrent_rpcs=int(self.settings.grpc_max_concurrent_rpcs))
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(self.dataplane, self.in_flight),
                                                           server)
        self.health = ModelHealth(self.dataplane)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            server)
        address = _address(self.settings.host, self.requested_port)
        try:
            self.port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise RuntimeError(f"gRPC cannot listen on {address}: {exc}") from exc
        if not self.port:
            raise RuntimeError(f"gRPC cannot listen on {address}")
        await server.start()
        self.server = server
        self._hook = HealthHook(self.health, asyncio.get_running_loop())
        self.registry.hooks.append(self._hook)
        await self.health.refresh("", SERVICE_NAME, *sorted({m.name for m in self.registry.loaded()}))
        log.info("gRPC (inference.GRPCInferenceService, health, reflection) on %s", _address(self.settings.host,
                                                                                              self.port))

    async def stop(self, grace: float) -> None:
        """Health NOT_SERVING, then no new RPCs; those in flight get ``grace`` seconds to finish."""
        if self.server is None:
            return
        if self._hook is not None and self._hook in self.registry.hooks:
            self.registry.hooks.remove(self._hook)
        if self.health is not None:
            await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        self.server = None
