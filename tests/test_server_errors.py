"""Every kind of bad client input gets the right 4xx with ``{"error": ...}`` (never a 500), and the server
keeps answering correctly afterwards."""

from __future__ import annotations

import socket
import time

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient

from sepconv.service.app import create_app
from sepconv.service.settings import Settings
from tests.conftest import CNN_SHAPE
from tests.serving import running_server

GOOD_X = np.ones((1, *CNN_SHAPE), np.float32)


def _json_infer(shape, data, datatype="FP32", name="input", **extra) -> bytes:
    return orjson.dumps({"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}], **extra})


def _binary(header: dict, blob: bytes) -> tuple[bytes, dict[str, str]]:
    h = orjson.dumps(header)
    return h + blob, {"Inference-Header-Content-Length": str(len(h))}


def _bin_input(size: int, shape=None, datatype="FP32") -> dict:
    return {"inputs": [{"name": "input", "shape": shape or [1, *CNN_SHAPE], "datatype": datatype,
                        "parameters": {"binary_data_size": size}}]}


def _text_input(size: int) -> dict:
    return {"inputs": [{"name": "text", "shape": [1, 2], "datatype": "BYTES",
                        "parameters": {"binary_data_size": size}}]}


N = int(np.prod(CNN_SHAPE))
CASES = [
    # (id, method, path, body, headers, status, message fragment)
    ("malformed json", "POST", "/v2/models/tiny/infer", b"{not json", {}, 400, "malformed JSON"),
    ("json not an object", "POST", "/v2/models/tiny/infer", b"[1, 2]", {}, 400, "JSON object"),
    ("no inputs", "POST", "/v2/models/tiny/infer", b'{"inputs": []}', {}, 400, "inputs"),
    ("input not an object", "POST", "/v2/models/tiny/infer", b'{"inputs": [3]}', {}, 400, "object"),
    ("unknown input", "POST", "/v2/models/tiny/infer", _json_infer([1, 8, 8, 3], [0.0] * N, name="image"), {},
     400, "unknown input"),
    ("missing input", "POST", "/v2/models/multi_io/infer", _json_infer([1, 4], [0.0] * 4, name="a"), {}, 400,
     "missing input"),
    ("wrong datatype", "POST", "/v2/models/tiny/infer", _json_infer([1, 8, 8, 3], [0] * N, "INT32"), {}, 400,
     "datatype"),
    ("unsupported datatype", "POST", "/v2/models/tiny/infer", _json_infer([1, 8, 8, 3], [0] * N, "FP8"), {}, 400,
     "unsupported datatype"),
    ("wrong rank", "POST", "/v2/models/tiny/infer", _json_infer([8, 8, 3], [0.0] * N), {}, 400, "shape"),
    ("wrong spatial size", "POST", "/v2/models/tiny/infer", _json_infer([1, 4, 16, 3], [0.0] * N), {}, 400,
     "shape"),
    ("negative dim", "POST", "/v2/models/tiny/infer", _json_infer([-1, 8, 8, 3], [0.0] * N), {}, 400, "negative"),
    ("shape not ints", "POST", "/v2/models/tiny/infer", _json_infer(["1", 8, 8, 3], [0.0] * N), {}, 400,
     "integers"),
    ("too few elements", "POST", "/v2/models/tiny/infer", _json_infer([1, 8, 8, 3], [0.0] * (N - 1)), {}, 400,
     "elements"),
    ("ragged nested data", "POST", "/v2/models/tiny/infer", _json_infer([1, 8, 8, 3], [[0.0, 1.0], [2.0]]), {}, 400,
     "regular"),
    ("null in data", "POST", "/v2/models/tiny/infer", _json_infer([1, 8, 8, 3], [None] + [0.0] * (N - 1)), {}, 400,
     "null"),
    ("null in nested data", "POST", "/v2/models/tiny/infer", _json_infer([1, 8, 8, 3], [[None] * 3] * (N // 3)), {},
     400, "null"),
    ("nested list in flat data", "POST", "/v2/models/tiny/infer", _json_infer([1, 8, 8, 3], [0.0, [1.0]]), {}, 400,
     "input"),
    ("non-numeric data", "POST", "/v2/models/tiny/infer", _json_infer([1, 8, 8, 3], ["x"] * N), {}, 400, "input"),
    ("float into int64", "POST", "/v2/models/multi_io/infer",
     orjson.dumps({"inputs": [{"name": "a", "shape": [1, 4], "datatype": "FP32", "data": [0.0] * 4},
                              {"name": "b", "shape": [1, 4], "datatype": "FP16", "data": [0.0] * 4},
                              {"name": "idx", "shape": [1, 2], "datatype": "INT64", "data": [1.5, 2]}]}), {}, 400,
     "integers"),
    ("batch over max", "POST", "/v2/models/tiny_cfg/infer", _json_infer([5, 8, 8, 3], [0.0] * (5 * N)), {}, 400,
     "max_batch_size"),
    ("empty batch", "POST", "/v2/models/tiny/infer", _json_infer([0, 8, 8, 3], []), {}, 400, "empty"),
    ("unknown output", "POST", "/v2/models/tiny/infer",
     _json_infer([1, 8, 8, 3], [0.0] * N, outputs=[{"name": "probs"}]), {}, 400, "unknown output"),
    ("classification not a count", "POST", "/v2/models/tiny/infer",
     _json_infer([1, 8, 8, 3], [0.0] * N, outputs=[{"name": "logits", "parameters": {"classification": -3}}]), {},
     400, "classification"),
    ("classification with shared memory", "POST", "/v2/models/tiny/infer",
     _json_infer([1, 8, 8, 3], [0.0] * N, outputs=[{"name": "logits", "parameters": {
         "classification": 3, "shared_memory_region": "r"}}]), {}, 400, "classification"),
    ("binary size too small", "POST", "/v2/models/tiny/infer", *_binary(_bin_input(N * 4 - 4), b"\0" * (N * 4 - 4)),
     400, "needs"),
    ("binary size past body", "POST", "/v2/models/tiny/infer", *_binary(_bin_input(N * 4), b"\0" * 10), 400,
     "past the end"),
    ("binary bytes left over", "POST", "/v2/models/tiny/infer", *_binary(_bin_input(N * 4), b"\0" * (N * 4 + 8)), 400,
     "binary bytes"),
    ("bytes not utf-8", "POST", "/v2/models/strings/infer",
     *_binary(_text_input(12), b"\x02\0\0\0\xff\xfe\x02\0\0\0ok"), 400, "UTF-8"),
    ("bytes length past data", "POST", "/v2/models/strings/infer",
     *_binary(_text_input(6), b"\x09\0\0\0ab"), 400, "runs past"),
    ("header length not int", "POST", "/v2/models/tiny/infer", b"{}", {"Inference-Header-Content-Length": "x"}, 400,
     "Inference-Header-Content-Length"),
    ("header length past body", "POST", "/v2/models/tiny/infer", b"{}",
     {"Inference-Header-Content-Length": "99"}, 400, "does not fit"),
    ("unknown model", "POST", "/v2/models/nope/infer", _json_infer([1], [0.0]), {}, 404, "unknown model"),
    ("unknown version", "POST", "/v2/models/tiny/versions/7/infer", _json_infer([1], [0.0]), {}, 404,
     "unknown version"),
    ("bad version", "GET", "/v2/models/tiny/versions/abc", None, {}, 400, "version"),
    ("version outside policy", "GET", "/v2/models/tiny_cfg/versions/1/config", None, {}, 404, "unknown version"),
    ("unknown model metadata", "GET", "/v2/models/nope", None, {}, 404, "unknown model"),
    ("unknown route", "GET", "/v2/nowhere", None, {}, 404, "no route"),
    ("wrong method", "GET", "/v2/models/tiny/infer", None, {}, 405, "not allowed"),
    ("bad model name", "POST", "/v2/repository/models/..hidden/load", b"{}", {}, 400, "invalid model name"),
    ("index ready not bool", "POST", "/v2/repository/index", b'{"ready": 3}', {}, 400, "ready"),
    ("unsupported encoding", "POST", "/v2/models/tiny/infer", b"{}", {"Content-Encoding": "br"}, 415,
     "Content-Encoding"),
    ("bad gzip", "POST", "/v2/models/tiny/infer", b"not gzip", {"Content-Encoding": "gzip"}, 400, "decompress"),
    ("body over limit", "POST", "/v2/models/tiny/infer", b"x" * (4 * 1024 * 1024 + 1), {}, 413, "limit"),
    # shapes numpy cannot even describe: an empty tensor with enormous other dims, too many dims
    ("empty tensor, huge dims", "POST", "/v2/models/tiny/infer", _json_infer([0, 2**40, 2**40, 3], []), {}, 400,
     "too large"),
    ("binary empty tensor, huge dims", "POST", "/v2/models/tiny/infer",
     *_binary(_bin_input(0, shape=[0, 2**40, 2**40, 3]), b""), 400, "too large"),
    ("bytes empty tensor, huge dims", "POST", "/v2/models/strings/infer",
     _json_infer([0, 2**62], [], "BYTES", name="text"), {}, 400, "too large"),
    ("65 dimensions", "POST", "/v2/models/tiny/infer", _json_infer([1] * 65, [0.0]), {}, 400, "dimensions"),
    ("version of 5000 digits", "GET", "/v2/models/tiny/versions/" + "9" * 5000, None, {}, 400, "version"),
    ("version not ascii digits", "GET", "/v2/models/tiny/versions/%C2%B2", None, {}, 400, "version"),
    ("infer version not ascii", "POST", "/v2/models/tiny/versions/%C2%B2/infer", b"{}", {}, 400, "version"),
    ("config: absurd instance count", "POST", "/v2/repository/models/tiny/load",
     orjson.dumps({"parameters": {"config": '{"instance_group": [{"count": 1000000}]}'}}), {}, 400, "count"),
    ("config: digits that are not ASCII", "POST", "/v2/repository/models/tiny/load",
     orjson.dumps({"parameters": {"config": '{"max_batch_size": "\u00b2"}'}}), {}, 400, "config"),
    ("config: nested 1000 deep", "POST", "/v2/repository/models/tiny/load",
     orjson.dumps({"parameters": {"config": '{"parameters": ' * 1000 + "{}" + "}" * 1000}}), {}, 400, "config"),
]


@pytest.mark.parametrize(("method", "path", "body", "headers", "status", "fragment"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_request_gets_4xx_json(server, method, path, body, headers, status, fragment) -> None:
    r = httpx.request(method, server.url + path, content=body, headers=headers, timeout=30)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert isinstance(error, str) and fragment.lower() in error.lower()
    # ... and the server still serves a good request correctly
    client = httpclient.InferenceServerClient(server.hostport)
    inp = httpclient.InferInput("input", list(GOOD_X.shape), "FP32")
    inp.set_data_from_numpy(GOOD_X)
    assert client.infer("tiny", [inp]).as_numpy("logits").shape == (1, 5)


def test_oversized_body_is_refused_before_it_is_read(server) -> None:
    """A huge Content-Length gets 413 at once: the server does not wait for (or read) the body."""
    host, port = server.hostport.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"HTTP/1.1 413")
    assert b'"error"' in data


def test_chunked_body_over_limit(server) -> None:
    def chunks():
        for _ in range(5):
            yield b"x" * (1024 * 1024)

    r = httpx.post(server.url + "/v2/models/tiny/infer", content=chunks(), timeout=30)
    assert r.status_code == 413 and "limit" in r.json()["error"]


def test_client_that_disconnects_mid_body(server) -> None:
    """A client that goes away before sending its whole body is not a server error (no 500 in the metrics)."""
    host, port = server.hostport.split(":")
    for path in ("/v2/models/tiny/infer", "/v2/repository/index"):
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{{".encode())
            s.shutdown(socket.SHUT_WR)
            while s.recv(4096):  # whatever the server answers (nothing, or 400), until it closes
                pass
    deadline = time.monotonic() + 30  # the access record is written as the request's task ends
    while 'route="/v2/models/{model_name}/infer",status="499"' not in (metrics := httpx.get(
            server.url + "/metrics").text) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert 'route="/v2/models/{model_name}/infer",status="499"' in metrics
    assert 'route="/v2/models/{model_name}/infer",status="500"' not in metrics
    assert 'route="/v2/repository/index",status="500"' not in metrics
    client = httpclient.InferenceServerClient(server.hostport)
    inp = httpclient.InferInput("input", list(GOOD_X.shape), "FP32")
    inp.set_data_from_numpy(GOOD_X)
    assert client.infer("tiny", [inp]).as_numpy("logits").shape == (1, 5)


def test_memory_budget_for_bodies_in_flight(model_repo) -> None:
    """Body bytes held at once are capped: past the budget, 503 + Retry-After; a lone request passes."""
    body = _json_infer([1, *CNN_SHAPE], GOOD_X.reshape(-1).tolist())
    app = create_app(Settings(repo=model_repo, providers="cpu", access_log=False,
                              max_inflight_bytes=len(body) + 10, max_request_bytes=4 * len(body)))
    with running_server(app) as url:
        host, port = url.removeprefix("http://").split(":")
        big = httpx.post(url + "/v2/models/tiny/infer", content=body + b" " * (2 * len(body)))
        assert big.status_code == 200, big.text  # over the budget, but alone: it passes
        with socket.create_connection((host, int(port)), timeout=10) as slow:
            # one request whose body is still on its way holds the bytes it sent...
            slow.sendall(f"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
                         .encode() + body[:-10])
            deadline = time.monotonic() + 30
            while True:  # (until the server has taken it in)
                r = httpx.post(url + "/v2/models/tiny/infer", content=body)
                if r.status_code == 503 or time.monotonic() > deadline:
                    break
                time.sleep(0.02)
            assert r.status_code == 503 and "busy" in r.json()["error"]  # ...so a second one must wait
            assert r.headers["retry-after"] == "1"
            assert httpx.get(url + "/v2/health/ready").status_code == 200  # bodiless requests are not held up
            slow.sendall(body[-10:])
            assert slow.recv(4096).startswith(b"HTTP/1.1 200")
        r = httpx.post(url + "/v2/models/tiny/infer", content=body)
        assert r.status_code == 200, r.text


def test_loading_a_model_that_does_not_exist_leaves_no_trace(server) -> None:
    for i in range(3):
        r = httpx.post(server.url + f"/v2/repository/models/never_there_{i}/load")
        assert r.status_code == 404 and "no model directory" in r.json()["error"]
    names = {row["name"] for row in httpx.post(server.url + "/v2/repository/index").json()}
    assert "tiny" in names and not any(n.startswith("never_there") for n in names)


def test_failures_are_counted_in_stats(server) -> None:
    client = httpclient.InferenceServerClient(server.hostport)
    before = client.get_inference_statistics("tiny")["model_stats"][0]["inference_stats"]["fail"]["count"]
    httpx.post(server.url + "/v2/models/tiny/infer", content=_json_infer([1, 8, 8, 3], [0.0]))
    after = client.get_inference_statistics("tiny")["model_stats"][0]["inference_stats"]["fail"]["count"]
    assert after == before + 1


def test_admin_token_guards_load_and_unload(model_repo) -> None:
    app = create_app(Settings(repo=model_repo, providers="cpu", admin_token="s3cret", access_log=False,
                              model_control="explicit"))
    with running_server(app) as url:
        hostport = url.removeprefix("http://")
        r = httpx.post(url + "/v2/repository/models/tiny/unload")
        assert r.status_code == 401 and "Bearer" in r.json()["error"]
        assert r.headers["www-authenticate"] == "Bearer"
        r = httpx.post(url + "/v2/repository/models/tiny/unload", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 403
        anonymous = httpclient.InferenceServerClient(hostport)
        assert anonymous.is_model_ready("tiny")
        assert anonymous.get_model_repository_index()  # reading the index needs no token
        admin_headers = {"Authorization": "Bearer s3cret"}
        anonymous.unload_model("tiny", headers=admin_headers)
        assert not anonymous.is_model_ready("tiny")
        anonymous.load_model("tiny", headers=admin_headers)
        assert anonymous.is_model_ready("tiny")
