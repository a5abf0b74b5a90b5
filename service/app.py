"""The FastAPI application: ``create_app(settings)`` — wiring only.

It builds the collaborators once, in order, and passes them in: settings -> registry
(:class:`~sepconv.service.registry.registry.ModelRegistry`) -> runtime (the ``session.run`` executor, and the
:class:`~sepconv.service.runtime.serving.ServingHook` that gives each loaded version its scheduler) -> data plane
(:class:`~sepconv.service.dataplane.dataplane.DataPlane`) -> the REST transport (:mod:`sepconv.service.rest`) and,
unless ``settings.grpc_port`` is 0, the gRPC transport (:mod:`sepconv.service.grpc`: started by the lifespan on the
same event loop once the models are loaded).

* ``app.state.settings`` — the :class:`~sepconv.service.settings.Settings` in use.
* ``app.state.registry`` — the loaded models: ``.get(name, version=None)`` returns the
  :class:`~sepconv.service.registry.model.LoadedModel` (``.name, .version, .path, .session, .metadata,
  .max_batch_size, .config, .providers``...) or raises ``ModelNotFound`` / ``NotFound`` (version) /
  ``ModelNotReady`` / ``InvalidInput``.
* ``app.state.dataplane`` — what every transport calls; ``app.state.executor`` — the thread pool that runs
  ``session.run``; ``app.state.in_flight`` — requests being handled (HTTP, and gRPC infer requests);
  ``app.state.grpc`` — the :class:`~sepconv.service.grpc.server.GrpcServer` while it runs (``.port``), else ``None``.
Route modules get these through :mod:`sepconv.service.rest.deps`.

Routers: V2 protocol (:mod:`sepconv.service.rest.v2`, its infer routes also reached through
:mod:`sepconv.service.rest.fastpath`), ``/v1/conv`` (:mod:`sepconv.service.rest.conv`), profiling
(:mod:`sepconv.service.rest.profiling`), ``/v1/models/{m}/classify`` (:mod:`sepconv.service.rest.classify`),
``/metrics``, the dashboard at ``/`` and the model pages (:mod:`sepconv.service.rest.ops`).
Models load at start-up (lifespan), then gRPC starts; shutdown stops gRPC (its RPCs in flight finish), lets
in-flight HTTP requests finish, then unloads.

Run: ``uvicorn --factory sepconv.service.app:create_app`` (or ``sepconv.service.app:app``, made on first access).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from sepconv import __version__
from sepconv.service.dataplane.dataplane import DataPlane
from sepconv.service.dataplane.inflight import InFlight
from sepconv.service.grpc.server import GrpcServer
from sepconv.service.registry.registry import ModelRegistry
from sepconv.service.rest import classify as classify_routes
from sepconv.service.rest import conv as conv_routes
from sepconv.service.rest import docs, ops, v2
from sepconv.service.rest import profiling as profiling_routes
from sepconv.service.rest.errors import install_error_handlers
from sepconv.service.rest.fastpath import InferFastPath
from sepconv.service.rest.middleware import ServiceMiddleware
from sepconv.service.rest.transport import TransportGuard
from sepconv.service.runtime.serving import ServingHook, make_executor
from sepconv.service.settings import Settings, admin_problem, get_settings

log = logging.getLogger("sepconv.app")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    problem = admin_problem(settings)
    if problem:
        raise RuntimeError(problem)
    executor = make_executor(settings)
    registry = ModelRegistry(settings, hooks=[ServingHook(executor, settings)])
    dataplane = DataPlane(settings, registry)
    in_flight = InFlight()
    guard = TransportGuard(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.started_at = time.time()
        if settings.load_at_startup:
            await asyncio.to_thread(registry.load_all)
        dataplane.started = True
        log.info("serving %d model version(s) from %s", len(registry.loaded()), registry.root)
        grpc_server = None
        if settings.grpc_port:
            grpc_server = GrpcServer(settings, dataplane, registry, in_flight)
            try:
                await grpc_server.start()
            except BaseException:  # e.g. the port is taken: the start-up fails, leaving nothing loaded
                await asyncio.to_thread(registry.close)
                executor.shutdown(wait=False, cancel_futures=True)
                raise
        app.state.grpc = grpc_server
        try:
            yield
        finally:
            dataplane.stopping = True
            deadline = time.monotonic() + settings.shutdown_grace_s
            if grpc_server is not None:
                await grpc_server.stop(grace=max(0.0, deadline - time.monotonic()))
                app.state.grpc = None
            while in_flight.count > 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            dataplane.close()  # shared-memory regions unregistered
            await asyncio.to_thread(registry.close)
            executor.shutdown(wait=True, cancel_futures=False)

    app = FastAPI(
        title="sepconv",
        version=__version__,
        description="MobileNet-style networks on ONNX Runtime: KServe V2 inference, TF-exact convolutions, "
                    "per-layer profiling.",
        lifespan=lifespan,
        docs_url=None,  # /docs with local assets: sepconv.service.rest.docs
        redoc_url=None,  # ReDoc is CDN-only
    )
    app.state.settings = settings
    app.state.registry = registry
    app.state.dataplane = dataplane
    app.state.executor = executor
    app.state.in_flight = in_flight
    app.state.grpc = None
    app.state.transport_guard = guard  # shared by the connections (rest.transport) and the middleware

    install_error_handlers(app)
    app.include_router(v2.router)
    conv_routes.attach(app, settings)
    profiling_routes.attach(app, settings)
    classify_routes.attach(app, settings)
    app.include_router(conv_routes.router)
    app.include_router(classify_routes.router)
    app.include_router(profiling_routes.router)
    app.include_router(ops.router)
    docs.install(app)

    app.add_middleware(InferFastPath, fastapi_app=app)  # inside ServiceMiddleware (added last = outermost)
    app.add_middleware(ServiceMiddleware, settings=settings, tracker=in_flight, guard=guard)
    return app


def __getattr__(name: str) -> Any:  # ``sepconv.service.app:app`` for uvicorn without --factory
    if name == "app":
        return create_app()
    raise AttributeError(name)
