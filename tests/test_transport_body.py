"""How request bodies reach the app through the server's HTTP protocol (service.rest.transport): a body that
arrives fast is handed over in a few large messages (uvicorn's own flow control woke the app and paused reading for
every ~64-256 KB chunk), a slow one still in pieces as it comes, and a connection whose app does not read holds a
bounded amount. A real uvicorn server with the server's protocol on a loopback port; the app records what it got."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from sepconv.service.rest.transport import BODY_PAUSE_BYTES, BODY_SIGNAL_BYTES, TransportGuard
from sepconv.service.settings import Settings
from tests.serving import running_server

READ_CHUNK = 256 * 1024  # uvloop reads at most this much at once


class Recorder:
    """An ASGI app under the server's transport: /read records the body messages it receives; /hold waits
    ``hold_s`` before reading, sampling meanwhile how many body bytes its connection's protocol holds."""

    def __init__(self, settings: Settings, hold_s: float = 0.0) -> None:
        self.state = SimpleNamespace(settings=settings, transport_guard=TransportGuard(settings))
        self.hold_s = hold_s
        self.messages: list[list[int]] = []
        self.digests: list[str] = []
        self.held_max = 0

    def _held(self) -> int:
        return max((len(p.cycle.body) for p in self.state.transport_guard.connections if p.cycle is not None),
                   default=0)

    async def __call__(self, scope: dict, receive, send) -> None:  # noqa: ANN001
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        if scope["path"] == "/hold":
            end = time.monotonic() + self.hold_s
            while time.monotonic() < end:
                self.held_max = max(self.held_max, self._held())
                await asyncio.sleep(0.01)
        sizes, digest, more = [], hashlib.sha256(), scope["method"] == "POST"
        while more:
            message = await receive()
            body = message.get("body", b"")
            if body:
                sizes.append(len(body))
                digest.update(body)
            more = message.get("more_body", False)
        if scope["method"] == "POST":  # not the readiness probes
            self.messages.append(sizes)
            self.digests.append(digest.hexdigest())
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})


def _settings(tmp_path: Path) -> Settings:
    return Settings(repo=tmp_path, port=0, grpc_port=0)


def test_a_fast_body_reaches_the_app_in_a_few_large_messages(tmp_path: Path) -> None:
    app = Recorder(_settings(tmp_path))
    body = bytes(range(256)) * (3 * 4096)  # 3 MiB, like a V2 JSON image body
    with running_server(app) as base, httpx.Client(timeout=30) as client:
        for _ in range(3):
            assert client.post(base + "/read", content=body).status_code == 200
    for sizes, digest in zip(app.messages, app.digests, strict=True):
        assert sum(sizes) == len(body) and digest == hashlib.sha256(body).hexdigest()
        # uvicorn's flow control: one message per read chunk (>= 12 for 3 MiB); here one per BODY_SIGNAL_BYTES
        assert len(sizes) <= len(body) // BODY_SIGNAL_BYTES + 2, sizes


def test_a_slow_body_is_still_handed_over_as_it_arrives(tmp_path: Path) -> None:
    """Pieces 150 ms apart reach the app one by one (the 20 ms signal), so the body-rate deadlines see progress."""
    app = Recorder(_settings(tmp_path))
    pieces = 5
    with running_server(app) as base:
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /read HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (pieces * 1000))
            for _ in range(pieces):
                time.sleep(0.15)
                sock.sendall(b"x" * 1000)
            assert sock.recv(1024).startswith(b"HTTP/1.1 200")
    assert app.messages[0] == [1000] * pieces


def test_a_connection_whose_app_does_not_read_holds_a_bounded_body(tmp_path: Path) -> None:
    app = Recorder(_settings(tmp_path), hold_s=1.0)
    body = b"\0" * (16 << 20)
    result: list[int] = []

    def post() -> None:
        with httpx.Client(timeout=30) as client:
            result.append(client.post(base + "/hold", content=body).status_code)

    with running_server(app) as base:
        sender = threading.Thread(target=post)
        sender.start()
        sender.join(30)
    assert result == [200] and sum(app.messages[0]) == len(body)
    assert BODY_SIGNAL_BYTES <= app.held_max <= BODY_PAUSE_BYTES + READ_CHUNK, app.held_max


@pytest.mark.parametrize("size", [0, 1, BODY_SIGNAL_BYTES - 1, BODY_SIGNAL_BYTES, BODY_SIGNAL_BYTES + 1])
def test_bodies_around_the_signal_size_arrive_whole(tmp_path: Path, size: int) -> None:
    app = Recorder(_settings(tmp_path))
    body = bytes((i * 7) % 251 for i in range(size))
    with running_server(app) as base, httpx.Client(timeout=30) as client:
        assert client.post(base + "/read", content=body).status_code == 200
        assert client.post(base + "/read", content=body[::-1]).status_code == 200  # the same connection again
    assert [sum(s) for s in app.messages] == [size, size]
    assert app.digests == [hashlib.sha256(body).hexdigest(), hashlib.sha256(body[::-1]).hexdigest()]
