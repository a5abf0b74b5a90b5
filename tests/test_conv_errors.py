"""Bad ``/v1/conv`` requests: every kind gets a 4xx ``{"error": ...}`` a TF user understands, requests over
the limits get 413 before any decoding or session building, and the server keeps answering."""

from __future__ import annotations

import base64
import json

import httpx
import numpy as np
import pytest

from sepconv.service.app import create_app
from sepconv.service.conv.request import read
from sepconv.service.errors import InvalidInput, NotFound, TooLarge, Unprocessable
from sepconv.service.settings import Settings
from tests.serving import running_server


def b64(array, shape=None, datatype="FP32") -> dict:
    arr = np.ascontiguousarray(array, "<f4")
    return {"shape": list(arr.shape if shape is None else shape), "datatype": datatype,
            "b64": base64.b64encode(arr.tobytes()).decode()}


X = np.ones((1, 5, 5, 2)).tolist()
F = np.ones((3, 3, 2, 1)).tolist()
DW = np.ones((3, 3, 2, 2)).tolist()
PW = np.ones((1, 1, 4, 3)).tolist()
F1 = np.ones((1, 1, 2, 1)).tolist()

# (op, body, status, words the message must contain)
BAD_REQUESTS = [
    ("conv3d", {"input": X, "filter": F}, 404, "unknown convolution op"),
    ("conv2d", b"{not json", 400, "malformed JSON"),
    ("conv2d", b"", 400, "empty body"),
    ("conv2d", [1, 2, 3], 400, "JSON object"),
    ("conv2d", {"input": X}, 422, "needs 'filter'"),
    ("conv2d", {"input": [[[[1.0, True]] * 5] * 5], "filter": F}, 400, "bool values"),
    ("conv2d", {"input": X, "filter": [[[[1.0], [False]]] * 3] * 3}, 400, "bool values"),
    ("conv2d", {"input": [[[[True, 1.0]] * 5] * 5], "filter": F}, 400, "bool values"),
    ("separable_conv2d", {"input": X, "filter": F}, 422, "takes depthwise_filter and pointwise_filter"),
    ("conv2d", {"input": X, "filter": F, "stride": 2}, 422, "unknown field(s) stride"),
    ("conv2d", {"input": np.ones((5, 5, 2)).tolist(), "filter": F}, 422, "must be 4-D"),
    ("conv2d", {"input": X, "filter": np.ones((3, 3, 2)).tolist()}, 422, "filter must be 4-D"),
    ("conv2d", {"input": X, "filter": np.ones((3, 3, 3, 4)).tolist()}, 422, "in_channels 3"),
    ("depthwise_conv2d", {"input": X, "filter": np.ones((3, 3, 1, 1)).tolist()}, 422, "input has 2 channels"),
    ("separable_conv2d", {"input": X, "depthwise_filter": DW, "pointwise_filter": np.ones((1, 1, 2, 3)).tolist()},
     422, "depthwise stage outputs"),
    ("separable_conv2d", {"input": X, "depthwise_filter": DW, "pointwise_filter": np.ones((3, 3, 4, 3)).tolist()},
     422, "pointwise_filter must be [1, 1"),
    ("depthwise_conv2d", {"input": X, "filter": F, "strides": 2, "dilations": 2}, 422,
     "TensorFlow requires all strides to be 1"),
    ("separable_conv2d", {"input": X, "depthwise_filter": DW, "pointwise_filter": PW, "strides": [1, 2, 2, 1],
                          "rate": [2, 2]}, 422, "TensorFlow requires all strides to be 1"),
    ("conv2d", {"input": np.ones((1, 2, 2, 2)).tolist(), "filter": F, "padding": "VALID"}, 422,
     "larger than the padded input"),
    ("depthwise_conv2d", {"input": X, "filter": F, "padding": "VALID", "dilations": 3}, 422,
     "dilated to 7"),
    ("depthwise_conv2d", {"input": X, "filter": np.ones((3, 3, 2, 0)).tolist()}, 422, "channel_multiplier 0"),
    ("depthwise_conv2d", {"input": X, "filter": b64(np.ones((3, 3, 2, 0)))}, 422, "channel_multiplier 0"),
    ("conv2d", {"input": [[[[1, 2], [3, 4]], [[5, 6]]]], "filter": F1}, 400, "ragged"),
    ("conv2d", {"input": [[[[1, 2], [3]]]], "filter": F1}, 400, "ragged"),
    ("conv2d", {"input": [[[["a", 2]]]], "filter": np.ones((1, 1, 2, 1)).tolist()}, 400, "must be numbers"),
    ("conv2d", {"input": [[[[{"x": 1}, 2]]]], "filter": F}, 400, "expected numbers"),
    ("conv2d", {"input": 3.0, "filter": F}, 400, "nested list"),
    ("conv2d", {"input": b64(np.ones((1, 5, 5, 2)), shape=[1, 5, 6, 2]), "filter": F}, 400,
     "FP32 needs 240 bytes"),
    ("conv2d", {"input": {**b64(np.ones((1, 5, 5, 2))), "b64": "!!!!" * 67}, "filter": F}, 400,
     "not valid base64"),
    ("conv2d", {"input": b64(np.ones((1, 5, 5, 2)), datatype="FP64"), "filter": F}, 422, "FP64"),
    ("conv2d", {"input": {"shape": [1, 5, 5, 2], "data": []}, "filter": F}, 400, "missing b64"),
    ("conv2d", {"input": {"shape": [1, -5, 5, 2], "b64": ""}, "filter": F}, 400, "non-negative ints"),
    ("conv2d", {"input": X, "filter": F, "padding": "FULL"}, 422, "padding must be 'SAME', 'VALID'"),
    ("conv2d", {"input": X, "filter": F, "padding": [[1, 1], [1, 1], [1, 1], [0, 0]]}, 422,
     "batch and channel pads must be [0, 0]"),
    ("conv2d", {"input": X, "filter": F, "strides": 0}, 422, "strides must be >= 1"),
    ("conv2d", {"input": X, "filter": F, "strides": [2, 1, 1, 1]}, 422, "batch and channel entries must be 1"),
    ("conv2d", {"input": X, "filter": F, "strides": [1, 2, 3]}, 422, "1, 2 or 4 entries"),
    ("conv2d", {"input": X, "filter": F, "dilations": [1, 1], "rate": [2, 2]}, 422, "disagree"),
    ("conv2d", {"input": X, "filter": F, "data_format": "NWHC"}, 422, "data_format must be"),
    ("conv2d", {"input": X, "filter": F, "activation": "tanh"}, 422, "activation must be one of"),
    ("conv2d", {"input": X, "filter": F, "bias": [1.0, 2.0]}, 422, "bias must have shape [1]"),
    ("depthwise_conv2d", {"input": X, "filter": DW, "bias": [1.0, 2.0]}, 422, "bias must have shape [4]"),
    ("conv2d", {"input": X, "filter": F, "provider": "tpu"}, 400, "unknown execution provider"),
    ("conv2d", {"input": b64(np.ones((0, 5, 5, 2))), "filter": F}, 422, "empty dimension"),
]


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory):
    settings = Settings(repo=tmp_path_factory.mktemp("empty_repo"), providers="cpu", load_at_startup=False)
    with running_server(create_app(settings)) as url, httpx.Client(base_url=url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory):
    """A server with small limits and a 2-entry cache."""
    settings = Settings(repo=tmp_path_factory.mktemp("empty_repo"), providers="cpu", load_at_startup=False,
                        conv_max_elements=4096, conv_max_macs=100_000, max_request_bytes=200_000, conv_cache_size=2)
    with running_server(create_app(settings)) as url, httpx.Client(base_url=url, timeout=60) as c:
        yield c


