"""Typed domain errors of the service, independent of any transport.

Code below the transports (data plane, registry, runtime, conv and profiling engines) raises these;
each transport maps them to its own status codes in one table (REST: :mod:`sepconv.service.rest.errors`,
``HTTP_STATUS``; gRPC: :mod:`sepconv.service.grpc.errors`, ``GRPC_STATUS``). A message is always for the client: say
what was wrong and what to do, never a traceback or a server path.

==========================  ================================================  ====  ==================
class                       meaning                                            HTTP  gRPC
==========================  ================================================  ====  ==================
``InvalidInput``            the request is malformed or does not fit            400  INVALID_ARGUMENT
``Unprocessable``           well-formed, but a field's value is not valid       422  INVALID_ARGUMENT
``NotFound``                no such route target (trace, version, region)       404  NOT_FOUND
``ModelNotFound``           no such model                                       404  NOT_FOUND
``ModelNotReady``           the model exists but is not READY                   503  UNAVAILABLE
``Unavailable``             the server cannot serve this now (unloading, ...)   503  UNAVAILABLE
``TooLarge``                over a configured size or compute limit             413  RESOURCE_EXHAUSTED
``RequestTimeout``          the request (its body) did not arrive in time       408  DEADLINE_EXCEEDED
``Busy``                    one-at-a-time work already running (retry later)    429  RESOURCE_EXHAUSTED
``Overloaded``              a shared budget is spent (retry later)              503  UNAVAILABLE
``Unauthenticated``         credentials missing                                 401  UNAUTHENTICATED
``PermissionDenied``        credentials given but not accepted                  403  PERMISSION_DENIED
``UnsupportedMediaType``    a body encoding or content type not handled         415  INVALID_ARGUMENT
``NotSupported``            a protocol feature this server does not offer       400  UNIMPLEMENTED
``InternalError``           the server failed (a bug or a broken runtime)       500  INTERNAL
==========================  ================================================  ====  ==================
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base of every error answered to a client. ``retry_after`` (seconds) tells a client when to retry."""

    retry_after: float | None = None

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = str(message)
        if retry_after is not None:
            self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class InvalidInput(ServiceError):
    """The request is malformed or does not fit the model / operation."""


class Unprocessable(InvalidInput):
    """The body is well-formed, but a field's value is not valid (FastAPI's 422)."""


class NotFound(ServiceError):
    """The thing the request names does not exist (a version, a trace, a region)."""


class ModelNotFound(NotFound):
    """No model of that name in the repository."""


class ModelNotReady(ServiceError):
    """The model exists but no version of it (or not the one asked for) is READY."""


class Unavailable(ServiceError):
    """The server cannot serve this request now (model being unloaded, provider not usable, shutting down)."""


class TooLarge(ServiceError):
    """The request is over a configured size or compute limit."""


class RequestTimeout(ServiceError):
    """The client did not send its request (body) in time."""


class Busy(ServiceError):
    """Work that runs one at a time is already running; retry later."""

    retry_after = 1.0


class Overloaded(ServiceError):
    """A budget shared by all requests is spent; retry shortly."""

    retry_after = 1.0


class Unauthenticated(ServiceError):
    """The operation needs credentials the request did not carry."""


class PermissionDenied(ServiceError):
    """The credentials were not accepted."""


class UnsupportedMediaType(ServiceError):
    """A content type or encoding the server does not handle."""


class NotSupported(ServiceError):
    """A protocol feature this server does not offer (answered 400 over REST as Triton does)."""


class InternalError(ServiceError):
    """The server failed; not the client's fault."""

