"""The OpenAPI page at ``/docs``, with every asset served by this server: it renders with no internet.

FastAPI's own ``/docs`` loads Swagger UI's JavaScript and CSS from a CDN, so in a server room without internet
(where a Docker image usually lands) it is a blank page. Here the assets come from the pinned ``swagger-ui-bundle``
package (Swagger UI 4.15.5, Apache-2.0) and are served under ``/docs/assets/``; ReDoc (also CDN-only) is off.
``/openapi.json`` is FastAPI's (OpenAPI 3.1). Swagger UI 4.x reads only ``swagger: 2.0`` / ``openapi: 3.0.n``
documents and shows "Unable to render this definition" for a 3.1 one (found by the headless-Chromium test,
tests/test_browser.py), so the page loads ``/docs/openapi.json``: the same document labelled ``3.0.3`` (FastAPI's
schemas are the 3.0 subset but for ``type: null`` branches, which Swagger UI 4 shows as untyped).
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from starlette.responses import HTMLResponse, JSONResponse
from starlette.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

ASSETS = "/docs/assets"


def install(app: FastAPI) -> None:
    """Serve ``/docs`` (and Swagger UI's OAuth2 redirect page) from local assets. ``app`` must be made with
    ``docs_url=None, redoc_url=None`` so that FastAPI's CDN pages are not registered."""
    app.mount(ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui-assets")
    redirect = "/docs/oauth2-redirect"

    @app.get("/docs/openapi.json", include_in_schema=False)
    async def swagger_ui_schema() -> JSONResponse:
        return JSONResponse({**app.openapi(), "openapi": "3.0.3"})

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/docs/openapi.json", title=f"{app.title} — API",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js", swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon-32x32.png", oauth2_redirect_url=redirect)

    @app.get(redirect, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()
