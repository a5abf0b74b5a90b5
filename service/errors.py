"""One error shape for every route: ``{"error": "..."}`` with a fitting status code.

Raise :class:`ApiError` anywhere in a request handler (or in code a handler calls) to answer a
client with a 4xx/5xx; :func:`install_error_handlers` maps FastAPI's own errors (validation,
malformed JSON, unknown routes, wrong methods) onto the same shape. An unexpected exception is
logged with its traceback and answered 500 ``{"error": ...}`` — a client's mistake must never get there.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response

log = logging.getLogger("sepconv.errors")


class ApiError(Exception):
    """An error answered to the client as ``{"error": message}`` with ``status_code``."""

    def __init__(self, status_code: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status_code = int(status_code)
        self.message = str(message)
        self.headers = headers

    def __repr__(self) -> str:
        return f"ApiError({self.status_code}, {self.message!r})"


def error_response(status_code: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """The JSON error response (also usable directly from pure ASGI code)."""
    return JSONResponse({"error": message}, status_code=status_code, headers=headers)


def _format_location(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) if parts else "body"


def describe_validation_error(exc: RequestValidationError) -> tuple[int, str]:
    """(status, message) for a FastAPI validation error: malformed JSON -> 400, the rest -> 422."""
    errors = exc.errors()
    for err in errors:
        if err.get("type") in ("json_invalid", "json_type"):
            ctx = err.get("ctx") or {}
            detail = ctx.get("error") or err.get("msg") or "invalid JSON"
            return 400, f"malformed JSON body: {detail}"
    messages = []
    for err in errors[:5]:
        messages.append(f"{_format_location(err.get('loc', ()))}: {err.get('msg', 'invalid value')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return 422, "invalid request: " + "; ".join(messages) + more


def install_error_handlers(app: FastAPI) -> None:
    """Make every error of ``app`` answer ``{"error": "..."}``."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> Response:
        return error_response(exc.status_code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> Response:
        status, message = describe_validation_error(exc)
        return error_response(status, message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404 and exc.detail in (None, "Not Found"):
            message = f"no route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        return error_response(exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(ClientDisconnect)
    async def _disconnected(request: Request, _: ClientDisconnect) -> Response:
        log.info("client disconnected during %s %s", request.method, request.url.path)
        return error_response(400, "the client disconnected before sending the whole body")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, f"internal server error: {type(exc).__name__}: {exc}")
