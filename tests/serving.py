"""Run a real uvicorn server for a test: on a free loopback port, in a background thread."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import uvicorn


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_server(app, ready_path: str = "/v2/health/live", timeout: float = 60.0) -> Iterator[str]:
    """Start ``app`` under uvicorn on 127.0.0.1:<free port>; yield its base URL; stop it after."""
    port = free_port()
    settings = getattr(getattr(app, "state", None), "settings", None)
    if settings is not None:  # the server's own transport (sepconv.service.rest.transport): its limits are tested
        from sepconv.service.rest.transport import uvicorn_config  # noqa: PLC0415

        config = uvicorn_config(app, settings, host="127.0.0.1", port=port, log_level="warning")
    else:
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        if not thread.is_alive():
            raise RuntimeError("the test server exited during start-up")
        try:
            if httpx.get(base + ready_path, timeout=1.0).status_code < 500:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the test server did not answer {ready_path} within {timeout}s")
        time.sleep(0.05)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def wait_ready(proc, url: str, timeout: float = 60.0, path: str = "/v2/health/ready") -> None:
    """Wait until ``sepconv serve`` (the subprocess ``proc``) answers 200 on ``url + path``; fail with its stderr
    if it exits first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url + path, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "sepconv serve did not become ready"
        time.sleep(0.1)
