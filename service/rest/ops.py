"""Operations: ``GET /metrics`` (Prometheus text) and the dashboard at ``/`` (static HTML that reads the V2 routes)."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from starlette.responses import HTMLResponse, Response

from sepconv.service import metrics

router = APIRouter(tags=["operations"])


@router.get("/metrics")
async def prometheus_metrics() -> Response:
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)


@router.get("/", include_in_schema=False)
async def dashboard() -> HTMLResponse:
    html = resources.files("sepconv.service").joinpath("static/dashboard.html").read_text(encoding="utf-8")
    return HTMLResponse(html)
