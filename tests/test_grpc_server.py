"""The gRPC transport beside REST in one server: both transports' requests on one dynamically batched model batch
together with no cross-talk and count in one set of statistics; ``sepconv serve --grpc-port`` / SEPCONV_GRPC_PORT;
the committed generated code is what scripts/gen-grpc makes; the codec for every datatype."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio

from sepconv.service.app import create_app
from sepconv.service.errors import InvalidInput
from sepconv.service.grpc import codec
from sepconv.service.grpc.generated import grpc_service_pb2 as pb
from sepconv.service.settings import Settings
from tests.conftest import CNN_SHAPE, Server, build_cnn
from tests.serving import free_port, running_server, wait_ready

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = 16  # per transport
REQUESTS = 5


MIXED_CFG = """
name: "mixed"
max_batch_size: 4
dynamic_batching { max_queue_delay_microseconds: 20000 }
instance_group [ { kind: KIND_CPU count: 1 } ]
"""


@pytest.fixture(scope="module")
def mixed_server(tmp_path_factory: pytest.TempPathFactory):
    """A server of its own (REST + gRPC) for one dynamically batched model with a queue delay long enough to
    coalesce clients whose requests come from one busy client process."""
    repo = tmp_path_factory.mktemp("mixed")
    build_cnn(repo / "mixed" / "1" / "model.onnx", seed=8)
    (repo / "mixed" / "config.pbtxt").write_text(MIXED_CFG)
    port = free_port()
    app = create_app(Settings(repo=repo, providers="cpu", access_log=False, grpc_port=port))
    with running_server(app) as url:
        yield Server(url=url, app=app, repo=repo, grpc_port=port)


def test_rest_and_grpc_clients_share_the_batcher_with_no_cross_talk(mixed_server: Server) -> None:
    server, model = mixed_server, "mixed"
    sess = ort.InferenceSession(str(server.repo / model / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    plans = {}
    for kind in ("rest", "grpc"):
        for c in range(CLIENTS):
            for r in range(REQUESTS):
                batch = 1 + (c + r) % 2
                seed = hash((kind, c, r)) % 2**32
                x = np.random.default_rng(seed).standard_normal((batch, *CNN_SHAPE)).astype(np.float32)
                plans[(kind, c, r)] = (x, sess.run(["logits"], {"input": x})[0])
    stats = httpclient.InferenceServerClient(server.hostport)
    before = stats.get_inference_statistics(model, "1")["model_stats"][0]
    requests_before = _metric(server, 'sepconv_inference_requests_total{model="mixed",version="1"}')

    async def rest_client(c: int) -> list:
        client = httpaio.InferenceServerClient(server.hostport)
        got = []
        try:
            for r in range(REQUESTS):
                x, _ = plans[("rest", c, r)]
                inp = httpaio.InferInput("input", list(x.shape), "FP32")
                inp.set_data_from_numpy(x)
                res = await client.infer(model, [inp], request_id=f"rest/{c}/{r}")
                got.append((("rest", c, r), res.get_response()["id"], res.as_numpy("logits")))
        finally:
            await client.close()
        return got

    async def grpc_client(c: int) -> list:
        client = grpcaio.InferenceServerClient(server.grpc_hostport)
        got = []
        try:
            for r in range(REQUESTS):
                x, _ = plans[("grpc", c, r)]
                inp = grpcaio.InferInput("input", list(x.shape), "FP32")
                inp.set_data_from_numpy(x)
                res = await client.infer(model, [inp], request_id=f"grpc/{c}/{r}")
                got.append((("grpc", c, r), res.get_response().id, res.as_numpy("logits")))
        finally:
            await client.close()
        return got

    async def run_all() -> list:
        return await asyncio.gather(*(rest_client(c) for c in range(CLIENTS)),
                                    *(grpc_client(c) for c in range(CLIENTS)))

    results = [item for per_client in asyncio.run(run_all()) for item in per_client]
    assert len(results) == 2 * CLIENTS * REQUESTS
    for key, rid, logits in results:
        assert rid == "/".join(map(str, key))
        np.testing.assert_allclose(logits, plans[key][1], rtol=1e-5, atol=1e-5)
    after = stats.get_inference_statistics(model, "1")["model_stats"][0]
    requests = after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"]
    assert requests == 2 * CLIENTS * REQUESTS  # one set of statistics for both transports
    assert after["inference_count"] - before["inference_count"] == sum(x.shape[0] for x, _ in plans.values())
    assert after["execution_count"] - before["execution_count"] < 2 * CLIENTS * REQUESTS  # batched
    assert all(b["batch_size"] <= 4 for b in after["batch_stats"])
    # and one set of Prometheus series
    requests_after = _metric(server, 'sepconv_inference_requests_total{model="mixed",version="1"}')
    assert requests_after - requests_before == 2 * CLIENTS * REQUESTS


def _metric(server: Server, series: str) -> float:
    for line in httpx.get(server.url + "/metrics").text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


PAIR_CFG = """
name: "pair"
max_batch_size: 4
dynamic_batching { max_queue_delay_microseconds: 100000 preferred_batch_size: [ 2 ] }
instance_group [ { kind: KIND_CPU count: 1 } ]
"""


def test_a_rest_and_a_grpc_request_meet_in_one_batch(tmp_path: Path) -> None:
    """One sequential REST client and one sequential gRPC client (each has one request in flight at a time): any
    run of 2 images holds one request of each transport — and such runs happen.

    (An HTTP request whose body never comes stays in flight meanwhile, so no request is ever the server's only
    one: a lone request may run at once on the event loop, skipping the batcher — see the scheduler.)"""
    build_cnn(tmp_path / "pair" / "1" / "model.onnx", seed=5)
    (tmp_path / "pair" / "config.pbtxt").write_text(PAIR_CFG)
    port = free_port()
    app = create_app(Settings(repo=tmp_path, providers="cpu", access_log=False, grpc_port=port))
    sess = ort.InferenceSession(str(tmp_path / "pair" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    n = 12
    xs = {(kind, i): np.random.default_rng(hash((kind, i)) % 2**32).standard_normal((1, *CNN_SHAPE)).astype(
        np.float32) for kind in ("rest", "grpc") for i in range(n)}
    got: dict[tuple[str, int], np.ndarray] = {}
    with running_server(app) as url, socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as held:
        held.sendall(b"POST /v2/models/pair/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")

        def rest() -> None:
            client = httpclient.InferenceServerClient(url.removeprefix("http://"), network_timeout=30)
            for i in range(n):
                inp = httpclient.InferInput("input", [1, *CNN_SHAPE], "FP32")
                inp.set_data_from_numpy(xs[("rest", i)])
                got[("rest", i)] = client.infer("pair", [inp]).as_numpy("logits")

        def grpc_() -> None:
            client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
            for i in range(n):
                inp = grpcclient.InferInput("input", [1, *CNN_SHAPE], "FP32")
                inp.set_data_from_numpy(xs[("grpc", i)])
                got[("grpc", i)] = client.infer("pair", [inp]).as_numpy("logits")
            client.close()

        threads = [threading.Thread(target=rest), threading.Thread(target=grpc_)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        stats = httpx.get(url + "/v2/models/pair/stats").json()["model_stats"][0]
    assert len(got) == 2 * n
    for key, logits in got.items():
        np.testing.assert_allclose(logits, sess.run(None, {"input": xs[key]})[0], rtol=1e-5, atol=1e-6)
    assert stats["inference_count"] == 2 * n and stats["inference_stats"]["success"]["count"] == 2 * n
    batches = {b["batch_size"]: b["compute_infer"]["count"] for b in stats["batch_stats"]}
    assert set(batches) <= {1, 2} and batches.get(2, 0) >= 1, batches


def test_sepconv_serve_grpc_port_flag_and_env(model_repo: Path) -> None:
    for how in ("flag", "env"):
        port, grpc_port = free_port(), free_port()
        env = {**os.environ, "SEPCONV_PROVIDERS": "cpu"}
        args = [sys.executable, "-m", "sepconv", "serve", "--repo", str(model_repo), "--port", str(port)]
        if how == "flag":
            args += ["--grpc-port", str(grpc_port)]
        else:
            env["SEPCONV_GRPC_PORT"] = str(grpc_port)
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_ready(proc, f"http://127.0.0.1:{port}")
            client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
            assert client.is_server_ready() and client.is_model_ready("tiny")
            x = np.ones((1, *CNN_SHAPE), np.float32)
            inp = grpcclient.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            assert client.infer("tiny", [inp]).as_numpy("logits").shape == (1, 5)
            client.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
        assert proc.returncode in (0, -signal.SIGTERM), err.decode()
        assert b"gRPC" in err and b"model tiny unloaded" in err


def test_grpc_port_in_use_stops_the_start(model_repo: Path) -> None:
    """A gRPC port already taken fails the start-up (uvicorn then exits) instead of serving REST alone."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        app = create_app(Settings(repo=model_repo, providers="cpu", access_log=False, grpc_port=port))

        async def start() -> None:
            async with app.router.lifespan_context(app):
                pass

        with pytest.raises(RuntimeError, match=f"gRPC cannot listen on 127.0.0.1:{port}"):
            asyncio.run(start())
    assert app.state.registry.loaded() == []  # what the failed start-up loaded is unloaded again


