"""The reliability suite, part 1: the attacks of issue 11 against a real server (uvicorn on loopback, the
server's own transport from ``sepconv.service.rest.transport``), each answered as DESIGN.md says.

Every test reproduces one attack the way a hostile client does it (raw sockets that stall, lie about their
length or trickle) and asserts what the server answers; none asserts a wall-clock time. Short timeouts are
set through the same settings an operator uses (``SEPCONV_BODY_TIMEOUT_S`` ...)."""

from __future__ import annotations

import http.client
import os
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import orjson
import pytest

from sepconv.export.repository.writer import STALE_TEMP_S, atomic_write
from sepconv.service.app import create_app
from sepconv.service.settings import Settings
from tests.conftest import build_cnn
from tests.reliability import X, closed_by_peer, hostport, infer_body, open_upload, read_response
from tests.serving import running_server

pytestmark = pytest.mark.reliability

HARDENED = {"providers": "cpu", "access_log": False, "max_request_bytes": 1024 * 1024,
            "max_inflight_bytes": 256 * 1024, "body_timeout_s": 1.0, "body_min_rate": 1024,
            "header_timeout_s": 1.0, "drain_timeout_s": 5.0}


def _serve(repo: Path, **overrides):
    return running_server(create_app(Settings(repo=repo, **{**HARDENED, **overrides})))