def _send(http: httpx.Client, op: str, body) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http.post(f"/v1/conv/{op}", content=content, headers={"content-type": "application/json"})


def _still_serving(http: httpx.Client) -> None:
    assert http.get("/v2/health/live").status_code == 200
    r = _send(http, "conv2d", {"input": X, "filter": F, "padding": "SAME"})
    assert r.status_code == 200, r.text
    assert r.json()["output"][0][2][2] == [18.0]  # 3x3 window of ones over 2 channels


@pytest.mark.parametrize(("op", "body", "status", "words"), BAD_REQUESTS,
                         ids=[f"{i}-{case[3][:30]}" for i, case in enumerate(BAD_REQUESTS)])
def test_bad_request_gets_clear_4xx(http: httpx.Client, op: str, body, status: int, words: str) -> None:
    r = _send(http, op, body)
    assert r.status_code == status, r.text
    payload = r.json()
    assert set(payload) == {"error"}
    assert words in payload["error"], payload["error"]


def test_server_answers_after_bad_requests(http: httpx.Client) -> None:
    for op, body, _, _ in BAD_REQUESTS:
        _send(http, op, body)
    _still_serving(http)


def test_unequal_strides_are_computed(http: httpx.Client) -> None:
    """TF's depthwise kernel only does equal strides; the service computes the defined result instead."""
    x = np.arange(1 * 6 * 6 * 1, dtype=np.float32).reshape(1, 6, 6, 1)
    r = _send(http, "depthwise_conv2d", {"input": x.tolist(), "filter": [[[[1.0]]]], "strides": [1, 3]})
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(np.array(r.json()["output"]), x[:, :, ::3, :])


