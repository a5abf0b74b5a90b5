"""Profiling routes: ``GET /v1/models/{m}/summary``, ``POST /v1/models/{m}/profile``,
``POST /v1/profile/conv`` and ``GET /v1/profile/traces/{id}`` (the Chrome trace behind ``trace_url``).

Handlers are plain ``def`` so FastAPI runs them in its thread pool: a profile takes seconds and must
not stall the event loop that serves inference. One profile (model or conv) runs at a time per
server; another one meanwhile gets 429 with ``Retry-After``.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import onnx
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from service.errors import ApiError
from service.profile_conv import ConvProfileRequest, check_conv_request, profile_conv
from service.profile_layers import SUMMARY_KEY, graph_summary, public_summary
from service.profiler import ProfileGate, ProfileRequest, TraceStore, check_request, profile_model
from service.settings import Settings, get_settings

router = APIRouter(tags=["profiling"])
_init_lock = threading.Lock()


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


@router.post("/v1/models/{model_name}/profile", summary="Per-layer profile of a loaded model")
def profile(model_name: str, request: Request, body: ProfileRequest | None = None) -> dict[str, Any]:
    req = body or ProfileRequest()
    loaded = _model(request, model_name)
    gate, store = _state(request)
    settings = _settings(request)
    check_request(req, settings, loaded.max_batch_size)  # a bad request is a 4xx even while the server is busy
    with gate.hold(f"profile of {model_name}"):
        result = profile_model(loaded.path, model_name, req, settings, store, model_max_batch=loaded.max_batch_size)
    trace_id = result.pop("trace_id")
    result["trace_url"] = str(request.url_for("profile_trace", trace_id=f"{trace_id}.json")) if trace_id else None
    return result


@router.post("/v1/profile/conv", summary="Standard vs depthwise vs pointwise vs separable, measured")
def conv_profile(req: ConvProfileRequest, request: Request) -> dict[str, Any]:
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