def test_shutdown_drains_an_open_stream(model_repo: Path) -> None:
    """Requests already sent on a stream are answered while the server shuts down."""
    port = free_port()
    app = create_app(Settings(repo=model_repo, providers="cpu", access_log=False, grpc_port=port,
                              shutdown_grace_s=10))
    x = np.ones((1, *CNN_SHAPE), np.float32)
    request = pb.ModelInferRequest(model_name="tiny", raw_input_contents=[x.tobytes()])
    request.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    answers = []
    with running_server(app):
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        from sepconv.service.grpc.generated import grpc_service_pb2_grpc as pb_grpc

        stream = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(iter([request] * 20))
        answers.append(next(stream))
    answers.extend(stream)  # the server stopped (context exit) after the first answer: the rest still came
    channel.close()
    assert len(answers) == 20 and not any(a.error_message for a in answers)


def test_generated_code_is_what_the_script_makes() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen-grpc"), "--check"], capture_output=True,
                            text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    methods = {m.name for m in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods}
    assert methods == {
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer", "ModelStreamInfer",
        "ModelConfig", "ModelStatistics", "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload",
        "SystemSharedMemoryStatus", "SystemSharedMemoryRegister", "SystemSharedMemoryUnregister",
        "CudaSharedMemoryStatus", "CudaSharedMemoryRegister", "CudaSharedMemoryUnregister", "TraceSetting",
        "LogSettings"}
    from tritonclient.grpc import service_pb2  # the client's modules live in the same process: identical files

    assert service_pb2.ModelInferRequest.DESCRIPTOR.file.serialized_pb == pb.DESCRIPTOR.serialized_pb


