"""``POST /v1/conv/{op}`` end to end: a real uvicorn server, real ONNX Runtime sessions.

The seeds' worked example exactly, Keras' parameter counts, the ``1/N + 1/Dk²`` cost ratio, NaN/Inf
propagation in both encodings, the session cache (filters are run-time inputs: new values, same session),
and the ``sepconv.client`` helpers.
"""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest

from sepconv import client
from sepconv.service.app import create_app
from sepconv.service.settings import Settings
from tests.fixtures import reference
from tests.numpy_reference import conv2d_nhwc, depthwise_conv2d_nhwc, max_rel_err, separable_conv2d_nhwc
from tests.serving import running_server


def _seed() -> dict:
    return reference.load("seed_conv_examples.json")


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory):
    repo = tmp_path_factory.mktemp("empty_repo")
    settings = Settings(repo=repo, providers="cpu", load_at_startup=False)
    with running_server(create_app(settings)) as base:
        yield base


@pytest.fixture(scope="module")
def http(url: str):
    with httpx.Client(base_url=url, timeout=60) as c:
        yield c


def b64(array: np.ndarray) -> dict:
    arr = np.ascontiguousarray(array, dtype="<f4")
    return {"shape": list(arr.shape), "datatype": "FP32", "b64": base64.b64encode(arr.tobytes()).decode()}


def unb64(value: dict) -> np.ndarray:
    assert value["datatype"] == "FP32"
    return np.frombuffer(base64.b64decode(value["b64"]), "<f4").reshape(value["shape"])


def post(http: httpx.Client, op: str, body: dict) -> dict:
    r = http.post(f"/v1/conv/{op}", json=body)
    assert r.status_code == 200, r.text
    return r.json()


# --------------------------------------------------------------------------------------------
# the seeds' worked example, exactly
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("op", ["conv2d", "depthwise_conv2d"])
def test_seed_worked_example_nested_lists(http: httpx.Client, op: str) -> None:
    seed = _seed()
    out = post(http, op, {"input": seed["input_nhwc"], "filter": seed["filter"], "strides": seed["strides"],
                          "padding": seed["padding"]})
    expected = seed[f"{op}_expected"]
    assert out["output"] == expected  # exact, not approximately
    assert out["shape"] == list(np.shape(expected))
    assert out["params"] == 36  # 3*3*2*2, no bias
    assert out["provider"] == "CPUExecutionProvider"
    assert out["elapsed_ms"] >= 0


@pytest.mark.parametrize("op", ["conv2d", "depthwise_conv2d"])
def test_seed_worked_example_b64(http: httpx.Client, op: str) -> None:
    seed = _seed()
    x = np.array(seed["input_nhwc"], np.float32)
    f = np.array(seed["filter"], np.float32)
    out = post(http, op, {"input": b64(x), "filter": b64(f), "strides": [1, 1, 1, 1], "padding": "VALID"})
    assert set(out["output"]) == {"shape", "datatype", "b64"}  # the input's encoding
    np.testing.assert_array_equal(unb64(out["output"]), np.array(seed[f"{op}_expected"], np.float32))


def test_seed_through_client(url: str) -> None:
    seed = _seed()
    x = np.array(seed["input_nhwc"], np.float32)
    f = np.array(seed["filter"], np.float32)
    y = client.depthwise_conv2d(url, x, f, strides=[1, 1, 1, 1], padding="VALID")
    assert isinstance(y, np.ndarray) and y.dtype == np.float32
    np.testing.assert_array_equal(y, np.array(seed["depthwise_conv2d_expected"], np.float32))
    y = client.conv2d(url, x, f, strides=1, padding="VALID")
    np.testing.assert_array_equal(y, np.array(seed["conv2d_expected"], np.float32))


# --------------------------------------------------------------------------------------------
# accounting: Keras' params, the papers' cost ratio
# --------------------------------------------------------------------------------------------
def _keras_seed_bodies(hw: int, rng: np.random.Generator, encode) -> dict[str, dict]:
    """The seed article's three Keras layers on a hw x hw x 10 input: 32 filters, 3x3, SAME, ReLU, bias."""
    x = rng.standard_normal((1, hw, hw, 10)).astype(np.float32)
    common = {"input": encode(x), "padding": "SAME", "activation": "relu"}
    return {
        "conv2d": {**common, "filter": encode(rng.standard_normal((3, 3, 10, 32))),
                   "bias": encode(rng.standard_normal(32))},
        "depthwise_conv2d": {**common, "filter": encode(rng.standard_normal((3, 3, 10, 1))),
                             "bias": encode(rng.standard_normal(10))},
        "separable_conv2d": {**common, "depthwise_filter": encode(rng.standard_normal((3, 3, 10, 1))),
                             "pointwise_filter": encode(rng.standard_normal((1, 1, 10, 32))),
                             "bias": encode(rng.standard_normal(32))},
    }


KERAS_PARAMS = {"conv2d": 2912, "depthwise_conv2d": 100, "separable_conv2d": 442}


