"""Profiling routes: ``GET /v1/models/{m}/summary``, ``POST /v1/models/{m}/profile``,
``POST /v1/profile/conv`` and ``GET /v1/profile/traces/{id}`` (the Chrome trace behind ``trace_url``).

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
from fastapi.responses import FileResponse
from pydantic import BaseModel, ValidationError

from sepconv.service.profiling.conv import profile_conv
from sepconv.service.profiling.engine import profile_model
from sepconv.service.profiling.gate import ProfileGate, TraceStore
from sepconv.service.profiling.layers import summary_of
from sepconv.service.profiling.request import ConvProfileRequest, ProfileRequest, plan_conv_profile, plan_profile
from sepconv.service.rest.body import read_body
from sepconv.service.rest.deps import registry, settings
from sepconv.service.settings import Settings

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


def _gate(request: Request) -> ProfileGate:
    return request.app.state.profile_gate


def _traces(request: Request) -> TraceStore:
    return request.app.state.profile_traces


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
            req: Annotated[ProfileRequest, Depends(_json_body(ProfileRequest, optional=True))]) -> dict[str, Any]:
    loaded = registry(request).get(model_name)
    plan = plan_profile(req, settings(request), model_max_batch=loaded.max_batch_size, metadata=loaded.metadata)
    with _gate(request).hold(f"profile of {model_name}"):
        result = profile_model(loaded.serialized(), model_name, plan, _traces(request))
    trace_id = result.pop("trace_id")
    result["trace_url"] = str(request.url_for("profile_trace", trace_id=f"{trace_id}.json")) if trace_id else None
    return result


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