TYPED = [  # datatype, contents field, values, numpy dtype
    ("BOOL", "bool_contents", [True, False, True, True], np.bool_),
    ("INT8", "int_contents", [-128, 0, 5, 127], np.int8),
    ("INT16", "int_contents", [-32768, 1, 2, 32767], np.int16),
    ("INT32", "int_contents", [-2**31, 0, 7, 2**31 - 1], np.int32),
    ("INT64", "int64_contents", [-2**63, 0, 9, 2**63 - 1], np.int64),
    ("UINT8", "uint_contents", [0, 1, 200, 255], np.uint8),
    ("UINT16", "uint_contents", [0, 1, 2, 65535], np.uint16),
    ("UINT32", "uint_contents", [0, 1, 2, 2**32 - 1], np.uint32),
    ("UINT64", "uint64_contents", [0, 1, 2, 2**64 - 1], np.uint64),
    ("FP32", "fp32_contents", [0.5, -1.25, 3.0, 1e30], np.float32),
    ("FP64", "fp64_contents", [0.1, -1e300, 3.0, 2.5], np.float64),
    ("BYTES", "bytes_contents", [b"a", b"", b"\xff\x00", "\u00e9".encode()], object),
]


@pytest.mark.parametrize(("datatype", "field", "values", "dtype"), TYPED, ids=[t[0] for t in TYPED])
def test_codec_every_datatype_typed_and_raw(datatype: str, field: str, values: list, dtype: type) -> None:
    """Typed contents and raw bytes decode to the same array, and encoding gives back Triton's raw form."""
    request = pb.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=[2, 2])
    getattr(tensor.contents, field).extend(values)
    typed = codec.decode_request(request).inputs[0].array
    want = np.array(values, dtype=dtype).reshape(2, 2)
    assert typed.dtype == want.dtype and typed.tolist() == want.tolist()

    from sepconv.service.dataplane.types import InferResponse, OutputTensor

    encoded = codec.encode_response(InferResponse("m", "1", "id", [OutputTensor("y", datatype, want, True)]))
    assert list(encoded.outputs[0].shape) == [2, 2] and encoded.id == "id"
    raw_request = pb.ModelInferRequest(model_name="m", raw_input_contents=[encoded.raw_output_contents[0]])
    raw_request.inputs.add(name="x", datatype=datatype, shape=[2, 2])
    assert codec.decode_request(raw_request).inputs[0].array.tolist() == want.tolist()


