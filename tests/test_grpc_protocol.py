"""Triton's GRPCInferenceService end to end: the real server (the same one the REST tests use, its gRPC port)
driven by the unmodified ``tritonclient[grpc]`` client, for every call it has; every output compared with an
in-process ``InferenceSession.run`` on the same input."""

from __future__ import annotations

import asyncio
import queue
from functools import partial

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from sepconv.service.app import create_app
from sepconv.service.grpc.generated import grpc_service_pb2 as pb
from sepconv.service.grpc.generated import grpc_service_pb2_grpc as pb_grpc
from sepconv.service.settings import Settings
from tests.conftest import CNN_CLASSES, CNN_SHAPE, cnn_input, reference
from tests.serving import free_port, running_server


def infer_input(name: str, arr: np.ndarray, datatype: str) -> grpcclient.InferInput:
    inp = grpcclient.InferInput(name, list(arr.shape), datatype)
    inp.set_data_from_numpy(arr)
    return inp


def test_health_and_server_metadata(triton_grpc) -> None:
    assert triton_grpc.is_server_live()
    assert triton_grpc.is_server_ready()
    meta = triton_grpc.get_server_metadata(as_json=True)
    assert meta["name"] == "sepconv"
    assert "model_repository" in meta["extensions"] and "statistics" in meta["extensions"]


def test_model_metadata_and_readiness_match_rest(triton_grpc, triton) -> None:
    meta = triton_grpc.get_model_metadata("tiny", as_json=True)
    assert meta["name"] == "tiny" and meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
    # protobuf's JSON mapping writes int64 as strings
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [str(d) for d in (-1, *CNN_SHAPE)]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": ["-1", str(CNN_CLASSES)]}]
    rest = triton.get_model_metadata("tiny_cfg", "3")
    message = triton_grpc.get_model_metadata("tiny_cfg", "3")
    assert message.name == rest["name"] and list(message.versions) == rest["versions"]
    assert [(t.name, t.datatype, list(t.shape)) for t in message.inputs] == [
        (t["name"], t["datatype"], t["shape"]) for t in rest["inputs"]]
    assert triton_grpc.is_model_ready("tiny")
    assert triton_grpc.is_model_ready("tiny_cfg", "3")
    assert not triton_grpc.is_model_ready("tiny_cfg", "1")  # outside "latest 2"
    assert not triton_grpc.is_model_ready("no_such_model")  # as Triton: not ready, not an error
    assert list(triton_grpc.get_model_metadata("fixed").inputs[0].shape) == [2, 3]


def test_config_matches_rest(triton_grpc, triton) -> None:
    for name in ("tiny", "tiny_cfg", "fixed", "multi_io"):
        rest = triton.get_model_config(name)
        cfg = triton_grpc.get_model_config(name).config
        assert cfg.name == rest["name"] == name
        assert cfg.max_batch_size == rest["max_batch_size"]
        assert cfg.platform == rest["platform"]
        assert [(t.name, list(t.dims)) for t in cfg.input] == [(t["name"], t["dims"]) for t in rest["input"]]
        assert [(t.name, list(t.dims)) for t in cfg.output] == [(t["name"], t["dims"]) for t in rest["output"]]
        assert cfg.HasField("dynamic_batching") == ("dynamic_batching" in rest)
        assert cfg.instance_group[0].count == rest["instance_group"][0]["count"]
    cfg = triton_grpc.get_model_config("tiny_cfg", as_json=True)["config"]
    assert cfg["dynamic_batching"]["max_queue_delay_microseconds"] == "2000"
    assert cfg["dynamic_batching"]["preferred_batch_size"] == [2, 4]
    assert cfg["input"][0]["data_type"] == "TYPE_FP32" and cfg["instance_group"][0]["kind"] == "KIND_CPU"
    assert cfg["version_policy"] == {"latest": {"num_versions": 2}}
    assert cfg["parameters"]["execution_providers"]["string_value"] == "CPUExecutionProvider"


@pytest.mark.parametrize("batch", [1, 3])
def test_infer_matches_in_process_run(triton_grpc, server, batch: int) -> None:
    x = cnn_input(batch, seed=batch)
    result = triton_grpc.infer("tiny", [infer_input("input", x, "FP32")], request_id=f"req-{batch}")
    expected = reference(server, "tiny", "1", {"input": x})["logits"]
    np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-5, atol=1e-6)
    response = result.get_response()
    assert response.id == f"req-{batch}" and response.model_name == "tiny" and response.model_version == "1"
    assert len(response.raw_output_contents) == 1  # outputs come raw, as Triton sends them


