"""The V2 protocol end to end: a real uvicorn server driven by the unmodified tritonclient[http] client;
every output compared with an in-process ``InferenceSession.run`` on the same input."""

from __future__ import annotations

import gzip

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.conftest import CNN_CLASSES, CNN_SHAPE, cnn_input, reference


def test_health_and_server_metadata(triton) -> None:
    assert triton.is_server_live()
    assert triton.is_server_ready()
    meta = triton.get_server_metadata()
    assert meta["name"] == "sepconv"
    assert "binary_tensor_data" in meta["extensions"]
    assert "model_repository" in meta["extensions"] and "statistics" in meta["extensions"]


def test_model_metadata_and_readiness(triton) -> None:
    meta = triton.get_model_metadata("tiny")
    assert meta["name"] == "tiny" and meta["versions"] == ["1"]
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, *CNN_SHAPE]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, CNN_CLASSES]}]
    assert meta["parameters"]["execution_providers"] == ["CPUExecutionProvider"]
    assert meta["parameters"]["onnx_metadata"]["note"] == "auto-completed config"
    assert triton.is_model_ready("tiny")
    assert triton.is_model_ready("tiny_cfg", "3")
    assert not triton.is_model_ready("tiny_cfg", "1")  # outside "latest 2"
    assert not triton.is_model_ready("no_such_model")
    fixed = triton.get_model_metadata("fixed")
    assert fixed["inputs"][0]["shape"] == [2, 3]  # no batch dimension


def test_config_auto_completed_and_from_pbtxt(triton) -> None:
    auto = triton.get_model_config("tiny")
    assert auto["max_batch_size"] == 8  # settings.default_max_batch_size: the ONNX batch dim is dynamic
    assert auto["input"][0]["name"] == "input" and auto["input"][0]["dims"] == list(CNN_SHAPE)
    assert auto["input"][0]["data_type"] == "TYPE_FP32"
    assert auto["output"][0]["dims"] == [CNN_CLASSES]
    assert auto["platform"] == "onnxruntime_onnx" and "dynamic_batching" in auto
    assert auto["parameters"]["execution_providers"]["string_value"] == "CPUExecutionProvider"
    assert auto["instance_group"][0]["kind"] == "KIND_CPU"  # what the session really got
    assert auto["instance_group"][0]["count"] == 2  # concurrent session.run calls
    cfg = triton.get_model_config("tiny_cfg")
    assert cfg["max_batch_size"] == 4
    assert cfg["dynamic_batching"]["max_queue_delay_microseconds"] == 2000
    assert cfg["dynamic_batching"]["preferred_batch_size"] == [2, 4]
    assert cfg["instance_group"][0]["kind"] == "KIND_CPU"
    assert cfg["version_policy"] == {"latest": {"num_versions": 2}}
    assert triton.get_model_config("tiny_cfg", "2")["name"] == "tiny_cfg"
    fixed = triton.get_model_config("fixed")
    assert fixed["max_batch_size"] == 0 and "dynamic_batching" not in fixed


@pytest.mark.parametrize("binary_in", [True, False])
@pytest.mark.parametrize("binary_out", [True, False])
def test_infer_matches_in_process_run(triton, server, binary_in: bool, binary_out: bool) -> None:
    x = cnn_input(1, seed=int(binary_in) * 2 + int(binary_out))
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary_in)
    out = httpclient.InferRequestedOutput("logits", binary_data=binary_out)
    result = triton.infer("tiny", [inp], outputs=[out], request_id=f"req-{binary_in}-{binary_out}")
    expected = reference(server, "tiny", "1", {"input": x})["logits"]
    np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-6, atol=1e-6)
    response = result.get_response()
    assert response["id"] == f"req-{binary_in}-{binary_out}"
    assert response["model_name"] == "tiny" and response["model_version"] == "1"


def test_async_infer(server) -> None:
    """The sync client's ``async_infer`` (greenlets over a connection pool): several requests in flight."""
    client = httpclient.InferenceServerClient(server.hostport, concurrency=4)
    try:
        xs = [cnn_input(1 + i % 2, seed=100 + i) for i in range(6)]
        pending = []
        for i, x in enumerate(xs):
            inp = httpclient.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=i % 2 == 0)
            pending.append(client.async_infer("tiny", [inp], request_id=str(i)))
        for i, (x, req) in enumerate(zip(xs, pending, strict=True)):
            result = req.get_result()
            assert result.get_response()["id"] == str(i)
            expected = reference(server, "tiny", "1", {"input": x})["logits"]
            np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-6, atol=1e-6)
    finally:
        client.close()


