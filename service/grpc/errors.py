"""Errors over gRPC: the status code each typed error maps to, in one table, applied in one place.

:data:`GRPC_STATUS` maps every :class:`~sepconv.service.errors.ServiceError` subclass to a ``grpc.StatusCode``
(the most specific class wins: :func:`code_of`), as the table in :mod:`sepconv.service.errors` says, with one
departure that follows Triton: ``NotSupported`` — a feature *inside* an implemented RPC (e.g. loading a model
from uploaded files) — is ``UNIMPLEMENTED`` as Triton's gRPC frontend answers its ``UNSUPPORTED`` errors, while
the codec reports what Triton itself reports as bad arguments (a shared-memory region it does not have, the
classification extension) as ``InvalidInput``. RPCs this server does not offer answer ``UNIMPLEMENTED`` from
:mod:`sepconv.service.grpc.servicer`.

:func:`rpc` wraps a unary servicer method: a ``ServiceError`` becomes ``context.abort(code, message)``; anything
else is logged and answered ``INTERNAL`` with the exception's type name only (never a traceback).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from sepconv.service import errors as e

log = logging.getLogger("sepconv.grpc")

GRPC_STATUS: dict[type[e.ServiceError], grpc.StatusCode] = {
    e.ServiceError: grpc.StatusCode.INTERNAL,
    e.InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    e.Unprocessable: grpc.StatusCode.INVALID_ARGUMENT,
    e.NotFound: grpc.StatusCode.NOT_FOUND,
    e.ModelNotFound: grpc.StatusCode.NOT_FOUND,
    e.ModelNotReady: grpc.StatusCode.UNAVAILABLE,
    e.Unavailable: grpc.StatusCode.UNAVAILABLE,
    e.TooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    e.Busy: grpc.StatusCode.RESOURCE_EXHAUSTED,
    e.RequestTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
    e.Overloaded: grpc.StatusCode.UNAVAILABLE,
    e.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    e.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    e.UnsupportedMediaType: grpc.StatusCode.INVALID_ARGUMENT,
    e.NotSupported: grpc.StatusCode.UNIMPLEMENTED,
    e.InternalError: grpc.StatusCode.INTERNAL,
}


def code_of(exc: e.ServiceError) -> grpc.StatusCode:
    """The gRPC status code for ``exc``: its class's entry, or the nearest base class's."""
    for cls in type(exc).__mro__:
        code = GRPC_STATUS.get(cls)  # type: ignore[arg-type]
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def message_of(exc: BaseException) -> str:
    """What the client is told: a typed error's message; for anything else only its type (logged in full)."""
    if isinstance(exc, e.ServiceError):
        return exc.message
    return f"internal server error: {type(exc).__name__}"


def trailing_metadata(exc: e.ServiceError) -> tuple[tuple[str, Any], ...]:
    """Extra trailers for ``exc`` (``retry-after`` seconds when waiting helps)."""
    if exc.retry_after is not None:
        return (("retry-after", str(max(1, round(exc.retry_after)))),)
    return ()


S = TypeVar("S")
Q = TypeVar("Q")
A = TypeVar("A")


def rpc(method: Callable[[S, Q, grpc.aio.ServicerContext], Awaitable[A]]
        ) -> Callable[[S, Q, grpc.aio.ServicerContext], Awaitable[A]]:
    """A unary RPC whose typed errors become the status of :data:`GRPC_STATUS` (and the rest ``INTERNAL``)."""

    @functools.wraps(method)
    async def wrapper(self: S, request: Q, context: grpc.aio.ServicerContext) -> A:
        try:
            return await method(self, request, context)
        except e.ServiceError as exc:
            await context.abort(code_of(exc), exc.message, trailing_metadata(exc))
        except (grpc.aio.AbortError, grpc.aio.UsageError):
            raise  # an abort already decided (context.abort raises this)
        except Exception as exc:  # noqa: BLE001 - a bug must still answer, and be logged
            log.exception("unexpected error in %s", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, message_of(exc))
        raise AssertionError("unreachable")  # context.abort always raises

    return wrapper
