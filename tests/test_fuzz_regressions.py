"""Regressions found by fuzzing the live server (schemathesis + hand-written hostile requests).

Each case once answered 500 or drove the server to gigabytes of memory; now each must get a 4xx
``{"error": ...}`` and leave the server answering. One real server, tiny payloads except where the size
itself is the attack (those are refused before parsing, so they stay fast).
"""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from sepconv.export.errors import ExportError
from sepconv.export.padding import MAX_SPATIAL, ConvGeometry, spatial_pair
from sepconv.service.app import create_app
from sepconv.service.settings import Settings
from tests.serving import running_server

X = np.ones((1, 3, 3, 2)).tolist()
F = np.ones((2, 2, 2, 1)).tolist()
LIST_LIMIT = 4096


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory):
    settings = Settings(repo=tmp_path_factory.mktemp("empty_repo"), providers="cpu", load_at_startup=False,
                        conv_max_list_elements=LIST_LIMIT, trace_dir=tmp_path_factory.mktemp("traces"))
    with running_server(create_app(settings)) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client


def _assert_error(r: httpx.Response, status: int, words: str) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    assert words in r.json()["error"], r.text


# Integers past int64 reached onnx.helper.make_attribute ("Value out of range") -> 500; a 500 also made
# uvicorn drop the keep-alive connection, so the client's next request failed too.
@pytest.mark.parametrize("field,value", [
    ("strides", 2**63), ("strides", [1, 2**63]), ("dilations", 2**63), ("rate", [2**63, 1]),
    ("padding", [[0, 0], [2**63, 0], [0, 0], [0, 0]]), ("padding", [2**63, 0, 0, 0]),
])
def test_conv_huge_integers_are_422(http: httpx.Client, field: str, value) -> None:
    _assert_error(http.post("/v1/conv/depthwise_conv2d", json={"input": X, "filter": F, field: value}),
                  422, "out of range")
    assert http.get("/v2/health/live").status_code == 200  # same connection still usable


# Strings and floats were read with int(): strides "12" became [1, 2], padding 1.5 became 1.
@pytest.mark.parametrize("field,value", [
    ("strides", "12"), ("strides", [1.5, 1]), ("dilations", "2"), ("padding", [[0, 0], [1.5, 1], [1, 1], [0, 0]]),
    ("padding", [[0, 0], ["1", 1], [1, 1], [0, 0]]), ("strides", {"h": 1}),
])
def test_conv_non_integer_arguments_are_refused(http: httpx.Client, field: str, value) -> None:
    _assert_error(http.post("/v1/conv/depthwise_conv2d", json={"input": X, "filter": F, field: value}),
                  422, "must be an int or a list of ints")


def test_padding_rules_stay_strict_in_export() -> None:
    assert spatial_pair(np.int64(2), "strides") == (2, 2)  # numpy ints are still integers
    assert spatial_pair([1, 2, 3, 1], "strides") == (2, 3)
    for bad in ("22", 2.0, [1, True], MAX_SPATIAL + 1):
        with pytest.raises(ExportError):
            spatial_pair(bad, "strides")
    with pytest.raises(ExportError):
        ConvGeometry(1, [[0, 0], [1.0, 1], [1, 1], [0, 0]])


# 51 MB of `[[0]],` passed every size check (9 M elements < 16 Mi) and took the server to 3.6 GB of RSS
# (one Python list per element, then the nested-list response). Now refused before the JSON is parsed.
def test_conv_huge_nested_list_body_is_413_before_parsing(http: httpx.Client) -> None:
    n = LIST_LIMIT + 1
    body = b'{"input": [[' + b"[[0]]," * (n - 1) + b'[[0]]]], "filter": [[[[1]]]]}'
    r = http.post("/v1/conv/depthwise_conv2d", content=body, headers={"content-type": "application/json"})
    _assert_error(r, 413, "SEPCONV_CONV_MAX_LIST_ELEMENTS")
    assert "b64" in r.json()["error"]


def test_conv_nested_list_output_over_the_limit_is_413_and_b64_still_works(http: httpx.Client) -> None:
    from sepconv.service.conv.codec import from_b64, to_b64  # noqa: PLC0415

    x = np.ones((1, 8, 8, 1), np.float32)
    f = np.ones((1, 1, 1, 128), np.float32)  # 64 inputs -> 8192 outputs (> LIST_LIMIT)
    r = http.post("/v1/conv/depthwise_conv2d", json={"input": x.tolist(), "filter": f.tolist()})
    _assert_error(r, 413, "nested-list response")
    r = http.post("/v1/conv/depthwise_conv2d", json={"input": to_b64(x), "filter": f.tolist()})
    assert r.status_code == 200, r.text
    assert from_b64(r.json()["output"]).shape == (1, 8, 8, 128)


# FastAPI parsed any JSON body before validating it: a 50 MB `{"x": [[[0]], ...]}` to a profile route left
# the server at 2 GB of RSS. Profile bodies are now read with a small cap.
@pytest.mark.parametrize("path", ["/v1/models/anything/profile", "/v1/profile/conv"])
def test_profile_routes_cap_their_body(http: httpx.Client, path: str) -> None:
    body = b'{"x": [' + b"[[0]]," * 20_000 + b"[[0]]]}"
    _assert_error(http.post(path, content=body, headers={"content-type": "application/json"}), 413, "at most")


def test_profile_bodies_still_validate_like_before(http: httpx.Client) -> None:
    _assert_error(http.post("/v1/profile/conv", content=b'{"runs": 2', headers={"content-type": "application/json"}),
                  400, "malformed JSON")
    _assert_error(http.post("/v1/profile/conv", json={"input_shape": [1, 8, 8, 4]}), 422, "filters")
    _assert_error(http.post("/v1/profile/conv", json={"input_shape": [1, 8, 8, 4], "filters": 4, "runs": True}),
                  422, "runs")
    _assert_error(http.post("/v1/models/nope/profile", json={"fused": "yes"}), 422, "fused")
    _assert_error(http.post("/v1/models/nope/profile"), 404, "nope")  # no body: defaults, then the unknown model
    _assert_error(http.post("/v1/models/nope/profile", json={"extra": 1}), 422, "extra")
    r = http.post("/v1/profile/conv", json={"input_shape": [1, 6, 6, 4], "filters": 4, "runs": 1, "warmup": 0})
    assert r.status_code == 200, r.text
    assert r.json()["theoretical_ratio"] == pytest.approx(1 / 4 + 1 / 9)
    schema = http.get("/openapi.json").json()["paths"]["/v1/profile/conv"]["post"]["requestBody"]
    assert "input_shape" in schema["content"]["application/json"]["schema"]["properties"]


# `sepconv profile --csv -` wrote a file literally named "-" instead of standard output.
def test_profile_csv_dash_is_stdout(capsys: pytest.CaptureFixture[str], tmp_path, monkeypatch) -> None:
    from pathlib import Path  # noqa: PLC0415

    from sepconv.commands.profile import write_csv  # noqa: PLC0415

    monkeypatch.chdir(tmp_path)
    result = {"layers": [{"name": "conv_dw_1", "kind": "depthwise", "op_type": "Conv", "output_shape": [4, 4, 8],
                          "params": 80, "macs": 1152, "time_us": {"p50": 3.0, "p90": 4.0}, "percent": 100.0,
                          "gmacs_per_s": 0.384}]}
    write_csv(result, Path("-"))
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("name,kind,op_type") and out[1].startswith("conv_dw_1,depthwise,Conv,4x4x8,80,1152")
    assert not (tmp_path / "-").exists()