def test_codec_fp16_only_raw_and_parameters() -> None:
    half = np.array([[0.5, -2.0]], np.float16)
    request = pb.ModelInferRequest(model_name="m", id="r1", raw_input_contents=[half.tobytes()])
    request.inputs.add(name="h", datatype="FP16", shape=[1, 2])
    request.parameters["priority"].int64_param = 3
    request.parameters["tag"].string_param = "x"
    request.outputs.add(name="y").parameters["binary_data"].bool_param = True  # meaningless over gRPC: accepted
    decoded = codec.decode_request(request)
    np.testing.assert_array_equal(decoded.inputs[0].array, half)
    assert decoded.id == "r1" and decoded.parameters == {"priority": 3, "tag": "x"}
    assert [o.name for o in decoded.outputs] == ["y"]
    bad = pb.ModelInferRequest(model_name="m")
    bad.inputs.add(name="h", datatype="FP16", shape=[1, 2]).contents.fp32_contents.extend([0.5, -2.0])
    with pytest.raises(InvalidInput, match="raw_input_contents"):
        codec.decode_request(bad)


def test_concurrent_calls_are_capped_with_resource_exhausted(model_repo: Path) -> None:
    """More gRPC calls than ``grpc_max_concurrent_rpcs`` at once: the extra call is answered RESOURCE_EXHAUSTED at
    once (memory held by messages stays bounded), and once the open calls end the server serves again."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: PLC0415

    from sepconv.service.grpc.generated import grpc_service_pb2_grpc as pb_grpc  # noqa: PLC0415

    port = free_port()
    app = create_app(Settings(repo=model_repo, providers="cpu", access_log=False, grpc_port=port,
                              grpc_max_concurrent_rpcs=2))
    with running_server(app), grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        watches = [health.Watch(health_pb2.HealthCheckRequest(service="")) for _ in range(2)]
        for w in watches:  # two calls open on the server (each has answered its first status)
            assert next(w).status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as refused:
            stub.ServerLive(pb.ServerLiveRequest(), timeout=10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        for w in watches:
            w.cancel()
        deadline = time.monotonic() + 10
        while True:  # the cancelled calls leave the server's count shortly after
            try:
                assert stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live
                break
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() < deadline
                time.sleep(0.05)
