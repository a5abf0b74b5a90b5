"""The HTTP connections themselves: uvicorn's httptools protocol with the limits a hostile client would test.

uvicorn bounds none of these, so :func:`protocol_class` adds them to its ``HttpToolsProtocol`` (one subclass;
the request/response path is uvicorn's own):

* a **header timeout** (``header_timeout_s``): a connection that has not completed a request's headers in time
  is closed — from ``connection_made`` (uvicorn arms no timer before the first request) and from the first byte
  of each later request (uvicorn's keep-alive timer stops there);
* a **connection cap** (``max_connections``, default: the file-descriptor limit less a reserve): at the cap the
  oldest idle connection is closed to make room — first one that never completed a request (slowloris), then
  an idle keep-alive one; a request in progress is never closed. With none idle, the new connection gets a JSON
  503 with ``Retry-After`` and is closed. The server never runs out of descriptors, so ``accept`` keeps working;
* a **bounded drain**: after an early answer (413, 503) the connection stays open and uvicorn discards the rest
  of the body, so that a client still sending reads the answer instead of a reset — at most
  ``drain_max_bytes`` and ``drain_timeout_s``, then it is closed;
* the **shutdown signal**: ``shutdown()`` (uvicorn calls it on SIGTERM) tells the :class:`TransportGuard`, whose
  waiting body reads (:mod:`sepconv.service.rest.middleware`) then stop waiting for a stalled upload.

Body read timeouts (minimum rate) and the in-flight byte budget are the ASGI middleware's, which sees the
bytes as they arrive. :func:`uvicorn_config` is the one place the server's uvicorn options are set (used by
``sepconv serve`` and the tests).
"""

from __future__ import annotations

import asyncio
import resource
from typing import Any

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from sepconv.service.settings import Settings

FD_RESERVE = 64  # descriptors kept for model files, traces, logs and the listener


def default_max_connections() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 65536
    return max(16, int(soft) - FD_RESERVE)


class TransportGuard:
    """What the connections and the middleware share: the limits, the open connections (oldest first) and
    the shutdown signal with the body reads waiting on it."""

    def __init__(self, settings: Settings) -> None:
        self.header_timeout_s = settings.header_timeout_s
        self.drain_max_bytes = settings.drain_max_bytes
        self.drain_timeout_s = settings.drain_timeout_s
        self.max_connections = settings.max_connections or default_max_connections()
        self.shutdown_body_idle_s = 1.0  # once stopping, a body read waits this long for more bytes
        self.connections: dict[Any, None] = {}  # insertion order = age
        self.stopping = False
        self.waiting: set[asyncio.Timeout] = set()  # body reads in progress (their deadlines)
        self.evicted = 0
        self.refused = 0

    def begin_shutdown(self) -> None:
        """Stop waiting long for request bodies: each pending read gets ``shutdown_body_idle_s`` more."""
        if self.stopping:
            return
        self.stopping = True
        loop = asyncio.get_running_loop()
        soon = loop.time() + self.shutdown_body_idle_s
        for timeout in list(self.waiting):
            when = timeout.when()
            if when is None or when > soon:
                timeout.reschedule(soon)

    def make_room(self) -> bool:
        """At the cap: close the oldest idle connection (never-served first); False when none is idle."""
        if len(self.connections) < self.max_connections:
            return True
        victim = None
        for conn in self.connections:
            if conn.is_idle():
                if not conn.served:
                    victim = conn
                    break
                victim = victim or conn
        if victim is None:
            return False
        self.evicted += 1
        victim.close_now()
        return True


_BUSY = orjson.dumps({"error": "server at its connection limit (SEPCONV_MAX_CONNECTIONS); retry shortly"})
_BUSY_RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
                  b"connection: close\r\ncontent-length: " + str(len(_BUSY)).encode() + b"\r\n\r\n" + _BUSY)


def protocol_class(guard: TransportGuard) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with ``guard``'s header timeout, connection cap and bounded drain."""

    class GuardedProtocol(HttpToolsProtocol):
        served = False  # a response was completed on this connection
        _in_body = False  # between headers complete and message complete
        _timer: asyncio.TimerHandle | None = None
        _draining = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if not guard.make_room():
                guard.refused += 1
                self.connections.discard(self)
                transport.write(_BUSY_RESPONSE)
                transport.close()
                return
            guard.connections[self] = None
            self._arm(guard.header_timeout_s)

        def connection_lost(self, exc: Exception | None) -> None:
            guard.connections.pop(self, None)
            self._disarm()
            super().connection_lost(exc)

        # -- timers -------------------------------------------------------------------------------------
        def _arm(self, delay: float) -> None:
            self._disarm()
            self._timer = self.loop.call_later(delay, self.close_now)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def close_now(self) -> None:
            if not self.transport.is_closing():
                self.transport.close()

        def is_idle(self) -> bool:
            """No request being handled: waiting for headers, or between requests."""
            return not self._draining and (self.cycle is None or self.cycle.response_complete)

        # -- parser callbacks ---------------------------------------------------------------------------
        def data_received(self, data: bytes) -> None:
            if self._draining:
                self._drained += len(data)
                if self._drained > guard.drain_max_bytes:
                    self.close_now()
                    return
            super().data_received(data)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self.served:  # later requests: uvicorn's keep-alive timer stopped at this first byte
                self._arm(guard.header_timeout_s)

        def on_headers_complete(self) -> None:
            self._disarm()
            self._in_body = True
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._in_body = False
            if self._draining:  # the discarded body is over: back to keep-alive
                self._draining = False
                self._disarm()
                self._unset_keepalive_if_required()
                self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive,
                                                                    self.timeout_keep_alive_handler)
            super().on_message_complete()

        def on_response_complete(self) -> None:
            self.served = True
            super().on_response_complete()
            if self._in_body and not self.transport.is_closing():
                # answered before the whole body came (413, 503...): uvicorn discards the rest; bound it
                self._draining = True
                self._drained = 0
                self._arm(guard.drain_timeout_s)

        def shutdown(self) -> None:
            guard.begin_shutdown()
            super().shutdown()

    return GuardedProtocol


def uvicorn_config(app: Any, settings: Settings, **options: Any) -> uvicorn.Config:
    """The server's uvicorn configuration (``options`` add to or override it, e.g. ``log_level``)."""
    guard: TransportGuard = app.state.transport_guard
    base: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "http": protocol_class(guard),
        "loop": "uvloop",
        "lifespan": "on",
        "access_log": False,  # the structured access log of the middleware replaces uvicorn's
        "timeout_keep_alive": settings.keep_alive_timeout_s,
        "timeout_graceful_shutdown": int(settings.shutdown_grace_s),
        "server_header": False,
    }
    base.update(options)
    return uvicorn.Config(app, **base)
