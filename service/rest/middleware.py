"""Pure-ASGI middleware (no BaseHTTPMiddleware, which costs on every request):

* request bodies over ``max_request_bytes`` -> 413 ``{"error": ...}``, decided from ``Content-Length``
  before a byte of the body is read (or as soon as a chunked body passes the limit);
* a memory budget for the request bodies being handled at once (``max_inflight_bytes``): past it, 503
  with ``Retry-After`` instead of a server that decodes more JSON than it has memory for;
* one structured JSON access-log line per request (logger ``sepconv.access``) and the HTTP metrics;
* a count of in-flight requests, so shutdown can wait for them.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

from sepconv.service import metrics

access_log = logging.getLogger("sepconv.access")


class BodyTooLarge(Exception):
    pass


def _error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


class InFlight:
    """How many HTTP requests are being handled right now (read by graceful shutdown)."""

    def __init__(self) -> None:
        self.count = 0


class ServiceMiddleware:
    def __init__(self, app: Any, max_request_bytes: int, log_requests: bool = True,
                 tracker: InFlight | None = None, max_inflight_bytes: int = 0) -> None:
        self.app = app
        self.limit = int(max_request_bytes)
        self.budget = int(max_inflight_bytes)  # 0 = no budget
        self.inflight_bytes = 0
        self.log_requests = log_requests
        self.tracker = tracker or InFlight()
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def _reply(self, send: Any, status: int, message: str, retry_after: bool = False) -> None:
        body = _error_body(message)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        if retry_after:
            headers.append((b"retry-after", b"1"))
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
        reserved = 0
        try:
            declared, chunked = None, False
            for key, value in scope.get("headers", ()):
                if key == b"content-length":
                    try:
                        declared = int(value)
                    except ValueError:
                        status_holder[0] = 400
                        await self._reply(send, 400, "invalid Content-Length header")
                        return
                elif key == b"transfer-encoding":
                    chunked = True
            if declared is not None and declared > self.limit:
                status_holder[0] = 413
                await self._reply(send, 413, f"request body of {declared} bytes is over the limit of "
                                             f"{self.limit} bytes")
                return
            # Memory budget: a decoded body costs a few times its size (JSON numbers become Python objects),
            # so the bodies being handled at once are capped; one request alone always gets through.
            want = declared if declared is not None else (self.limit if chunked else 0)
            if self.budget and want and self.inflight_bytes and self.inflight_bytes + want > self.budget:
                status_holder[0] = 503
                await self._reply(send, 503, f"server busy: {self.inflight_bytes} bytes of request bodies are "
                                             f"being handled (budget {self.budget}); retry shortly",
                                  retry_after=True)
                return
            reserved = want
            self.inflight_bytes += reserved

            received = 0
            limit = self.limit

            async def limited_receive() -> dict:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:
                        raise BodyTooLarge()
                return message

            started = False

            async def tracking_send(message: dict) -> None:
                nonlocal started
                if message["type"] == "http.response.start":
                    started = True
                    status_holder[0] = message["status"]
                elif message["type"] == "http.response.body":
                    status_holder[1] += len(message.get("body", b""))
                await send(message)

            try:
                await self.app(scope, limited_receive if declared is None else receive, tracking_send)
            except BodyTooLarge:
                if not started:
                    status_holder[0] = 413
                    await self._reply(send, 413, f"request body is over the limit of {self.limit} bytes")
            except Exception:
                status_holder[0] = status_holder[0] or 500
                raise
        finally:
            self.inflight_bytes -= reserved
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