# --------------------------------------------------------------------------------------------
# limits: 413, decided from declared shapes before decoding, allocating or building a session
# --------------------------------------------------------------------------------------------
def _builds(http: httpx.Client) -> int:
    return http.get("/v1/conv/cache").json()["builds"]


def test_declared_shape_over_the_element_limit_is_refused_before_decoding(tight: httpx.Client) -> None:
    before = _builds(tight)
    # the b64 payload is empty: decoding it would be a 400, so the 413 proves the limit came first
    huge = {"shape": [1, 100_000, 100_000, 2], "datatype": "FP32", "b64": ""}
    r = _send(tight, "conv2d", {"input": huge, "filter": F})
    assert r.status_code == 413, r.text
    assert "20000000000 elements" in r.json()["error"] and "SEPCONV_CONV_MAX_ELEMENTS" in r.json()["error"]
    huge_filter = {"shape": [3, 3, 2, 1_000_000], "datatype": "FP32", "b64": "AAAA"}
    r = _send(tight, "conv2d", {"input": X, "filter": huge_filter})
    assert r.status_code == 413 and "filter has 18000000 elements" in r.json()["error"]
    assert _builds(tight) == before


def test_output_over_the_element_limit_is_refused_without_a_session(tight: httpx.Client) -> None:
    before = _builds(tight)
    x = b64(np.ones((1, 64, 64, 1)))  # 4096 elements: allowed
    r = _send(tight, "conv2d", {"input": x, "filter": b64(np.ones((1, 1, 1, 64)))})  # output 262144
    assert r.status_code == 413, r.text
    assert "output would have 262144 elements" in r.json()["error"]
    # separable: the intermediate depthwise output counts too
    r = _send(tight, "separable_conv2d", {"input": x, "depthwise_filter": b64(np.ones((1, 1, 1, 3))),
                                          "pointwise_filter": b64(np.ones((1, 1, 3, 1)))})
    assert r.status_code == 413 and "12288 elements" in r.json()["error"], r.text
    assert _builds(tight) == before


def test_macs_over_the_limit_are_refused_without_a_session(tight: httpx.Client) -> None:
    before = _builds(tight)
    x = b64(np.ones((1, 16, 16, 4)))
    r = _send(tight, "conv2d", {"input": x, "filter": b64(np.ones((5, 5, 4, 16))), "padding": "SAME"})
    assert r.status_code == 413, r.text
    assert "409600 multiply-adds" in r.json()["error"] and "SEPCONV_CONV_MAX_MACS" in r.json()["error"]
    assert _builds(tight) == before


def test_the_mac_limit_counts_the_whole_batch(tight: httpx.Client) -> None:
    f = b64(np.ones((3, 3, 4, 4)))
    ok = _send(tight, "conv2d", {"input": b64(np.ones((1, 8, 8, 4))), "filter": f, "padding": "SAME"})
    assert ok.status_code == 200, ok.text  # 9216 MACs
    r = _send(tight, "conv2d", {"input": b64(np.ones((16, 8, 8, 4))), "filter": f, "padding": "SAME"})
    assert r.status_code == 413 and "batch 16" in r.json()["error"], r.text


def test_body_over_the_byte_limit(tight: httpx.Client) -> None:
    body = {"input": X, "filter": F, "name": "x" * 300_000}
    r = _send(tight, "conv2d", body)
    assert r.status_code == 413, r.text
    assert "error" in r.json()


