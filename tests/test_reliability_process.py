"""The reliability suite, part 2: ``sepconv serve`` as a process — the file-descriptor limit, SIGTERM with
clients mid-request and a stalled upload, and a soak whose memory growth is bounded.

Each test starts the real command on a free loopback port (settings through ``SEPCONV_*`` as an operator
sets them). Figures (requests, statuses, RSS) are printed for docs/reliability.md; assertions are on
outcomes and memory, never on wall-clock time."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import orjson
import pytest

from tests.reliability import X, closed_by_peer, infer_body, open_upload, read_response, rss_bytes
from tests.serving import free_port
from tests.test_server_faults import _slow_model

pytestmark = pytest.mark.reliability

ROOT = Path(__file__).resolve().parents[1]


def _start(repo: Path, env: dict[str, str] | None = None, nofile: int | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    full_env = {**os.environ, "SEPCONV_PROVIDERS": "cpu", "SEPCONV_ACCESS_LOG": "false", **(env or {})}

    def limit() -> None:
        if nofile:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    proc = subprocess.Popen([sys.executable, "-m", "sepconv", "serve", "--repo", str(repo), "--port", str(port),
                             "--log-level", "warning"], cwd=ROOT, env=full_env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, preexec_fn=limit)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(url + "/v2/health/ready", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"sepconv serve did not start: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.1)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _ok(r: httpx.Response) -> bool:
    return r.status_code == 200 and r.json()["outputs"][0]["shape"] == [1, 5]


def test_stalled_connections_cannot_exhaust_descriptors(model_repo: Path) -> None:
    """600 stalled connections against a server limited to 256 descriptors: the connection cap (the limit
    less a reserve) closes the oldest idle ones, so accept never fails and legitimate requests pass."""
    proc, url = _start(model_repo, {"SEPCONV_HEADER_TIMEOUT_S": "600"}, nofile=256)
    stalled = []
    try:
        host, port = url.removeprefix("http://").split(":")
        import socket

        for _ in range(600):
            try:
                s = socket.create_connection((host, int(port)), timeout=30)
                s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")
                stalled.append(s)
            except OSError:
                break
        with httpx.Client(base_url=url, timeout=30) as client:
            answers = [client.post("/v2/models/tiny/infer", content=infer_body()) for _ in range(10)]
        assert all(_ok(r) for r in answers)
        assert len(os.listdir(f"/proc/{proc.pid}/fd")) <= 256
        print(f"\nfigures: {len(stalled)} stalled connections at RLIMIT_NOFILE 256; 10/10 requests answered")
    finally:
        for s in stalled:
            s.close()
        _stop(proc)


def test_sigterm_answers_every_request_in_flight_and_cuts_a_stalled_upload(tmp_path: Path) -> None:
    _slow_model(tmp_path / "slow" / "1" / "model.onnx", layers=40, size=256)
    (tmp_path / "slow" / "config.pbtxt").write_text("max_batch_size: 0")
    x = np.random.default_rng(3).standard_normal((3, 256, 256)).astype(np.float32)
    expected = ort.InferenceSession(str(tmp_path / "slow" / "1" / "model.onnx"),
                                    providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    body = orjson.dumps({"inputs": [{"name": "x", "shape": [3, 256, 256], "datatype": "FP32",
                                     "data": x.reshape(-1).tolist()}]})
    proc, url = _start(tmp_path, {"SEPCONV_SHUTDOWN_GRACE_S": "120", "SEPCONV_BODY_TIMEOUT_S": "300",
                                  "SEPCONV_MAX_REQUEST_BYTES": str(64 * 1024 * 1024)})
    try:
        clients = [open_upload(url, "/v2/models/slow/infer", length=len(body), first=body) for _ in range(16)]
        stalled = open_upload(url, "/v2/models/slow/infer", length=len(body), first=body[:100])
        time.sleep(0.5)  # every request is in the server's hands
        proc.send_signal(signal.SIGTERM)
        for sock in clients:
            status, _, raw = read_response(sock)
            assert status == 200, raw[:300]
            out = orjson.loads(raw)["outputs"][0]
            np.testing.assert_allclose(np.asarray(out["data"], np.float32).reshape(out["shape"]), expected,
                                       rtol=1e-4, atol=1e-4)
        status, headers, raw = read_response(stalled)
        assert status == 503 and headers["content-type"] == "application/json"
        assert "shutting down" in orjson.loads(raw)["error"] and closed_by_peer(stalled)
        assert proc.wait(timeout=120) in (0, -signal.SIGTERM)
        print("\nfigures: SIGTERM with 16 requests in flight: 16/16 answered 200 and correct; stalled upload: 503")
    finally:
        _stop(proc)


SOAK_REQUESTS = 4000


def test_soak_memory_is_flat_under_mixed_requests(model_repo: Path) -> None:
    """A few thousand mixed requests (good and bad, every kind of route), 8 clients at once: every answer has
    the expected status, and RSS after the run stays within a bound of RSS after a warm-up."""
    proc, url = _start(model_repo, {"SEPCONV_MAX_REQUEST_BYTES": str(1024 * 1024)})
    good = infer_body()
    header = orjson.dumps({"inputs": [{"name": "input", "shape": list(X.shape), "datatype": "FP32",
                                       "parameters": {"binary_data_size": X.nbytes}}],
                           "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]})
    kinds = [
        ("json infer", "POST", "/v2/models/tiny/infer", good, {}, 200),
        ("binary infer", "POST", "/v2/models/tiny/infer", header + X.tobytes(),
         {"Inference-Header-Content-Length": str(len(header))}, 200),
        ("metadata", "GET", "/v2/models/tiny", None, {}, 200),
        ("stats", "GET", "/v2/models/tiny/stats", None, {}, 200),
        ("conv", "POST", "/v1/conv/depthwise_conv2d", orjson.dumps(
            {"input": [[[[1.0, 2.0]] * 4] * 4], "filter": [[[[1.0], [0.5]]] * 3] * 3}), {}, 200),
        ("malformed json", "POST", "/v2/models/tiny/infer", b'{"inputs": [', {}, 400),
        ("unknown model", "POST", "/v2/models/nope/infer", good, {}, 404),
        ("wrong shape", "POST", "/v2/models/tiny/infer", orjson.dumps(
            {"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}), {}, 400),
        ("over the size limit", "POST", "/v2/models/tiny/infer", b" " * (1024 * 1024 + 1), {}, 413),
        ("admin, model control none", "POST", "/v2/repository/models/tiny/unload", b"{}", {}, 403),
        ("deep json", "POST", "/v2/repository/index", b"[" * 100_000, {}, 400),
        ("wide json bomb", "POST", "/v2/models/tiny/infer", b'{"a":[' + b"[]," * 600_000 + b"[]]}", {}, 413),
    ]
    seen: Counter[tuple[str, int]] = Counter()
    lock = threading.Lock()

    def run(n: int, offset: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            for i in range(n):
                name, method, path, content, headers, want = kinds[(i + offset) % len(kinds)]
                r = client.request(method, path, content=content, headers=headers)
                with lock:
                    seen[(name, r.status_code)] += 1
                assert r.status_code == want, (name, r.status_code, r.text[:200])

    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(run, [50] * 8, range(8)))  # warm-up: sessions, caches, arenas
            warm = rss_bytes(proc.pid)
            list(pool.map(run, [SOAK_REQUESTS // 8] * 8, range(8)))
        final = rss_bytes(proc.pid)
        growth = final - warm
        statuses: Counter[int] = Counter()
        for (_, status), count in seen.items():
            statuses[status] += count
        print(f"\nfigures: soak {SOAK_REQUESTS} requests + 400 warm-up, {len(kinds)} kinds; RSS warm "
              f"{warm / 2**20:.0f} MiB -> {final / 2**20:.0f} MiB (+{growth / 2**20:.1f} MiB); statuses "
              f"{dict(sorted(statuses.items()))}")
        assert growth < 48 * 2**20, f"RSS grew {growth / 2**20:.1f} MiB over the soak"
        assert httpx.get(url + "/v2/health/ready").status_code == 200
    finally:
        _stop(proc)
