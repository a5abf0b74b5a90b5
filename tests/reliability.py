"""Helpers of the reliability suite (tests/test_reliability_*.py): raw sockets that behave as a hostile client
would, HTTP responses read off them, and the resident memory of a server process."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import orjson

from tests.conftest import CNN_SHAPE

X = np.random.default_rng(7).standard_normal((1, *CNN_SHAPE)).astype(np.float32)


def infer_body(x: np.ndarray = X) -> bytes:
    return orjson.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                     "data": x.reshape(-1).tolist()}]})


def hostport(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def open_upload(url: str, path: str, *, length: int | None, first: bytes = b"", timeout: float = 60.0) -> socket.socket:
    """A connection that sent a POST's headers (``Content-Length: length``, or chunked when None) and ``first``."""
    sock = socket.create_connection(hostport(url), timeout=timeout)
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n{framing}\r\n\r\n"
                 .encode() + first)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one HTTP/1.1 response with a Content-Length, read off ``sock``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response: {data[:200]!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body[:length]


def closed_by_peer(sock: socket.socket) -> bool:
    """True once the server closed ``sock`` (reads b"" or a reset; waits up to the socket's timeout)."""
    try:
        while True:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def rss_bytes(pid: int) -> int:
    """Resident memory of process ``pid`` (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))
