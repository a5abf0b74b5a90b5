"""Profiling routes: ``GET /v1/models/{m}/summary``, ``POST /v1/models/{m}/profile``,
``POST /v1/profile/conv`` and ``GET /v1/profile/traces/{id}`` (the Chrome trace behind ``trace_url``).

Handlers are plain ``def`` so FastAPI runs them in its thread pool: a profile takes seconds and must
not stall the event loop that serves inference. One profile (model or conv) runs at a time per
server; another one meanwhile gets 429 with ``Retry-After``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import onnx
from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from pydantic import BaseModel, ValidationError

from sepconv.service.errors import ApiError
from sepconv.service.profile_conv import ConvProfileRequest, check_conv_request, profile_conv
from sepconv.service.profile_layers import SUMMARY_KEY, graph_summary, public_summary
from sepconv.service.profiler import ProfileGate, ProfileRequest, TraceStore, check_request, profile_model
from sepconv.service.request_body import read_body
from sepconv.service.settings import Settings, get_settings

router = APIRouter(tags=["profiling"])
_init_lock = threading.Lock()

# A profile request is a handful of fields. Bodies are read here, capped, rather than by FastAPI: its JSON
# parse of a 50 MB ``{"x": [[[0]], [[0]], ...]}`` before validation left the server at 2 GB of RSS.
MAX_BODY_BYTES = 64 * 1024
_M = TypeVar("_M", bound=BaseModel)


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


def _settings(request: Request) -> Settings:
    settings = getattr(request.app.state, "settings", None)
    return settings if isinstance(settings, Settings) else get_settings()


def _state(request: Request) -> tuple[ProfileGate, TraceStore]:
    state = request.app.state
    with _init_lock:
        if getattr(state, "profile_gate", None) is None:
            state.profile_gate = ProfileGate()
        if getattr(state, "profile_traces", None) is None:
            settings = _settings(request)
            state.profile_traces = TraceStore(settings.trace_dir, settings.profile_keep_traces)
    return state.profile_gate, state.profile_traces


def _model(request: Request, name: str) -> Any:
    repository = getattr(request.app.state, "repository", None)
    if repository is None:
        raise ApiError(503, "this server has no model repository")
    return repository.get(name)


@router.get("/v1/models/{model_name}/summary", summary="Keras-like layer summary of a loaded model")
def model_summary(model_name: str, request: Request) -> dict[str, Any]:
    loaded = _model(request, model_name)
    raw = (getattr(loaded, "metadata", None) or {}).get(SUMMARY_KEY)
    if raw:
        try:
            summary = json.loads(raw)
            if isinstance(summary, dict) and isinstance(summary.get("layers"), list):
                return public_summary(summary)
        except ValueError:
            pass
    return public_summary(graph_summary(onnx.load(str(loaded.path), load_external_data=False)))


def _model_macs(metadata: dict[str, str]) -> int | None:
    """Multiply-adds per image from the exporter's metadata (None for a model from elsewhere)."""
    try:
        return int(metadata["macs"])
    except (KeyError, ValueError):
        return None


@router.post("/v1/models/{model_name}/profile", summary="Per-layer profile of a loaded model",
             openapi_extra=_body_doc(ProfileRequest, required=False))
def profile(model_name: str, request: Request,
            req: Annotated[ProfileRequest, Depends(_json_body(ProfileRequest, optional=True))]) -> dict[str, Any]:
    loaded = _model(request, model_name)
    gate, store = _state(request)
    settings = _settings(request)
    # a bad request is a 4xx even while the server is busy
    check_request(req, settings, loaded.max_batch_size, _model_macs(loaded.metadata))
    with gate.hold(f"profile of {model_name}"):
        result = profile_model(loaded.path, model_name, req, settings, store, model_max_batch=loaded.max_batch_size)
    trace_id = result.pop("trace_id")
    result["trace_url"] = str(request.url_for("profile_trace", trace_id=f"{trace_id}.json")) if trace_id else None
    return result


@router.post("/v1/profile/conv", summary="Standard vs depthwise vs pointwise vs separable, measured",
             openapi_extra=_body_doc(ConvProfileRequest, required=True))
def conv_profile(req: Annotated[ConvProfileRequest, Depends(_json_body(ConvProfileRequest, optional=False))],
                 request: Request) -> dict[str, Any]:
    gate, _ = _state(request)
    settings = _settings(request)
    check_conv_request(req, settings)
    with gate.hold("conv profile"):
        return profile_conv(req, settings)


@router.get("/v1/profile/traces/{trace_id}", name="profile_trace",
            summary="A profile's Chrome trace (open in Perfetto or chrome://tracing)")
def profile_trace(trace_id: str, request: Request) -> FileResponse:
    _, store = _state(request)
    path = store.path(trace_id)
    return FileResponse(path, media_type="application/json", filename=path.name)
