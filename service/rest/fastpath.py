"""The infer routes without FastAPI's router in front of them.

Matching a request against every route and solving dependencies costs FastAPI ~100 µs per request;
``POST /v2/models/{m}[/versions/{v}]/infer`` is the hot path, so this pure-ASGI layer recognises it
with one regular expression and calls the same handler the router would
(:func:`sepconv.service.rest.v2.handle_infer`), with the same ``{"error": ...}`` answers (the status from
:mod:`sepconv.service.rest.errors`). Every other request goes on to FastAPI. The routes stay registered
with FastAPI too (OpenAPI, and methods other than POST).
"""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import ClientDisconnect, Request

from sepconv.service.errors import ServiceError
from sepconv.service.rest.errors import service_error_response, unexpected_error_response
from sepconv.service.rest.v2 import handle_infer, router

_INFER = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")


class InferFastPath:
    """ASGI middleware: POST infer requests go straight to the V2 infer handler, the rest to ``app``."""

    def __init__(self, app: Any, fastapi_app: Any) -> None:
        self.app = app
        self.fastapi_app = fastapi_app
        self._routes: dict[bool, Any] = {}
        for route in router.routes:
            path = getattr(route, "path", "")
            if path == "/v2/models/{model_name}/infer":
                self._routes[False] = route
            elif path == "/v2/models/{model_name}/versions/{version}/infer":
                self._routes[True] = route

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        m = _INFER.fullmatch(scope["path"])
        if m is None:
            await self.app(scope, receive, send)
            return
        model_name, version = m.group(1), m.group(2)
        scope["app"] = self.fastapi_app
        scope["route"] = self._routes.get(version is not None)
        request = Request(scope, receive)
        try:
            response = await handle_infer(request, model_name, version)
        except ServiceError as exc:
            response = service_error_response(exc)
        except ClientDisconnect:
            return  # the client went away before sending its whole body: nobody to answer
        except Exception as exc:  # noqa: BLE001 - answer JSON, log the traceback
            response = unexpected_error_response("POST", scope["path"], exc)
        await response(scope, receive, send)