def test_tight_server_still_answers_and_evicts(tight: httpx.Client) -> None:
    stats = tight.get("/v1/conv/cache").json()
    assert stats["capacity"] == 2
    for hw in (3, 4, 5):
        r = _send(tight, "depthwise_conv2d", {"input": np.ones((1, hw, hw, 2)).tolist(), "filter": F,
                                              "padding": "SAME"})
        assert r.status_code == 200, r.text
    after = tight.get("/v1/conv/cache").json()
    assert after["size"] == 2 and after["evictions"] >= stats["evictions"] + 1
    _still_serving(tight)


WEIRD_VALUES = [None, True, -1, 0, 2**70, 1.5, "", "SAME", "x" * 50, [], [[]], [1, 2, 3], [[1, 2], [3]], {},
                {"shape": [1], "b64": "AAAA"}, {"shape": "x", "b64": 1}, [None], ["NaN"], [[[[True]]]]]


def test_no_field_value_makes_a_500(http: httpx.Client) -> None:
    """Every field of a valid body replaced by odd JSON values: always a 200 or a clear 4xx, never a 500."""
    base = {"input": X, "depthwise_filter": DW, "pointwise_filter": PW, "bias": [0.0, 0.0, 0.0], "strides": 1,
            "padding": "SAME", "dilations": 1, "data_format": "NHWC", "activation": "relu", "provider": "cpu"}
    for name in base:
        for value in WEIRD_VALUES:
            r = _send(http, "separable_conv2d", {**base, name: value})
            assert r.status_code in (200, 400, 404, 413, 422), (name, value, r.status_code, r.text)
            if r.status_code != 200:
                assert r.json()["error"], (name, value)
    _still_serving(http)


def test_b64_without_padding_or_with_line_breaks_is_accepted(http: httpx.Client) -> None:
    x = np.arange(1 * 5 * 5 * 2, dtype="<f4").reshape(1, 5, 5, 2)
    raw = x.tobytes()
    for text in (base64.b64encode(raw).decode().rstrip("="), base64.encodebytes(raw).decode()):
        body = {"input": {"shape": [1, 5, 5, 2], "datatype": "FP32", "b64": text}, "filter": F1}
        r = _send(http, "conv2d", body)
        assert r.status_code == 200, r.text
        out = r.json()["output"]
        y = np.frombuffer(base64.b64decode(out["b64"]), "<f4").reshape(out["shape"])
        np.testing.assert_array_equal(y[..., 0], x.sum(axis=-1))


def test_a_body_over_max_request_bytes_is_413_declared_or_streamed(tight: httpx.Client) -> None:
    big = b"[" + b"0," * 150_000 + b"0]"  # 300 kB > max_request_bytes (200 kB)
    r = _send(tight, "conv2d", big)  # Content-Length declared: refused before reading
    assert r.status_code == 413 and "200000 bytes" in r.json()["error"], r.text

    def chunks():  # no Content-Length (chunked): refused once the stream passes the limit
        for i in range(0, len(big), 16_384):
            yield big[i:i + 16_384]

    r = tight.post("/v1/conv/conv2d", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "200000 bytes" in r.json()["error"], r.text
    _still_serving(tight)


def test_the_request_layer_raises_typed_errors_cheapest_first() -> None:
    """Without a server: ``read`` gives the domain error the REST table maps to the statuses above."""
    settings = Settings(providers="cpu", load_at_startup=False, conv_max_list_elements=100, conv_max_elements=4096)
    with pytest.raises(NotFound):
        read("conv3d", b"{not json", settings)  # the op before anything else
    with pytest.raises(TooLarge, match="SEPCONV_CONV_MAX_LIST_ELEMENTS"):
        read("conv2d", b"[" + b"0," * 200 + b"{not json", settings)  # counted before parsing
    with pytest.raises(InvalidInput, match="malformed JSON"):
        read("conv2d", b"{not json", settings)
    with pytest.raises(Unprocessable, match="needs 'filter'"):
        read("conv2d", json.dumps({"input": X}).encode(), settings)
    huge = {"shape": [1, 100, 100, 2], "datatype": "FP32", "b64": ""}  # declared size, never decoded
    with pytest.raises(TooLarge, match="input has 20000 elements"):
        read("conv2d", json.dumps({"input": huge, "filter": F}).encode(), settings)
    call = read("conv2d", b'{"input": [[[[1, NaN]]]], "filter": [[[[1], [1]]]]}', settings)  # NaN token accepted
    assert call.batch == 1 and call.key.chw == (2, 1, 1) and call.key.providers == ("CPUExecutionProvider",)
