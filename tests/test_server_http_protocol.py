"""The bulk-body HTTP protocol (``service.http_protocol``, what ``sepconv serve`` runs): bodies of every size
arrive intact, on kept-alive and pipelined connections, chunked or with ``Expect: 100-continue``, answered
early or abandoned mid-way; and the real app over it gives the same answers as in-process ORT."""

from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import orjson
import pytest
import uvicorn
from onnx import TensorProto, helper

from export.graph import supported_ir_version
from service.app import create_app
from service.http_protocol import MIN_BULK_BYTES, protocol_class
from service.settings import Settings
from tests.serving import free_port

LIMIT = 8 * 1024 * 1024


async def echo_app(scope, receive, send) -> None:
    """Answers ``<length> <sha256>`` of the body; ``/early`` answers 404 without reading it."""
    if scope["type"] != "http":
        return
    if scope["path"] == "/early":
        out = b"not reading that"
        await send({"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"16")]})
        await send({"type": "http.response.body", "body": out})
        return
    digest, size, more = hashlib.sha256(), 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        chunk = message.get("body", b"")
        digest.update(chunk)
        size += len(chunk)
        more = message.get("more_body", False)
    out = f"{size} {digest.hexdigest()}".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(out)).encode())]})
    await send({"type": "http.response.body", "body": out})


@contextlib.contextmanager
def serve(app) -> Iterator[int]:
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, http=protocol_class(LIMIT), loop="uvloop",
                            log_level="warning", lifespan="auto")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _request(path: str, body: bytes, extra: bytes = b"") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n".encode() + extra + b"\r\n" + body)


def _read_response(sock: socket.socket, buf: bytearray) -> tuple[int, bytes]:
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, "connection closed"
        buf += chunk
    end = buf.index(b"\r\n\r\n")
    head = bytes(buf[:end]).decode("latin-1").split("\r\n")
    length = next(int(h.split(":", 1)[1]) for h in head[1:] if h.lower().startswith("content-length"))
    while len(buf) < end + 4 + length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed"
        buf += chunk
    body = bytes(buf[end + 4:end + 4 + length])
    del buf[:end + 4 + length]
    return int(head[0].split()[1]), body


def _expect(body: bytes) -> bytes:
    return f"{len(body)} {hashlib.sha256(body).hexdigest()}".encode()


def test_protocol_class_is_a_buffered_protocol() -> None:
    import asyncio

    cls = protocol_class(LIMIT)
    assert isinstance(cls, type) and issubclass(cls, asyncio.BufferedProtocol)
    assert not issubclass(cls, asyncio.Protocol)  # else uvloop would not use get_buffer


def test_bodies_of_every_size_keep_alive_and_pipelined() -> None:
    rng = np.random.default_rng(0)
    sizes = [0, 1, 100, MIN_BULK_BYTES - 1, MIN_BULK_BYTES, MIN_BULK_BYTES + 1, 602_286, 3_000_001, 700_000, 5]
    bodies = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in sizes]
    with serve(echo_app) as port, socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        buf = bytearray()
        for body in bodies:  # one kept-alive connection, one request at a time, sent in pieces
            request = _request("/", body)
            for i in range(0, len(request), 100_000):
                sock.sendall(request[i:i + 100_000])
            assert _read_response(sock, buf) == (200, _expect(body))
        sock.sendall(b"".join(_request("/", b) for b in bodies))  # all pipelined in one go
        for body in bodies:
            assert _read_response(sock, buf) == (200, _expect(body))
        # a body answered without being read, then the connection goes on
        big = bodies[6]
        sock.sendall(_request("/early", big) + _request("/", bodies[7]))
        assert _read_response(sock, buf)[0] == 404
        assert _read_response(sock, buf) == (200, _expect(bodies[7]))


def test_chunked_expect_continue_and_abandoned_bodies() -> None:
    body = bytes(range(256)) * 1000
    with serve(echo_app) as port:
        url = f"http://127.0.0.1:{port}/"

        def chunks():
            for i in range(0, len(body), 50_000):
                yield body[i:i + 50_000]

        assert httpx.post(url, content=chunks()).content == _expect(body)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(_request("/", b"", b"Expect: 100-continue\r\n").replace(
                b"Content-Length: 0", f"Content-Length: {len(body)}".encode()))
            assert sock.recv(100).startswith(b"HTTP/1.1 100")
            sock.sendall(body)
            assert _read_response(sock, bytearray()) == (200, _expect(body))
        for _ in range(3):  # a client that goes away in the middle of a body
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                sock.sendall(_request("/", body)[:300_000])
        assert httpx.post(url, content=body).content == _expect(body)


def _image_model(path: Path) -> Path:
    """input FP32 [N, 3, 128, 128] (196 KB per image) -> logits = mean over H, W per channel, times 2."""
    two = helper.make_tensor("two", TensorProto.FLOAT, [1], [2.0])
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input"], ["m"], axes=[2, 3], keepdims=0),
         helper.make_node("Mul", ["m", "two"], ["logits"])], "image",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 128, 128])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], initializer=[two])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = supported_ir_version()
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("binary", [True, False])
def test_the_app_over_the_bulk_protocol(tmp_path: Path, binary: bool) -> None:
    import tritonclient.http as httpclient

    path = _image_model(tmp_path / "image" / "1" / "model.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    app = create_app(Settings(repo=tmp_path, providers="cpu", access_log=False, max_request_bytes=LIMIT))
    with serve(app) as port:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        for batch in (1, 3, 1):
            x = np.random.default_rng(batch).standard_normal((batch, 3, 128, 128)).astype(np.float32)
            inp = httpclient.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary)
            got = client.infer("image", [inp]).as_numpy("logits")
            np.testing.assert_allclose(got, sess.run(None, {"input": x})[0], rtol=1e-5, atol=1e-6)
        too_big = orjson.dumps({"inputs": []}) + b" " * LIMIT
        r = httpx.post(f"http://127.0.0.1:{port}/v2/models/image/infer", content=too_big)
        assert r.status_code == 413
        assert client.is_server_live()
