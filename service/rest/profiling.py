"""Profiling routes: ``GET /v1/models/{m}/summary``, ``POST /v1/models/{m}/profile``,
``POST /v1/profile/conv``, ``POST /v1/profile/sweep``, ``GET /v1/profile/jobs/{id}``, ``GET|POST
/v1/profile/roofline`` and ``GET /v1/profile/traces/{id}`` (the Chrome trace behind ``trace_url``).

A profile or a sweep sent with ``Prefer: respond-async`` answers 202 ``{"job_id", "job_url"}`` at once and runs as a
job (:mod:`sepconv.service.profiling.jobs`): ``GET /v1/profile/jobs/{id}`` gives its progress and, when done, the
same object the synchronous call returns (the CLI's progress bar and the model page poll it). Finished profiles and
sweeps are also kept as the latest of their model / architecture for the page (:mod:`sepconv.service.ui.latest`).

HTTP only: the body read (capped) and validated into a plan (:mod:`sepconv.service.profiling.request`), then one
engine call under the server's :class:`~sepconv.service.profiling.gate.ProfileGate`. A bad request is a 4xx even
while a profile runs (the plan is made before the gate is taken); one profile (model or conv) runs at a time,
another one meanwhile gets 429 with ``Retry-After``. The gate and the :class:`TraceStore` are made once, by
:func:`attach`.

Handlers are plain ``def`` so FastAPI runs them in its thread pool: a profile takes seconds and must
not stall the event loop that serves inference.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ValidationError

from sepconv.service.profiling import roofline as rl
from sepconv.service.profiling.conv import profile_conv
from sepconv.service.profiling.engine import profile_model
from sepconv.service.profiling.gate import ProfileGate, TraceStore
from sepconv.service.profiling.jobs import JobStore
from sepconv.service.profiling.layers import summary_of
from sepconv.service.profiling.request import (
    ConvProfileRequest,
    ProfileRequest,
    SweepRequest,
    check_provider,
    plan_conv_profile,
    plan_profile,
    plan_sweep,
)
from sepconv.service.profiling.sessions import SessionSpec, with_threads
from sepconv.service.profiling.sweep import VariantCache, run_sweep
from sepconv.service.rest.body import read_body
from sepconv.service.rest.deps import registry, settings
from sepconv.service.rest.errors import status_of
from sepconv.service.settings import Settings
from sepconv.service.ui.latest import Latest

__all__ = ["attach", "router"]

router = APIRouter(tags=["profiling"])

# A profile request is a handful of fields. Bodies are read here, capped, rather than by FastAPI: its JSON
# parse of a 50 MB ``{"x": [[[0]], [[0]], ...]}`` before validation left the server at 2 GB of RSS.
MAX_BODY_BYTES = 64 * 1024
_M = TypeVar("_M", bound=BaseModel)


def attach(app: FastAPI, settings: Settings) -> None:
    """Put the profile gate (one profile at a time) and the trace store on ``app.state``."""
    app.state.profile_gate = ProfileGate()
    app.state.profile_traces = TraceStore(settings.trace_dir, settings.profile_keep_traces)
    app.state.profile_jobs = JobStore(app.state.profile_gate, settings.job_keep_seconds)
    app.state.sweep_cache = VariantCache(settings.sweep_cache_size)
    app.state.ui_latest = Latest()


def _gate(request: Request) -> ProfileGate:
    return request.app.state.profile_gate


def _traces(request: Request) -> TraceStore:
    return request.app.state.profile_traces


def _jobs(request: Request) -> JobStore:
    return request.app.state.profile_jobs


def _latest(request: Request) -> Latest:
    return request.app.state.ui_latest


def _wants_job(request: Request) -> bool:
    return "respond-async" in request.headers.get("prefer", "").lower()


def _accepted(request: Request, job_id: str) -> JSONResponse:
    url = str(request.url_for("profile_job", job_id=job_id))
    return JSONResponse({"job_id": job_id, "job_url": url}, status_code=202, headers={"Location": url})


def _json_body(model: type[_M], *, optional: bool) -> Callable[[Request], Awaitable[_M]]:
    async def read(request: Request) -> _M:
        body = await read_body(request, MAX_BODY_BYTES, "a profile request may have")
        if optional and not body.strip():
            return model()
        try:
            return model.model_validate_json(body)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors(include_url=False)) from None

    return read


def _body_doc(model: type[BaseModel], *, required: bool) -> dict[str, Any]:
    return {"requestBody": {"required": required,
                            "content": {"application/json": {"schema": model.model_json_schema()}}}}


@router.get("/v1/models/{model_name}/summary", summary="Keras-like layer summary of a loaded model")
def model_summary(model_name: str, request: Request) -> dict[str, Any]:
    loaded = registry(request).get(model_name)
    return summary_of(loaded.metadata or {}, loaded.serialized)


@router.post("/v1/models/{model_name}/profile", summary="Per-layer profile of a loaded model",
             openapi_extra=_body_doc(ProfileRequest, required=False))
def profile(model_name: str, request: Request,
            req: Annotated[ProfileRequest, Depends(_json_body(ProfileRequest, optional=True))]) -> Any:
    loaded = registry(request).get(model_name)
    plan = plan_profile(req, settings(request), model_max_batch=loaded.max_batch_size, metadata=loaded.metadata,
                        inputs={t.name: t.datatype for t in loaded.inputs})
    trace_base = str(request.url_for("profile_trace", trace_id="TRACE_ID"))
    latest = _latest(request)

    def finish(result: dict[str, Any]) -> dict[str, Any]:
        trace_id = result.pop("trace_id")
        result["trace_url"] = trace_base.replace("TRACE_ID", f"{trace_id}.json") if trace_id else None
        latest.put_profile(model_name, result)
        return result

    serialized, traces = loaded.serialized(), _traces(request)
    if _wants_job(request):
        job = _jobs(request).start("profile", f"profile of {model_name}", lambda progress: profile_model(
            serialized, model_name, plan, traces, progress), finish)
        return _accepted(request, job.id)
    with _gate(request).hold(f"profile of {model_name}"):
        result = profile_model(serialized, model_name, plan, traces)
    return finish(result)


@router.post("/v1/profile/sweep", summary="Latency of every variant of an architecture, its Pareto front",
             openapi_extra=_body_doc(SweepRequest, required=True))
def sweep(req: Annotated[SweepRequest, Depends(_json_body(SweepRequest, optional=False))],
          request: Request) -> Any:
    plan = plan_sweep(req, settings(request))
    cache, latest = request.app.state.sweep_cache, _latest(request)

    def finish(result: dict[str, Any]) -> dict[str, Any]:
        latest.put_sweep(plan.arch, result)
        return result

    what = f"sweep of {len(plan.variants)} {plan.arch} variants"
    if _wants_job(request):
        job = _jobs(request).start("sweep", what, lambda progress: run_sweep(plan, cache, progress), finish)
        return _accepted(request, job.id)
    with _gate(request).hold(what):
        return finish(run_sweep(plan, cache))


@router.get("/v1/profile/jobs/{job_id}", name="profile_job", summary="A profile or sweep job: progress and result")
def profile_job(job_id: str, request: Request) -> dict[str, Any]:
    job = _jobs(request).get(job_id)
    out = job.public()
    if job.error is not None:
        out["status"] = status_of(job.error)
    return out


def _roofline_spec(request: Request, provider: str, threads: int | None) -> SessionSpec:
    key = check_provider(provider, threads)
    return SessionSpec(with_threads(settings(request), threads), key, "all")


@router.get("/v1/profile/roofline", summary="The serving device's ceilings (measured once per provider, cached)")
def roofline(request: Request, provider: str = "cpu", threads: int | None = None) -> dict[str, Any]:
    spec = _roofline_spec(request, provider, threads)
    found = rl.cached(spec.provider, spec.settings.intra_op_threads or "auto")
    if found is None:
        with _gate(request).hold("roofline microbenchmarks"):
            found = rl.ceilings(spec)
    return found.public()


@router.post("/v1/profile/roofline", summary="Measure the serving device's ceilings again")
def roofline_remeasure(request: Request, provider: str = "cpu", threads: int | None = None) -> dict[str, Any]:
    spec = _roofline_spec(request, provider, threads)
    with _gate(request).hold("roofline microbenchmarks"):
        return rl.ceilings(spec, remeasure=True).public()


@router.post("/v1/profile/conv", summary="Standard vs depthwise vs pointwise vs separable, measured",
             openapi_extra=_body_doc(ConvProfileRequest, required=True))
def conv_profile(req: Annotated[ConvProfileRequest, Depends(_json_body(ConvProfileRequest, optional=False))],
                 request: Request) -> dict[str, Any]:
    plan = plan_conv_profile(req, settings(request))
    with _gate(request).hold("conv profile"):
        return profile_conv(plan)


@router.get("/v1/profile/traces/{trace_id}", name="profile_trace",
            summary="A profile's Chrome trace (open in Perfetto or chrome://tracing)")
def profile_trace(trace_id: str, request: Request) -> FileResponse:
    path = _traces(request).path(trace_id)
    return FileResponse(path, media_type="application/json", filename=path.name)
