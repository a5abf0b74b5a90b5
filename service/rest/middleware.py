"""Pure-ASGI middleware (no BaseHTTPMiddleware, which costs on every request): the limits every request body
meets, in one place, as its bytes arrive.

* bodies over ``max_request_bytes`` -> 413, decided from ``Content-Length`` before a byte is read, or as soon as
  a chunked body passes the limit;
* a memory budget counting the body bytes actually **held** (``max_inflight_bytes``): bytes count as they
  arrive and until their request ends, so a connection that declares 64 MiB and sends nothing holds nothing;
  past the budget, 503 with ``Retry-After`` (a lone request always passes);
* a body read deadline: ``body_timeout_s`` plus the time the bytes received so far need at ``body_min_rate``
  (a stalled or trickling upload gets 408 and the connection is closed); once shutdown begins
  (:class:`~sepconv.service.rest.transport.TransportGuard`), a stalled upload gets 503 within a second instead
  of holding the server's exit;
* no state change from another web origin: a browser's POST (or PUT, PATCH, DELETE) whose ``Sec-Fetch-Site``
  says cross-site / same-site, or whose ``Origin`` names another host than ``Host`` (``Origin: null`` too), gets
  403 before anything runs — unloading models, registering shared memory, starting profiles, writing outputs
  into shared memory. A web page can send a ``text/plain`` POST to any loopback port without a CORS preflight,
  and this server sends no CORS headers, so same-origin pages (its dashboard) and non-browser clients (no
  ``Origin``) are all that ever needs it;
* one structured JSON access-log line per request (logger ``sepconv.access``) and the HTTP metrics;
* a count of in-flight requests, so shutdown can wait for them.

Early answers are the typed errors (``TooLarge``, ``Overloaded``, ``RequestTimeout``, ``Unavailable``) with the
status of :mod:`sepconv.service.rest.errors`, sent by this middleware itself; the application then reads a
disconnect and whatever it answers is dropped. The connection stays open after a 413/503 and the transport
discards the rest of the body (bounded), so that ordinary clients read the answer instead of a reset.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson

from sepconv.service import metrics
from sepconv.service.dataplane.inflight import InFlight
from sepconv.service.errors import (
    InvalidInput,
    Overloaded,
    PermissionDenied,
    RequestTimeout,
    ServiceError,
    TooLarge,
    Unavailable,
)
from sepconv.service.rest.errors import headers_of, status_of
from sepconv.service.rest.transport import TransportGuard
from sepconv.service.settings import Settings

access_log = logging.getLogger("sepconv.access")

_DISCONNECT = {"type": "http.disconnect"}
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def cross_origin(origin: bytes | None, fetch_site: bytes | None, host: bytes | None) -> bool:
    """Whether a browser sent this request from another web origin (see the module docstring)."""
    if fetch_site in (b"cross-site", b"same-site"):
        return True
    if origin is None:
        return False  # not a browser's cross-origin request (curl, SDKs, same-origin GETs)
    _, sep, hostport = origin.partition(b"://")
    return not sep or hostport.rstrip(b"/").lower() != (host or b"").lower()


class ServiceMiddleware:
    def __init__(self, app: Any, settings: Settings, tracker: InFlight | None = None,
                 guard: TransportGuard | None = None) -> None:
        self.app = app
        self.limit = int(settings.max_request_bytes)
        self.budget = int(settings.max_inflight_bytes)  # 0 = no budget
        self.body_timeout = float(settings.body_timeout_s)
        self.min_rate = max(1, int(settings.body_min_rate))
        self.inflight_bytes = 0
        self.log_requests = settings.access_log
        self.tracker = tracker or InFlight()
        self.guard = guard or TransportGuard(settings)
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    @staticmethod
    async def _answer(send: Any, exc: ServiceError, status_holder: list[int], close: bool = False) -> None:
        status = status_of(exc)
        body = orjson.dumps({"error": exc.message})
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in (headers_of(exc) or {}).items()]
        if close:
            headers.append((b"connection", b"close"))
        status_holder[0] = status
        status_holder[1] += len(body)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status_holder = [0, 0]  # status, response bytes
        method = scope.get("method", "")
        self.tracker.count += 1
        held = 0
        try:
            declared, chunked = None, False
            origin = fetch_site = host = None
            for key, value in scope.get("headers", ()):
                if key == b"origin":
                    origin = value
                elif key == b"sec-fetch-site":
                    fetch_site = value
                elif key == b"host":
                    host = value
                elif key == b"content-length":
                    try:
                        declared = int(value)
                    except ValueError:
                        await self._answer(send, InvalidInput("invalid Content-Length header"), status_holder,
                                           close=True)
                        return
                elif key == b"transfer-encoding":
                    chunked = True
            if method not in _SAFE_METHODS and cross_origin(origin, fetch_site, host):
                shown = (origin or fetch_site or b"").decode("latin-1")[:100]
                await self._answer(send, PermissionDenied(
                    f"cross-origin browser requests may not change this server's state ({method} from {shown}); "
                    "use the server's own pages or a client that is not a web page"), status_holder)
                return
            if declared is not None and declared > self.limit:
                await self._answer(send, TooLarge(f"request body of {declared} bytes is over the limit of "
                                                  f"{self.limit} bytes (SEPCONV_MAX_REQUEST_BYTES)"), status_holder)
                return

            started = answered = False

            async def tracking_send(message: dict) -> None:
                nonlocal started
                if answered:
                    return  # this middleware already answered (a limit); the app's answer is dropped
                if message["type"] == "http.response.start":
                    started = True
                    status_holder[0] = message["status"]
                elif message["type"] == "http.response.body":
                    status_holder[1] += len(message.get("body", b""))
                await send(message)

            if not chunked and not declared:  # no body to guard
                await self.app(scope, receive, tracking_send)
                return

            guard = self.guard
            loop = asyncio.get_running_loop()
            body_start = loop.time()
            received = 0
            done = False

            async def answer(exc: ServiceError, close: bool = False) -> dict:
                nonlocal answered
                if not started:
                    await self._answer(send, exc, status_holder, close=close)
                    answered = True
                return _DISCONNECT

            async def guarded_receive() -> dict:
                nonlocal received, done, held
                if done:
                    return await receive()
                if answered:
                    return _DISCONNECT
                deadline = body_start + self.body_timeout + received / self.min_rate
                if guard.stopping:
                    deadline = min(deadline, loop.time() + guard.shutdown_body_idle_s)
                try:
                    async with asyncio.timeout_at(deadline) as timeout:
                        guard.waiting.add(timeout)
                        try:
                            message = await receive()
                        finally:
                            guard.waiting.discard(timeout)
                except TimeoutError:
                    if guard.stopping:
                        return await answer(Unavailable("the server is shutting down and the request body "
                                                        "stopped arriving; retry"), close=True)
                    return await answer(RequestTimeout(
                        f"the request body did not arrive in time: {received} bytes in "
                        f"{loop.time() - body_start:.1f} s (a body may take {self.body_timeout:g} s plus one "
                        f"second per {self.min_rate} bytes)"), close=True)
                if message["type"] != "http.request":
                    done = True
                    return message
                n = len(message.get("body", b""))
                received += n
                if not message.get("more_body", False):
                    done = True
                if received > self.limit:
                    return await answer(TooLarge(f"request body is over the limit of {self.limit} bytes "
                                                 "(SEPCONV_MAX_REQUEST_BYTES)"))
                if n:
                    held += n
                    self.inflight_bytes += n
                    if self.budget and self.inflight_bytes > self.budget and self.inflight_bytes > held:
                        return await answer(Overloaded(
                            f"server busy: {self.inflight_bytes - held} bytes of other request bodies are held "
                            f"(budget {self.budget}, SEPCONV_MAX_INFLIGHT_BYTES); retry shortly"))
                return message

            try:
                await self.app(scope, guarded_receive, tracking_send)
            except Exception:
                if not answered:
                    status_holder[0] = status_holder[0] or 500
                    raise
        finally:
            self.inflight_bytes -= held
            self.tracker.count -= 1
            self._record(scope, method, status_holder, start)

    def _record(self, scope: dict, method: str, status_holder: list[int], start: float) -> None:
        elapsed = time.perf_counter() - start
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        status = status_holder[0] or 499  # no answer and no error: the client went away (nginx's 499)
        key = (method, template, status)
        children = self._children.get(key)
        if children is None:
            if len(self._children) > 10_000:  # bounded: templates, not raw paths, are the labels
                self._children.clear()
            children = self._children[key] = (metrics.HTTP_REQUESTS.labels(method, template, str(status)),
                                              metrics.HTTP_LATENCY.labels(method, template))
        children[0].inc()
        children[1].observe(elapsed)
        if self.log_requests and access_log.isEnabledFor(logging.INFO):
            client = scope.get("client")
            access_log.info(orjson.dumps({
                "ts": time.time(),
                "method": method,
                "path": scope.get("path", ""),
                "route": template,
                "status": status,
                "ms": round(elapsed * 1000, 3),
                "bytes_out": status_holder[1],
                "client": f"{client[0]}:{client[1]}" if client else None,
            }).decode())