def test_batch_of_four_and_versions(triton, server) -> None:
    x = cnn_input(4, seed=7)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    latest = triton.infer("tiny_cfg", [inp])  # no outputs named -> all, binary
    assert latest.get_response()["model_version"] == "3"
    np.testing.assert_allclose(latest.as_numpy("logits"), reference(server, "tiny_cfg", "3", {"input": x})["logits"],
                               rtol=1e-6, atol=1e-6)
    v2 = triton.infer("tiny_cfg", [inp], model_version="2")
    np.testing.assert_allclose(v2.as_numpy("logits"), reference(server, "tiny_cfg", "2", {"input": x})["logits"],
                               rtol=1e-6, atol=1e-6)
    assert not np.allclose(v2.as_numpy("logits"), latest.as_numpy("logits"))
    with pytest.raises(InferenceServerException, match="max_batch_size"):
        big = httpclient.InferInput("input", [5, *CNN_SHAPE], "FP32")
        big.set_data_from_numpy(cnn_input(5))
        triton.infer("tiny_cfg", [big])
    with pytest.raises(InferenceServerException, match="not ready|unknown version"):
        triton.infer("tiny_cfg", [inp], model_version="1")


def test_selected_outputs_and_datatypes(triton, server) -> None:
    rng = np.random.default_rng(3)
    a = rng.standard_normal((3, 4)).astype(np.float32)
    b = rng.standard_normal((3, 4)).astype(np.float16)
    idx = rng.integers(-1000, 1000, (3, 2)).astype(np.int64)
    expected = reference(server, "multi_io", "1", {"a": a, "b": b, "idx": idx})
    for binary in (True, False):
        inputs = []
        for name, arr, dt in (("a", a, "FP32"), ("b", b, "FP16"), ("idx", idx, "INT64")):
            i = httpclient.InferInput(name, list(arr.shape), dt)
            i.set_data_from_numpy(arr, binary_data=binary)
            inputs.append(i)
        outs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("neg_half", "positive", "idx_plus")]
        result = triton.infer("multi_io", inputs, outputs=outs)
        names = [o["name"] for o in result.get_response()["outputs"]]
        assert names == ["neg_half", "positive", "idx_plus"]  # only what was asked, in that order
        assert result.as_numpy("double") is None
        np.testing.assert_array_equal(result.as_numpy("neg_half"), expected["neg_half"])
        assert result.as_numpy("neg_half").dtype == np.float16
        np.testing.assert_array_equal(result.as_numpy("positive"), expected["positive"])
        np.testing.assert_array_equal(result.as_numpy("idx_plus"), expected["idx_plus"])


def test_bytes_tensors(triton) -> None:
    text = np.array([[b"depthwise", b"pointwise"], ["sépàrable".encode(), b""]], dtype=object)
    for binary in (True, False):
        i = httpclient.InferInput("text", [2, 2], "BYTES")
        i.set_data_from_numpy(text, binary_data=binary)
        result = triton.infer("strings", [i], outputs=[httpclient.InferRequestedOutput("echo", binary_data=binary)])
        got = result.as_numpy("echo")
        assert [x if isinstance(x, bytes) else x.encode() for x in got.reshape(-1)] == list(text.reshape(-1))


def test_model_without_batch_dimension(triton) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    i = httpclient.InferInput("x", [2, 3], "FP32")
    i.set_data_from_numpy(x)
    np.testing.assert_array_equal(triton.infer("fixed", [i]).as_numpy("y"), x * 3)


def test_raw_http_json_nested_data_and_no_content_type(server) -> None:
    x = cnn_input(2, seed=11)
    expected = reference(server, "tiny", "1", {"input": x})["logits"]
    for data in (x.tolist(), x.reshape(-1).tolist()):  # nested or flat
        body = orjson.dumps({"id": 42, "inputs": [{"name": "input", "shape": [2, *CNN_SHAPE], "datatype": "FP32",
                                                   "data": data}]})
        r = httpx.post(server.url + "/v2/models/tiny/infer", content=body, headers={"content-type": ""})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["id"] == "42"
        logits = out["outputs"][0]
        assert logits["shape"] == [2, CNN_CLASSES] and logits["datatype"] == "FP32"
        np.testing.assert_allclose(np.array(logits["data"], np.float32).reshape(2, -1), expected, rtol=1e-6, atol=1e-6)


def test_binary_request_by_hand_and_binary_output_parameter(server) -> None:
    x = cnn_input(1, seed=5)
    header = orjson.dumps({"inputs": [{"name": "input", "shape": [1, *CNN_SHAPE], "datatype": "FP32",
                                       "parameters": {"binary_data_size": x.nbytes}}],
                           "parameters": {"binary_data_output": True}})
    r = httpx.post(server.url + "/v2/models/tiny/versions/1/infer", content=header + x.tobytes(),
                   headers={"Inference-Header-Content-Length": str(len(header))})
    assert r.status_code == 200, r.text
    hlen = int(r.headers["inference-header-content-length"])
    meta = orjson.loads(r.content[:hlen])
    size = meta["outputs"][0]["parameters"]["binary_data_size"]
    assert size == CNN_CLASSES * 4 and len(r.content) == hlen + size
    got = np.frombuffer(r.content[hlen:], np.float32).reshape(1, -1)
    np.testing.assert_allclose(got, reference(server, "tiny", "1", {"input": x})["logits"], rtol=1e-6, atol=1e-6)