def test_infer_every_datatype_of_multi_io(triton_grpc, server) -> None:
    rng = np.random.default_rng(3)
    a = rng.standard_normal((2, 4)).astype(np.float32)
    b = rng.standard_normal((2, 4)).astype(np.float16)
    idx = rng.integers(-1000, 1000, (2, 2)).astype(np.int64)
    inputs = [infer_input("a", a, "FP32"), infer_input("b", b, "FP16"), infer_input("idx", idx, "INT64")]
    outputs = [grpcclient.InferRequestedOutput(n) for n in ("positive", "neg_half", "double", "idx_plus")]
    result = triton_grpc.infer("multi_io", inputs, outputs=outputs)
    expected = reference(server, "multi_io", "1", {"a": a, "b": b, "idx": idx})
    assert [o.name for o in result.get_response().outputs] == ["positive", "neg_half", "double", "idx_plus"]
    for name, want in expected.items():
        got = result.as_numpy(name)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    only = triton_grpc.infer("multi_io", inputs, outputs=[grpcclient.InferRequestedOutput("idx_plus")])
    assert [o.name for o in only.get_response().outputs] == ["idx_plus"]


def test_classification_extension_matches_rest(triton_grpc, triton, server) -> None:
    x = cnn_input(2, seed=11)
    out = grpcclient.InferRequestedOutput("logits", class_count=3)
    got = triton_grpc.infer("tiny", [infer_input("input", x, "FP32")], outputs=[out]).as_numpy("logits")
    rest_in = httpclient.InferInput("input", list(x.shape), "FP32")
    rest_in.set_data_from_numpy(x)
    rest = triton.infer("tiny", [rest_in], outputs=[httpclient.InferRequestedOutput("logits", class_count=3)])
    assert got.shape == (2, 3) and got.tolist() == rest.as_numpy("logits").tolist()
    logits = reference(server, "tiny", "1", {"input": x})["logits"]
    for row, strings in zip(logits, got, strict=True):
        assert [int(s.decode().split(":")[1]) for s in strings] == list(np.argsort(-row)[:3])


def test_infer_bytes_and_unbatched(triton_grpc, server) -> None:
    text = np.array([[b"hello", "w\u00f6rld".encode()], [b"", b"x" * 300]], dtype=object)
    got = triton_grpc.infer("strings", [infer_input("text", text, "BYTES")]).as_numpy("echo")
    assert got.tolist() == text.tolist()
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(triton_grpc.infer("fixed", [infer_input("x", x, "FP32")]).as_numpy("y"), x * 3)


def _typed_request(model: str, inputs: list[tuple[str, str, list[int], str, list]]) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    for name, datatype, shape, field, values in inputs:
        tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
        getattr(tensor.contents, field).extend(values)
    return request


def test_infer_typed_contents(server) -> None:
    """Data in InferTensorContents instead of raw_input_contents (what other clients send): same outputs."""
    x = cnn_input(2, seed=7)
    with grpc.insecure_channel(server.grpc_hostport) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(_typed_request("tiny", [("input", "FP32", list(x.shape), "fp32_contents",
                                                            x.reshape(-1).tolist())]))
        logits = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(2, CNN_CLASSES)
        np.testing.assert_allclose(logits, reference(server, "tiny", "1", {"input": x})["logits"], rtol=1e-5,
                                   atol=1e-6)
        response = stub.ModelInfer(_typed_request("strings", [("text", "BYTES", [1, 2], "bytes_contents",
                                                               [b"ab", b"\xc3\xa9"])]))
        assert response.outputs[0].datatype == "BYTES"
        assert response.raw_output_contents[0] == b"\x02\0\0\0ab\x02\0\0\0\xc3\xa9"


def test_async_infer_callback(triton_grpc, server) -> None:
    done: queue.Queue = queue.Queue()
    xs = [cnn_input(1, seed=20 + i) for i in range(4)]

    def callback(i: int, result, error) -> None:
        done.put((i, result, error))

    for i, x in enumerate(xs):
        triton_grpc.async_infer("tiny", [infer_input("input", x, "FP32")], partial(callback, i), request_id=str(i))
    results = [done.get(timeout=30) for _ in xs]
    for i, result, error in results:
        assert error is None
        assert result.get_response().id == str(i)
        np.testing.assert_allclose(result.as_numpy("logits"), reference(server, "tiny", "1", {"input": xs[i]})[
            "logits"], rtol=1e-5, atol=1e-6)


def test_stream_answers_in_order_and_errors_per_request(triton_grpc, server) -> None:
    got: queue.Queue = queue.Queue()
    triton_grpc.start_stream(callback=lambda result, error: got.put((result, error)))
    try:
        xs = [cnn_input(1 + i % 2, seed=40 + i) for i in range(12)]
        for i, x in enumerate(xs):
            if i == 5:  # a bad request in the middle: its own error, the stream goes on
                bad = grpcclient.InferInput("input", [1, 4, 4, 3], "FP32")
                bad.set_data_from_numpy(np.zeros((1, 4, 4, 3), np.float32))
                triton_grpc.async_stream_infer("tiny", [bad], request_id="bad")
            if i == 8:
                triton_grpc.async_stream_infer("no_such_model", [infer_input("input", x, "FP32")], request_id="nm")
            triton_grpc.async_stream_infer("tiny", [infer_input("input", x, "FP32")], request_id=f"s{i}")
        answers = [got.get(timeout=30) for _ in range(len(xs) + 2)]
    finally:
        triton_grpc.stop_stream()
    ids = []
    for result, error in answers:
        if error is not None:
            ids.append("error: " + str(error))
            continue
        ids.append(result.get_response().id)
    assert ids[:5] == [f"s{i}" for i in range(5)]
    assert "shape" in ids[5] and ids[6:9] == ["s5", "s6", "s7"]
    assert "unknown model" in ids[9] and ids[10:] == [f"s{i}" for i in range(8, 12)]
    ok = [r for r, e in answers if e is None]
    for i, result in enumerate(ok):
        want = reference(server, "tiny", "1", {"input": xs[i]})["logits"]
        np.testing.assert_allclose(result.as_numpy("logits"), want, rtol=1e-5, atol=1e-6)


