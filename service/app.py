"""The FastAPI application: ``create_app(settings)``.

* ``app.state.settings`` — the :class:`~sepconv.service.settings.Settings` in use.
* ``app.state.repository`` — the :class:`~sepconv.service.repository.ModelRepository`. For other features
  (profiling, dashboard): ``app.state.repository.get(name, version=None)`` returns the loaded model with
  ``.name, .version, .path`` (Path of model.onnx), ``.session`` (ORT InferenceSession), ``.metadata``
  (dict of ONNX metadata_props), ``.max_batch_size``, ``.config`` (ModelConfig; ``.config.to_json()`` is
  the V2 config), ``.providers`` (what the session really runs on); it raises ``ApiError`` 404 for an
  unknown model/version and 503 for one that is not ready.
* ``app.state.executor`` — the thread pool that runs ``session.run``.

Routers: V2 protocol (:mod:`sepconv.service.v2_api`), ``/v1/conv`` (:mod:`sepconv.service.conv_api`), profiling
(:mod:`sepconv.service.profiling_api`), ``/metrics`` and the dashboard at ``/`` (:mod:`sepconv.service.ops_api`).
Models load at start-up (lifespan); shutdown lets in-flight requests finish, then unloads.

Run: ``uvicorn --factory service.app:create_app`` (or ``sepconv.service.app:app``, made on first access).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from sepconv import __version__
from sepconv.service import ops_api, v2_api
from sepconv.service.batcher import Scheduler
from sepconv.service.fastpath import InferFastPath
from sepconv.service.metrics import BATCH_SIZE, INFER_COMPUTE, INFER_LATENCY, INFER_QUEUE, INFER_REQUESTS, MODEL_READY
from sepconv.service.middleware import InFlight, ServiceMiddleware
from sepconv.service.repository import LoadedModel, ModelRepository
from sepconv.service.rest import conv as conv_routes
from sepconv.service.rest import profiling as profiling_routes
from sepconv.service.rest.errors import install_error_handlers
from sepconv.service.settings import Settings, get_settings

log = logging.getLogger("sepconv.app")


def _attach_scheduler(app: FastAPI, settings: Settings) -> Any:
    def attach(model: LoadedModel) -> None:
        cfg = model.config
        labels = (model.name, model.version)
        batch_hist = BATCH_SIZE.labels(*labels)
        compute_hist = INFER_COMPUTE.labels(*labels)
        stats = model.stats

        def on_execution(batch: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
            stats.record_execution(batch, input_ns, infer_ns, output_ns)
            batch_hist.observe(batch)
            compute_hist.observe(infer_ns / 1e9)

        db = cfg.dynamic_batching
        model.scheduler = Scheduler(
            model.session, [o.name for o in model.outputs], app.state.executor,
            max_batch_size=model.max_batch_size, dynamic=db is not None,
            max_queue_delay_us=db.max_queue_delay_us if db else 0,
            preferred_batch_sizes=db.preferred_batch_sizes if db else None,
            workers=settings.batch_workers or cfg.instance_count,
            on_execution=on_execution, label=f"{model.name}/{model.version}", adaptive=settings.adaptive_batching,
        )
        model.metric_children = (INFER_REQUESTS.labels(*labels), INFER_LATENCY.labels(*labels),
                                 INFER_QUEUE.labels(*labels))
        MODEL_READY.labels(*labels).set(1)

    return attach


def _detach(model: LoadedModel) -> None:
    MODEL_READY.labels(model.name, model.version).set(0)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    repository = ModelRepository(settings)
    in_flight = InFlight()
    threads = settings.run_threads or max(4, min(32, (os.cpu_count() or 2) * 2))
    executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ort-run")

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        app.state.started_at = time.time()
        if settings.load_at_startup:
            await asyncio.to_thread(repository.load_all)
        app.state.startup_complete = True
        log.info("serving %d model version(s) from %s", len(repository.loaded()), repository.root)
        try:
            yield
        finally:
            app.state.shutting_down = True
            deadline = time.monotonic() + settings.shutdown_grace_s
            while in_flight.count > 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            await asyncio.to_thread(repository.close)
            executor.shutdown(wait=True, cancel_futures=False)

    app = FastAPI(
        title="sepconv",
        version=__version__,
        description="MobileNet-style networks on ONNX Runtime: KServe V2 inference, TF-exact convolutions, "
                    "per-layer profiling.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.repository = repository
    app.state.registry = repository  # the loaded models: .get(name, version=None) -> LoadedModel
    app.state.executor = executor
    app.state.startup_complete = False
    app.state.shutting_down = False
    app.state.in_flight = in_flight
    repository.on_loaded.append(_attach_scheduler(app, settings))
    repository.on_unloaded.append(_detach)

    install_error_handlers(app)
    app.include_router(v2_api.router)
    conv_routes.attach(app, settings)
    profiling_routes.attach(app, settings)
    app.include_router(conv_routes.router)
    app.include_router(profiling_routes.router)
    app.include_router(ops_api.router)

    app.add_middleware(InferFastPath, fastapi_app=app)  # inside ServiceMiddleware (added last = outermost)
    app.add_middleware(ServiceMiddleware, max_request_bytes=settings.max_request_bytes,
                       log_requests=settings.access_log, tracker=in_flight,
                       max_inflight_bytes=settings.max_inflight_bytes)
    return app


def __getattr__(name: str) -> Any:  # ``sepconv.service.app:app`` for uvicorn without --factory
    if name == "app":
        return create_app()
    raise AttributeError(name)