def test_compression_both_ways(triton, server) -> None:
    x = cnn_input(4, seed=9)
    expected = reference(server, "tiny", "1", {"input": x})["logits"]
    for algorithm in ("gzip", "deflate"):
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=False)
        out = httpclient.InferRequestedOutput("logits", binary_data=False)
        result = triton.infer("tiny", [inp], outputs=[out], request_compression_algorithm=algorithm,
                              response_compression_algorithm=algorithm)
        np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-6, atol=1e-6)
    bomb = gzip.compress(b" " * (8 * 1024 * 1024))  # decompresses past the 4 MiB limit
    r = httpx.post(server.url + "/v2/models/tiny/infer", content=bomb, headers={"Content-Encoding": "gzip"})
    assert r.status_code == 413 and "limit" in r.json()["error"]


def test_statistics_count_requests_and_batches(triton) -> None:
    x = cnn_input(2, seed=1)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    before = triton.get_inference_statistics("tiny")["model_stats"][0]
    triton.infer("tiny", [inp])
    stats = triton.get_inference_statistics("tiny")["model_stats"][0]
    assert stats["name"] == "tiny" and stats["version"] == "1"
    assert stats["inference_stats"]["success"]["count"] == before["inference_stats"]["success"]["count"] + 1
    assert stats["inference_count"] >= before["inference_count"] + 2
    assert stats["execution_count"] >= 1 and stats["inference_stats"]["compute_infer"]["ns"] > 0
    sizes = {b["batch_size"] for b in stats["batch_stats"]}
    assert 2 in sizes
    every = triton.get_inference_statistics()["model_stats"]
    assert {"tiny", "tiny_cfg", "multi_io"} <= {s["name"] for s in every}
    one = triton.get_inference_statistics("tiny_cfg", "3")["model_stats"]
    assert [(s["name"], s["version"]) for s in one] == [("tiny_cfg", "3")]


def test_repository_index(triton) -> None:
    index = triton.get_model_repository_index()
    rows = {(r["name"], r.get("version")): r for r in index}
    assert rows[("tiny", "1")]["state"] == "READY"
    assert rows[("tiny_cfg", "3")]["state"] == "READY" and ("tiny_cfg", "1") not in rows
    assert rows[("strings", "1")]["state"] == "READY"


def test_logging_trace_and_shared_memory_calls(triton) -> None:
    settings = triton.get_log_settings()
    assert "log_info" in settings
    assert triton.update_log_settings({"log_info": True})["log_info"] is True
    assert triton.get_trace_settings()["trace_level"] == ["OFF"]
    with pytest.raises(InferenceServerException, match="not supported"):
        triton.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"]})
    assert triton.get_system_shared_memory_status() == []
    with pytest.raises(InferenceServerException, match="unable to open"):
        triton.register_system_shared_memory("region", "/sepconv-no-such-key", 16)
    assert triton.get_cuda_shared_memory_status() == []


def test_metrics_dashboard_and_openapi(triton, server) -> None:
    x = cnn_input(1)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    triton.infer("tiny", [inp])
    text = httpx.get(server.url + "/metrics").text
    assert 'sepconv_inference_requests_total{model="tiny",version="1"}' in text
    assert "sepconv_inference_batch_size_bucket" in text
    assert "sepconv_inference_queue_duration_seconds" in text
    assert 'sepconv_http_requests_total{method="POST",route="/v2/models/{model_name}/infer",status="200"}' in text
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/v2/repository/index" in page.text  # the dashboard reads the V2 routes
    assert httpx.get(server.url + "/openapi.json").json()["paths"]["/v2/models/{model_name}/infer"]


@pytest.mark.parametrize(("accept", "expected"), [
    ("gzip;q=0", None), ("gzip;q=0, deflate", "deflate"), ("deflate;q=0.5, gzip;q=0.9", "gzip"),
    ("gzip;q=0.2, deflate;q=0.8", "deflate"), ("*", "gzip"), ("*;q=0, deflate;q=0.1", "deflate"),
    ("identity", None), ("br", None), ("GZIP", "gzip"), ("gzip;q=bogus", None),
])
def test_response_compression_follows_accept_encoding_weights(server, accept: str, expected: str | None) -> None:
    """RFC 9110's q-values: ``gzip;q=0`` means "not gzip" (the body comes back as it is), the higher weight wins."""
    x = cnn_input(8, seed=3)
    # the id comes back: a response over COMPRESS_MIN_BYTES
    body = orjson.dumps({"id": "r" * 1500, "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                                       "data": x.reshape(-1).tolist()}]})
    with httpx.Client(headers={"Accept-Encoding": accept}) as client:
        r = client.post(server.url + "/v2/models/tiny/infer", content=body)
    assert r.status_code == 200, r.text
    assert r.headers.get("content-encoding") == expected
    np.testing.assert_allclose(np.asarray(r.json()["outputs"][0]["data"], np.float32).reshape(8, -1),
                               reference(server, "tiny", "1", {"input": x})["logits"], rtol=1e-6, atol=1e-6)