def test_keras_param_counts_small_spatial(http: httpx.Client) -> None:
    rng = np.random.default_rng(3)
    for op, body in _keras_seed_bodies(6, rng, lambda a: np.asarray(a, np.float32).tolist()).items():
        assert post(http, op, body)["params"] == KERAS_PARAMS[op], op


def test_keras_param_counts_and_macs_224(http: httpx.Client) -> None:
    """The seed's exact 224x224x10 case (b64 transport), with multiply-adds and ratios."""
    rng = np.random.default_rng(4)
    out = {op: post(http, op, body) for op, body in _keras_seed_bodies(224, rng, b64).items()}
    hw = 224 * 224
    assert {op: o["params"] for op, o in out.items()} == KERAS_PARAMS
    assert out["conv2d"]["macs"] == hw * 9 * 10 * 32
    assert out["conv2d"]["cost_ratio"] == 1.0
    assert out["depthwise_conv2d"]["macs"] == hw * 9 * 10
    assert out["depthwise_conv2d"]["standard_conv_macs"] == hw * 9 * 10 * 10
    assert out["separable_conv2d"]["macs"] == hw * 9 * 10 + hw * 10 * 32
    assert out["separable_conv2d"]["standard_conv_macs"] == out["conv2d"]["macs"]
    assert out["separable_conv2d"]["cost_ratio"] == pytest.approx(1 / 32 + 1 / 9, rel=1e-12)
    for o in out.values():
        assert o["shape"][:3] == [1, 224, 224]
        assert o["cost_ratio"] == pytest.approx(o["macs"] / o["standard_conv_macs"], rel=1e-12)
        assert np.all(unb64(o["output"]) >= 0)  # relu


@pytest.mark.parametrize(("n_out", "dk", "hw"), [(1, 1, 3), (8, 3, 7), (16, 3, 8), (5, 5, 9), (32, 7, 6), (3, 2, 5)])
def test_separable_cost_ratio_is_1_over_n_plus_1_over_dk2(http: httpx.Client, n_out: int, dk: int, hw: int) -> None:
    rng = np.random.default_rng(n_out * 100 + dk)
    m = 4
    body = {"input": rng.standard_normal((1, hw, hw, m)).tolist(),
            "depthwise_filter": rng.standard_normal((dk, dk, m, 1)).tolist(),
            "pointwise_filter": rng.standard_normal((1, 1, m, n_out)).tolist(),
            "strides": 1, "padding": "SAME"}
    out = post(http, "separable_conv2d", body)
    assert out["cost_ratio"] == pytest.approx(1 / n_out + 1 / dk**2, rel=1e-12)
    assert out["macs"] == hw * hw * (dk * dk * m + m * n_out)
    assert out["standard_conv_macs"] == hw * hw * dk * dk * m * n_out


def test_macs_are_per_image_and_batch_macs_for_the_batch(http: httpx.Client) -> None:
    rng = np.random.default_rng(5)
    body = {"input": rng.standard_normal((3, 5, 5, 2)).tolist(), "filter": rng.standard_normal((3, 3, 2, 4)).tolist(),
            "padding": "SAME"}
    out = post(http, "conv2d", body)
    assert out["macs"] == 25 * 9 * 2 * 4
    assert out["batch_macs"] == 3 * out["macs"]