def _expected(repo: Path, x: np.ndarray = X) -> np.ndarray:
    session = ort.InferenceSession(str(repo / "tiny" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": x})[0]


def _logits(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    out = response.json()["outputs"][0]
    return np.asarray(out["data"], np.float32).reshape(out["shape"])


@pytest.fixture(scope="module")
def hardened(model_repo: Path):
    with _serve(model_repo, model_control="explicit") as url:
        yield url


# -- 1. idle uploads hold no budget, and are cut --------------------------------------------------------
def test_idle_uploads_hold_no_budget_and_are_cut(hardened: str, model_repo: Path) -> None:
    """Four connections declaring 1 MiB (4x the in-flight budget) and four chunked ones send nothing: every
    POST still answers, and each stalled upload gets a readable 408 and is closed."""
    stalled = [open_upload(hardened, "/v2/models/tiny/infer", length=1024 * 1024) for _ in range(4)]
    stalled += [open_upload(hardened, "/v2/models/tiny/infer", length=None) for _ in range(4)]
    try:
        time.sleep(0.2)  # let the server take the eight requests in
        with httpx.Client(base_url=hardened, timeout=30) as client:
            r = client.post("/v2/models/tiny/infer", content=infer_body())
            np.testing.assert_allclose(_logits(r), _expected(model_repo), rtol=1e-5, atol=1e-6)
            conv = client.post("/v1/conv/conv2d", json={"input": [[[[1.0]]]], "filter": [[[[2.0]]]]})
            assert conv.status_code == 200 and conv.json()["output"] == [[[[2.0]]]]
        for sock in stalled:
            status, headers, body = read_response(sock)
            assert status == 408 and "did not arrive in time" in orjson.loads(body)["error"]
            assert headers["connection"] == "close" and closed_by_peer(sock)
    finally:
        for sock in stalled:
            sock.close()


def test_a_trickling_upload_is_cut(hardened: str) -> None:
    """One byte a second keeps a connection busy but is below the minimum rate: 408."""
    sock = open_upload(hardened, "/v2/models/tiny/infer", length=4096)
    try:
        status = None
        for _ in range(30):
            try:
                sock.sendall(b" ")
            except OSError:
                break
            sock.settimeout(0.5)
            try:
                data = sock.recv(65536, socket.MSG_PEEK)
            except TimeoutError:
                continue
            if data:
                break
        sock.settimeout(30)
        status, _, _ = read_response(sock)
        assert status == 408
    finally:
        sock.close()


# -- 9. early answers are read, not reset ---------------------------------------------------------------------
def test_413_and_503_reach_an_ordinary_client(hardened: str) -> None:
    """http.client sends the whole body before it reads: the server answers early and keeps reading (bounded),
    so the client gets the status and Retry-After instead of a connection reset."""
    host, port = hostport(hardened)
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request("POST", "/v2/models/tiny/infer", body=b" " * (3 * 1024 * 1024),
                 headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 413 and "over the limit" in orjson.loads(r.read())["error"]
    conn.request("GET", "/v2/health/live")  # the same connection serves on
    assert conn.getresponse().status == 200
    conn.close()

    holder = open_upload(hardened, "/v2/models/tiny/infer", length=300 * 1024, first=b" " * (250 * 1024))
    try:
        time.sleep(0.2)  # the 250 KiB are held (the budget is 256 KiB)
        conn = http.client.HTTPConnection(host, port, timeout=30)
        conn.request("POST", "/v2/models/tiny/infer", body=b" " * (900 * 1024))
        r = conn.getresponse()
        assert r.status == 503 and r.getheader("Retry-After") == "1"
        assert "busy" in orjson.loads(r.read())["error"]
        conn.close()
    finally:
        holder.close()


# -- 2. the admin side -----------------------------------------------------------------------------------------
def test_model_control_none_by_default(model_repo: Path) -> None:
    with running_server(create_app(Settings(repo=model_repo, providers="cpu", access_log=False))) as url:
        logging_before = httpx.get(url + "/v2/logging").json()
        for path in ("/v2/repository/models/tiny/unload", "/v2/repository/models/tiny/load", "/v2/logging"):
            r = httpx.post(url + path, json={"log_info": False} if path == "/v2/logging" else {})
            assert r.status_code == 403 and "--model-control explicit" in r.json()["error"], path
        assert httpx.get(url + "/v2/models/tiny/ready").status_code == 200
        assert httpx.post(url + "/v2/repository/index").status_code == 200  # reading stays open
        assert httpx.get(url + "/v2/logging").json() == logging_before


def test_explicit_beyond_loopback_needs_a_token(model_repo: Path) -> None:
    with pytest.raises(RuntimeError, match="SEPCONV_ADMIN_TOKEN"):
        create_app(Settings(repo=model_repo, host="0.0.0.0", model_control="explicit"))
    create_app(Settings(repo=model_repo, host="0.0.0.0", model_control="explicit", admin_token="t"))


def test_cross_origin_browser_requests_cannot_change_state(hardened: str) -> None:
    """A web page's form-style POST (text/plain, its Origin) must not unload a model; curl and SDKs (no
    Origin) and the server's own pages (same origin) still can."""
    host = hardened.removeprefix("http://")
    logging_before = httpx.get(hardened + "/v2/logging").json()
    for headers in ({"Origin": "http://evil.example", "Content-Type": "text/plain"},
                    {"Origin": "null", "Content-Type": "text/plain"},
                    {"Sec-Fetch-Site": "cross-site"}):
        r = httpx.post(hardened + "/v2/repository/models/tiny/unload", content=b"{}", headers=headers)
        assert r.status_code == 403 and "cross-origin" in r.json()["error"]
        r = httpx.post(hardened + "/v2/logging", content=b'{"log_info": false}', headers=headers)
        assert r.status_code == 403
    assert httpx.get(hardened + "/v2/models/tiny/ready").status_code == 200
    assert httpx.get(hardened + "/v2/logging").json() == logging_before
    same = httpx.post(hardened + "/v2/logging", json={}, headers={"Origin": f"http://{host}"})
    assert same.status_code == 200


def test_config_overrides_are_bounded(fresh_repo: Path) -> None:
    with _serve(fresh_repo, model_control="explicit") as url:
        for config, word in (({"dynamic_batching": {"max_queue_delay_microseconds": 3_600_000_000}},
                              "max_queue_delay_microseconds"),
                             ({"instance_group": [{"count": 60, "kind": "KIND_CPU"}]}, "instances"),
                             ({"max_batch_size": 100000}, "max_batch_size")):
            r = httpx.post(url + "/v2/repository/models/tiny/load",
                           json={"parameters": {"config": orjson.dumps(config).decode()}})
            assert r.status_code == 400 and word in r.json()["error"], r.text
        r = httpx.post(url + "/v2/models/tiny/infer", content=infer_body(), timeout=30)
        assert r.status_code == 200


def test_repository_errors_do_not_leak_the_path(tmp_path: Path) -> None:
    build_cnn(tmp_path / "good" / "1" / "model.onnx")
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "1" / "model.onnx").write_bytes(b"\x08\x07garbage")
    with _serve(tmp_path, model_control="explicit") as url:
        text = httpx.post(url + "/v2/repository/index").text
        assert "broken" in text and str(tmp_path) not in text
        r = httpx.post(url + "/v2/repository/models/broken/load")
        assert r.status_code == 400 and str(tmp_path) not in r.text


# -- 4. JSON bombs ---------------------------------------------------------------------------------------------
def test_json_bombs_are_refused_before_parsing(model_repo: Path) -> None:
    with _serve(model_repo, model_control="explicit", max_request_bytes=16 * 1024 * 1024,
                max_inflight_bytes=64 * 1024 * 1024) as url:
        bomb = b'{"a":[' + b"[]," * 3_000_000 + b"[]]}"  # 9 MB: 3 M lists, ~200 MB once parsed
        r = httpx.post(url + "/v2/models/tiny/infer", content=bomb, timeout=60)
        assert r.status_code == 413 and "lists and objects" in r.json()["error"]
        for path in ("/v2/repository/index", "/v2/logging"):
            r = httpx.post(url + path, content=bomb, timeout=60)
            assert r.status_code == 413, (path, r.text)
        small = b'{"a":[' + b"[]," * 300_000 + b"[]]}"  # under the control routes' byte cap, over no count
        assert httpx.post(url + "/v2/repository/index", content=small).status_code == 200
        numbers = orjson.dumps({"inputs": [{"name": "input", "shape": [1], "datatype": "FP32",
                                            "data": [0] * 5_000_000}]})
        r = httpx.post(url + "/v2/models/tiny/infer", content=numbers, timeout=60)
        assert r.status_code == 413 and "values" in r.json()["error"]
        r = httpx.post(url + "/v2/models/tiny/infer", content=infer_body(), timeout=30)
        assert r.status_code == 200


# -- 3, 5. compute and output amplification --------------------------------------------------------------------
def test_conv_output_amplification_is_refused(hardened: str) -> None:
    """5.6 KB asking for 16 M output elements (explicit padding 2000): 413 from the declared shapes."""
    body = {"input": [[[[0.5] * 10]]], "filter": [[[[1.0]] * 10] * 10] * 10,
            "padding": [[0, 0], [2000, 2000], [2000, 2000], [0, 0]]}
    r = httpx.post(hardened + "/v1/conv/conv2d", json=body, timeout=60)
    assert r.status_code == 413 and "SEPCONV_CONV_MAX_OUTPUT_ELEMENTS" in r.json()["error"]
    body["padding"] = [[0, 0], [5, 5], [5, 5], [0, 0]]  # the same request with sane padding runs: 11x11 -> 2x2
    r = httpx.post(hardened + "/v1/conv/conv2d", json=body, timeout=60)
    assert r.status_code == 200 and r.json()["shape"] == [1, 2, 2, 1]


def test_conv_profile_filter_is_bounded(hardened: str) -> None:
    """~90 bytes asking for a 50 M-element filter (200 MB each, gigabytes across the variants): 413."""
    for shape, filters in (([1, 1, 1, 500], 100_000), ([1, 1, 1, 1000], 100_000)):
        r = httpx.post(hardened + "/v1/profile/conv", json={"input_shape": shape, "filters": filters,
                                                             "kernel_size": 1, "runs": 1, "warmup": 0}, timeout=60)
        assert r.status_code == 413 and "SEPCONV_CONV_MAX_FILTER_ELEMENTS" in r.json()["error"]
    big = {"input_shape": [1, 1, 1, 5000], "filters": 1, "kernel_size": 1, "depth_multiplier": 1000, "runs": 1,
           "warmup": 0}
    r = httpx.post(hardened + "/v1/conv/conv2d", json={"input": [[[[1.0]]]], "filter": [[[[2.0]]]]})
    assert r.status_code == 200
    assert httpx.post(hardened + "/v1/profile/conv", json=big, timeout=60).status_code == 413


# -- 6. a reload while a request is still uploading --------------------------------------------------------------
def test_a_reload_does_not_fail_requests_still_uploading(fresh_repo: Path) -> None:
    with _serve(fresh_repo, model_control="explicit", body_timeout_s=60.0) as url:
        body = infer_body()
        socks = [open_upload(url, "/v2/models/tiny/infer", length=len(body), first=body[:20]) for _ in range(4)]
        try:
            time.sleep(0.2)
            r = httpx.post(url + "/v2/repository/models/tiny/load", timeout=60)  # retires the version they started on
            assert r.status_code == 200
            for sock in socks:
                sock.sendall(body[20:])
            for sock in socks:
                status, _, raw = read_response(sock)
                assert status == 200, raw
                out = orjson.loads(raw)["outputs"][0]
                np.testing.assert_allclose(np.asarray(out["data"], np.float32).reshape(out["shape"]),
                                           _expected(fresh_repo), rtol=1e-5, atol=1e-6)
        finally:
            for sock in socks:
                sock.close()


# -- 7. header timeout and connection cap (in process; the file-descriptor limit: test_reliability_process) ----
def test_stalled_connections_are_closed_and_capped(model_repo: Path) -> None:
    with _serve(model_repo, max_connections=16, header_timeout_s=2.0) as url:
        host, port = hostport(url)
        stalled = []
        for _ in range(40):  # more than the cap: the oldest idle ones are closed to make room
            s = socket.create_connection((host, port), timeout=30)
            s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")  # headers never finished
            stalled.append(s)
        try:
            with httpx.Client(base_url=url, timeout=30) as client:
                for _ in range(5):
                    r = client.post("/v2/models/tiny/infer", content=infer_body())
                    assert r.status_code == 200
            assert all(closed_by_peer(s) for s in stalled)  # evicted, or cut by the header timeout
        finally:
            for s in stalled:
                s.close()


# -- 8. profiles use the loaded model ----------------------------------------------------------------------------
def test_profiles_never_read_another_model_than_the_loaded_one(fresh_repo: Path) -> None:
    path = fresh_repo / "tiny" / "1" / "model.onnx"
    with _serve(fresh_repo, model_control="explicit") as url:
        profile = {"runs": 1, "warmup": 0}
        assert httpx.post(url + "/v1/models/tiny/profile", json=profile, timeout=120).status_code == 200
        original = path.read_bytes()
        build_cnn(path, seed=99, classes=7)  # swapped for another network on disk
        r = httpx.post(url + "/v1/models/tiny/profile", json=profile, timeout=120)
        assert r.status_code == 503 and "changed on disk" in r.json()["error"]
        path.write_bytes(original[: len(original) // 2])  # truncated
        r = httpx.post(url + "/v1/models/tiny/profile", json=profile, timeout=120)
        assert r.status_code == 503 and "reload" in r.json()["error"]
        r = httpx.post(url + "/v2/models/tiny/infer", content=infer_body(), timeout=30)
        assert r.status_code == 200 and r.json()["outputs"][0]["shape"] == [1, 5]  # the loaded one serves on
        path.write_bytes(original)
        assert httpx.post(url + "/v1/models/tiny/profile", json=profile, timeout=120).status_code == 200


# -- 10. nothing accumulates -----------------------------------------------------------------------------------
def test_unloading_unknown_names_leaves_nothing_behind(fresh_repo: Path) -> None:
    app = create_app(Settings(repo=fresh_repo, **HARDENED, model_control="explicit"))
    with running_server(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        before = len(app.state.registry._model_locks)
        for i in range(2000):
            r = client.post(f"/v2/repository/models/random_{os.getpid()}_{i}/unload")
            assert r.status_code == 404
        assert len(app.state.registry._model_locks) == before


def test_interrupted_writes_leave_no_temp_files_forever(tmp_path: Path) -> None:
    target = tmp_path / "m" / "1" / "model.onnx"
    target.parent.mkdir(parents=True)
    stale = target.parent / ".model.onnx.killed.tmp"  # what SIGKILL mid-export leaves
    young = target.parent / ".model.onnx.running.tmp"  # another export, still writing
    stale.write_bytes(b"half")
    young.write_bytes(b"half")
    old = time.time() - STALE_TEMP_S - 60
    os.utime(stale, (old, old))
    atomic_write(target, b"model")
    assert target.read_bytes() == b"model" and not stale.exists() and young.exists()