def test_aio_client(server) -> None:
    x = cnn_input(1, seed=99)

    async def run() -> np.ndarray:
        client = grpcaio.InferenceServerClient(server.grpc_hostport)
        try:
            assert await client.is_model_ready("tiny")
            inp = grpcaio.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            return (await client.infer("tiny", [inp])).as_numpy("logits")
        finally:
            await client.close()

    np.testing.assert_allclose(asyncio.run(run()), reference(server, "tiny", "1", {"input": x})["logits"],
                               rtol=1e-5, atol=1e-6)


def test_statistics_count_grpc_requests(triton_grpc, triton) -> None:
    before = triton_grpc.get_inference_statistics("fixed", as_json=True)["model_stats"][0]
    x = np.ones((2, 3), np.float32)
    for _ in range(3):
        triton_grpc.infer("fixed", [infer_input("x", x, "FP32")])
    after = triton_grpc.get_inference_statistics("fixed", as_json=True)["model_stats"][0]
    success = lambda s: int(s["inference_stats"]["success"].get("count", 0))  # noqa: E731
    assert success(after) - success(before) == 3
    rest = triton.get_inference_statistics("fixed")["model_stats"][0]  # the same counters over REST
    assert rest["inference_stats"]["success"]["count"] == success(after)
    every = triton_grpc.get_inference_statistics()
    assert {s.name for s in every.model_stats} >= {"tiny", "tiny_cfg", "fixed", "multi_io", "strings"}
    assert {s.version for s in triton_grpc.get_inference_statistics("tiny_cfg").model_stats} == {"2", "3"}
    assert [s.version for s in triton_grpc.get_inference_statistics("tiny_cfg", "2").model_stats] == ["2"]


def test_log_settings(triton_grpc) -> None:
    settings = triton_grpc.get_log_settings(as_json=True)["settings"]
    assert settings["log_format"]["string_param"] == "default"
    before = settings["log_info"].get("bool_param", False)
    try:
        updated = triton_grpc.update_log_settings({"log_verbose_level": 1}, as_json=True)["settings"]
        assert updated["log_verbose_level"]["uint32_param"] == 1 and updated["log_info"]["bool_param"] is True
        with pytest.raises(InferenceServerException, match="unknown log setting"):
            triton_grpc.update_log_settings({"colour": True})
    finally:
        triton_grpc.update_log_settings({"log_verbose_level": 0, "log_info": before})


def test_repository_index_load_unload(fresh_repo) -> None:
    port = free_port()
    app = create_app(Settings(repo=fresh_repo, providers="cpu", access_log=False, model_control="explicit",
                              grpc_port=port))
    with running_server(app) as url:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        index = client.get_model_repository_index(as_json=True)["models"]
        assert {"name": "tiny", "version": "1", "state": "READY"} in index
        client.unload_model("tiny")
        assert not client.is_model_ready("tiny")
        assert httpx.get(url + "/v2/models/tiny/ready").status_code == 503  # one registry for both transports
        row = next(r for r in client.get_model_repository_index(as_json=True)["models"] if r["name"] == "tiny")
        assert row["state"] == "UNAVAILABLE" and row["reason"] == "unloaded"
        client.load_model("tiny")
        assert client.is_model_ready("tiny")
        client.load_model("tiny_cfg", config='{"max_batch_size": 2}')
        assert client.get_model_config("tiny_cfg").config.max_batch_size == 2
        ready = client.get_model_repository_index(as_json=True)["models"]
        assert all(r["state"] == "READY" for r in ready)
        with pytest.raises(InferenceServerException, match="no model directory"):
            client.load_model("never_there")
        client.close()


def test_unoffered_rpcs_answer_unimplemented(triton_grpc) -> None:
    for call in (triton_grpc.get_trace_settings,
                 lambda: triton_grpc.register_cuda_shared_memory("r", b"\0" * 64, 0, 16)):
        with pytest.raises(InferenceServerException) as info:
            call()
        assert info.value.status() in ("StatusCode.UNIMPLEMENTED", "StatusCode.INVALID_ARGUMENT")
        assert "not supported" in info.value.message()
    assert len(triton_grpc.get_cuda_shared_memory_status().regions) == 0