# --------------------------------------------------------------------------------------------
# NaN / Inf: accepted and propagated, as TF does
# --------------------------------------------------------------------------------------------
def test_nan_and_inf_propagate_in_nested_lists(http: httpx.Client) -> None:
    # bare JSON tokens (what Python's json.dumps writes), the string forms, and null
    raw = ('{"input": [[[[NaN, 1.0, "Infinity"]], [[2.0, null, 3.0]]]], '
           '"filter": [[[[1.0], [-Infinity], [1.0]]]], "padding": "VALID"}')
    r = http.post("/v1/conv/depthwise_conv2d", content=raw.encode(), headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    out = r.json()["output"]
    # channel 0: NaN*1, 2*1; channel 1: 1*-inf, NaN*-inf; channel 2: inf*1, 3*1
    assert out == [[[["NaN", "-Infinity", "Infinity"]], [[2.0, "NaN", 3.0]]]]
    # and a client can read it back with numpy
    arr = np.array(out, dtype=np.float32)
    assert np.isnan(arr[0, 0, 0, 0]) and arr[0, 0, 0, 1] == -np.inf and arr[0, 1, 0, 2] == 3.0


def test_nan_and_inf_propagate_in_b64(http: httpx.Client) -> None:
    x = np.ones((1, 3, 3, 1), np.float32)
    x[0, 0, 0, 0] = np.nan
    x[0, 2, 2, 0] = np.inf
    f = np.ones((1, 1, 1, 1), np.float32)
    y = unb64(post(http, "conv2d", {"input": b64(x), "filter": b64(f)})["output"])
    assert np.isnan(y[0, 0, 0, 0]) and y[0, 2, 2, 0] == np.inf and y[0, 1, 1, 0] == 1.0


# --------------------------------------------------------------------------------------------
# the session cache: run-time filters, one session per signature
# --------------------------------------------------------------------------------------------
def test_identical_shapes_reuse_the_session(http: httpx.Client) -> None:
    rng = np.random.default_rng(6)
    shape_x, shape_f = (1, 9, 7, 3), (3, 3, 3, 2)
    args = {"strides": [2, 1], "padding": "SAME", "dilations": 1}
    before = http.get("/v1/conv/cache").json()
    x1, f1 = rng.standard_normal(shape_x), rng.standard_normal(shape_f)
    first = post(http, "depthwise_conv2d", {"input": b64(x1), "filter": b64(f1), **args})
    mid = http.get("/v1/conv/cache").json()
    assert mid["builds"] == before["builds"] + 1 and not first["cached"]

    # new values, same shapes: no new session, and the new filter is really used
    x2, f2 = rng.standard_normal(shape_x), rng.standard_normal(shape_f)
    second = post(http, "depthwise_conv2d", {"input": b64(x2), "filter": b64(f2), **args})
    after = http.get("/v1/conv/cache").json()
    assert second["cached"] is True
    assert after["builds"] == mid["builds"]
    assert after["hits"] == mid["hits"] + 1
    ref = depthwise_conv2d_nhwc(x2.astype(np.float32), f2.astype(np.float32), (2, 1), "SAME")
    assert max_rel_err(unb64(second["output"]), ref) < 1e-5

    # another batch size is the same graph (symbolic batch); SAME spelled as explicit pads too
    x3 = rng.standard_normal((4, *shape_x[1:]))
    third = post(http, "depthwise_conv2d", {"input": b64(x3), "filter": b64(f2), **args})
    assert third["cached"] is True and third["shape"][0] == 4
    assert http.get("/v1/conv/cache").json()["builds"] == mid["builds"]

    # a different shape is a new session
    post(http, "depthwise_conv2d", {"input": b64(x1[:, :8]), "filter": b64(f1), **args})
    assert http.get("/v1/conv/cache").json()["builds"] == mid["builds"] + 1


def test_cache_stats_shape(http: httpx.Client) -> None:
    stats = http.get("/v1/conv/cache").json()
    assert set(stats) >= {"size", "capacity", "hits", "misses", "builds", "evictions"}
    assert stats["capacity"] == 64 and 0 < stats["size"] <= stats["capacity"]


# --------------------------------------------------------------------------------------------
# the client helper
# --------------------------------------------------------------------------------------------
def test_client_separable_nchw_bias_relu6(url: str) -> None:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 6, 5, 3)).astype(np.float32)
    dw = rng.standard_normal((3, 3, 3, 2)).astype(np.float32)
    pw = rng.standard_normal((1, 1, 6, 4)).astype(np.float32)
    bias = rng.standard_normal(4).astype(np.float32)
    y = client.separable_conv2d(url, x.transpose(0, 3, 1, 2), dw, pw, strides=[1, 1, 1, 1], padding="SAME",
                                data_format="NCHW", dilations=[2, 2], bias=bias, activation="relu6")
    ref = np.clip(separable_conv2d_nhwc(x, dw, pw, (1, 1), "SAME", (2, 2)) + bias, 0, 6)
    assert y.shape == (2, 4, 6, 5)
    assert max_rel_err(y.transpose(0, 2, 3, 1), ref) < 1e-5


def test_client_full_result_and_errors(url: str) -> None:
    rng = np.random.default_rng(8)
    x = rng.standard_normal((1, 4, 4, 2)).astype(np.float32)
    f = rng.standard_normal((2, 2, 2, 3)).astype(np.float32)
    result = client.call(url, "conv2d", {"input": x, "filter": f}, padding="VALID", strides=[1, 1])
    assert max_rel_err(result.output, conv2d_nhwc(x, f, (1, 1), "VALID")) < 1e-5
    assert result.info["params"] == 24 and result.info["shape"] == [1, 3, 3, 3]
    with pytest.raises(client.ConvError) as err:
        client.depthwise_conv2d(url, x, f[:, :, :1], strides=1, padding="SAME")
    assert err.value.status == 422 and "in_channels" in err.value.message


def test_provider_is_what_the_session_really_runs_on(http: httpx.Client) -> None:
    import onnxruntime as ort  # noqa: PLC0415

    body = {"input": np.ones((1, 4, 4, 1)).tolist(), "filter": np.ones((1, 1, 1, 1)).tolist()}
    assert post(http, "conv2d", {**body, "provider": "cpu"})["provider"] == "CPUExecutionProvider"
    got = post(http, "conv2d", {**body, "provider": "cuda"})["provider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert got == "CPUExecutionProvider"  # the fallback is reported, not the wish
    else:
        assert got in ("CUDAExecutionProvider", "CPUExecutionProvider")
