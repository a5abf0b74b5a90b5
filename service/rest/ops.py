"""Operations: ``GET /metrics`` (Prometheus text), the dashboard at ``/`` and one model's page at ``/ui/models/{m}``
(static HTML that reads the V2 routes; the model page classifies a dropped image with ``/v1/models/{m}/classify``,
runs a profile and a sweep as jobs, and shows their charts from ``GET /ui/models/{m}/charts``: an HTML fragment of
server-rendered SVG, :mod:`sepconv.service.ui.charts`, from the latest profile of the model and sweep of its
architecture)."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, Request
from starlette.responses import HTMLResponse, Response

from sepconv.export.repository.layout import MetaKey
from sepconv.service import metrics
from sepconv.service.errors import ModelNotFound
from sepconv.service.rest import deps

router = APIRouter(tags=["operations"])


@router.get("/metrics")
async def prometheus_metrics() -> Response:
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)


@router.get("/", include_in_schema=False)
async def dashboard() -> HTMLResponse:
    html = resources.files("sepconv.service").joinpath("static/dashboard.html").read_text(encoding="utf-8")
    return HTMLResponse(html)


@router.get("/ui/models/{model_name}", include_in_schema=False)
async def model_page(request: Request, model_name: str) -> HTMLResponse:
    if deps.registry(request).entry(model_name) is None:
        raise ModelNotFound(f"no model {model_name!r} in the repository")
    html = resources.files("sepconv.service").joinpath("static/model.html").read_text(encoding="utf-8")
    return HTMLResponse(html)


@router.get("/ui/models/{model_name}/charts", include_in_schema=False)
def model_charts(request: Request, model_name: str) -> HTMLResponse:
    from sepconv.service.ui.charts import fragment  # noqa: PLC0415

    loaded = deps.registry(request).get(model_name)
    arch = (loaded.metadata or {}).get(MetaKey.ARCHITECTURE)
    latest = request.app.state.ui_latest
    return HTMLResponse(fragment(model_name, latest.profile(model_name), latest.sweep(arch) if arch else None))
