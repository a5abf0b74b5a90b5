"""Errors over REST: ``{"error": "..."}`` with the status the error's type maps to, in one table.

:data:`HTTP_STATUS` maps every :class:`~sepconv.service.errors.ServiceError` subclass to its status (the most
specific class wins); :func:`install_error_handlers` makes FastAPI answer those, its own errors (validation,
malformed JSON, unknown routes, wrong methods) and anything unexpected in the same shape. A client's
mistake never reaches the 500 handler.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response

from sepconv.service import errors as e

log = logging.getLogger("sepconv.errors")

HTTP_STATUS: dict[type[e.ServiceError], int] = {
    e.ServiceError: 500,
    e.InvalidInput: 400,
    e.Unprocessable: 422,
    e.NotFound: 404,
    e.ModelNotFound: 404,
    e.ModelNotReady: 503,
    e.Unavailable: 503,
    e.TooLarge: 413,
    e.RequestTimeout: 408,
    e.Busy: 429,
    e.Overloaded: 503,
    e.Unauthenticated: 401,
    e.PermissionDenied: 403,
    e.UnsupportedMediaType: 415,
    e.NotSupported: 400,
    e.InternalError: 500,
}


def status_of(exc: e.ServiceError) -> int:
    """The HTTP status for ``exc``: its class's entry, or the nearest base class's."""
    for cls in type(exc).__mro__:
        status = HTTP_STATUS.get(cls)  # type: ignore[arg-type]
        if status is not None:
            return status
    return 500


def headers_of(exc: e.ServiceError) -> dict[str, str] | None:
    headers: dict[str, str] = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    if isinstance(exc, e.Unauthenticated):
        headers["WWW-Authenticate"] = "Bearer"
    return headers or None


def error_response(status_code: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """The JSON error response (also usable directly from pure ASGI code)."""
    return JSONResponse({"error": message}, status_code=status_code, headers=headers)


def service_error_response(exc: e.ServiceError) -> Response:
    return error_response(status_of(exc), exc.message, headers_of(exc))


def unexpected_error_response(method: str, path: str, exc: Exception) -> Response:
    """A bug's answer: logged with its traceback, answered 500 with the exception's type only (its text may
    hold paths or values that are none of the client's business)."""
    log.exception("unexpected error on %s %s", method, path, exc_info=exc)
    return error_response(500, f"internal server error: {type(exc).__name__}")


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

    @app.exception_handler(e.ServiceError)
    async def _service_error(_: Request, exc: e.ServiceError) -> Response:
        return service_error_response(exc)

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
        return unexpected_error_response(request.method, request.url.path, exc)
