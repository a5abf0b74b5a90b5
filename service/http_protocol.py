"""uvicorn's httptools protocol, with large request bodies received straight into one reused buffer.

uvicorn hands a request body to the app chunk by chunk: a bytes object per socket read from the parser,
appended to a growing bytearray, copied again per ``receive()``, the app's task woken each time. For a
600 KB tensor that costs ~0.6 ms on loopback where the kernel needs ~0.1 ms, and 3 ms for a 3 MB JSON
body - more than a MobileNet's whole server overhead budget. This module changes only the body of
requests whose ``Content-Length`` lies between ``min_bulk_bytes`` and ``max_bulk_bytes`` (the server's
request-size limit): after the headers, the event loop ``recv_into``s the body directly into a buffer
kept per connection (``asyncio.BufferedProtocol``), and the app gets it as one message (one copy).
Fresh buffers per request would page-fault their way to the same cost, hence the reuse; buffers over
``reuse_limit`` are not kept.

Everything else - headers, small bodies, chunked bodies, ``Expect: 100-continue``, upgrades, pipelined
requests waiting their turn, bodies over the limit (the app answers 413 without reading them), the ASGI
cycle, keep-alive, shutdown - is uvicorn's own code. uvloop only uses ``get_buffer`` for a protocol
that is not an ``asyncio.Protocol``, so :class:`BulkBodyProtocol` wraps uvicorn's protocol instead of
subclassing it.

``protocol_class(max_bulk_bytes)`` returns the class for ``uvicorn.Config(http=...)``, or the string
``"httptools"`` / ``"auto"`` when this uvicorn lacks what it relies on.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("sepconv.http")

MIN_BULK_BYTES = 64 * 1024
REUSE_LIMIT = 16 * 1024 * 1024
READ_CHUNK = 256 * 1024


def protocol_class(max_bulk_bytes: int, min_bulk_bytes: int = MIN_BULK_BYTES, reuse_limit: int = REUSE_LIMIT) -> Any:
    try:
        import httptools  # noqa: PLC0415
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol  # noqa: PLC0415
    except ImportError:  # pragma: no cover - httptools missing
        return "auto"
    needed = ("data_received", "on_headers_complete", "on_body", "on_message_complete", "connection_made",
              "connection_lost", "eof_received", "pause_writing", "resume_writing")
    if not all(hasattr(HttpToolsProtocol, name) for name in needed):  # pragma: no cover - uvicorn changed
        log.warning("uvicorn's httptools protocol changed; using it unmodified")
        return "httptools"

    class _BulkInner(HttpToolsProtocol):  # type: ignore[misc, valid-type]
        """uvicorn's protocol plus the body hooks; :class:`BulkBodyProtocol` feeds it the bytes."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.bulk: memoryview | None = None  # where the current body is being received
            self.bulk_len = 0
            self.bulk_got = 0
            self._store = bytearray(0)

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            cycle = self.cycle
            if cycle is None or cycle.scope is not self.scope or self.pipeline:
                return  # an upgrade, or a pipelined request waiting its turn: uvicorn's way
            length = None
            for name, value in self.headers:
                if name == b"content-length":
                    try:
                        length = int(value)
                    except ValueError:
                        return
                elif name in (b"transfer-encoding", b"upgrade", b"expect"):
                    return
            if length is None or not min_bulk_bytes <= length <= max_bulk_bytes:
                return
            if length <= reuse_limit:
                if len(self._store) < length:
                    self._store = bytearray(length)
                self.bulk = memoryview(self._store)[:length]
            else:
                self.bulk = memoryview(bytearray(length))
            self.bulk_len, self.bulk_got = length, 0

        def on_body(self, body: bytes) -> None:
            if self.bulk is None:
                super().on_body(body)
                return
            end = self.bulk_got + len(body)
            self.bulk[self.bulk_got:end] = body
            self.bulk_got = end

        def on_message_complete(self) -> None:
            if self.bulk is not None:  # the whole body came in the read that had the headers
                self.finish_bulk(reset_parser=False)
                return
            super().on_message_complete()

        def finish_bulk(self, reset_parser: bool) -> None:
            body, self.bulk = self.bulk, None
            if reset_parser:  # the parser never saw the body: a fresh one parses the next request
                self.parser = httptools.HttpRequestParser(self)
                try:
                    self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
                except AttributeError:  # pragma: no cover - older httptools
                    pass
            cycle = self.cycle
            if cycle is None or cycle.response_complete:
                return  # answered without reading the body
            cycle.body = body  # uvicorn's receive() sends bytes(cycle.body): the one copy
            cycle.more_body = False
            cycle.message_event.set()

        def connection_lost(self, exc: Exception | None) -> None:
            self.bulk = None
            self._store = bytearray(0)
            super().connection_lost(exc)

    class BulkBodyProtocol(asyncio.BufferedProtocol):
        """What the event loop talks to; reads go into our buffers, uvicorn's protocol does the rest."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.inner = _BulkInner(*args, **kwargs)
            self._read_buffer = bytearray(READ_CHUNK)

        def connection_made(self, transport: Any) -> None:
            self.inner.connection_made(transport)

        def connection_lost(self, exc: Exception | None) -> None:
            self.inner.connection_lost(exc)

        def pause_writing(self) -> None:
            self.inner.pause_writing()

        def resume_writing(self) -> None:
            self.inner.resume_writing()

        def eof_received(self) -> bool | None:
            return self.inner.eof_received()

        def get_buffer(self, sizehint: int) -> memoryview:
            inner = self.inner
            if inner.bulk is not None:
                return inner.bulk[inner.bulk_got:]
            return memoryview(self._read_buffer)

        def buffer_updated(self, nbytes: int) -> None:
            inner = self.inner
            if inner.bulk is not None:
                inner.bulk_got += nbytes
                if inner.bulk_got >= inner.bulk_len:
                    inner.finish_bulk(reset_parser=True)
                return
            if inner.parser is not None:
                inner.data_received(bytes(self._read_buffer[:nbytes]))

    return BulkBodyProtocol
