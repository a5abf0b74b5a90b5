"""Faults: broken models beside good ones, a model deleted and unloaded under load, CUDA asked for where
there is none, paths that try to leave the repository, reloads and config overrides."""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import orjson
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from tritonclient.utils import InferenceServerException

from sepconv.export.graph import supported_ir_version
from sepconv.service.app import create_app
from sepconv.service.settings import Settings
from tests.conftest import CNN_SHAPE, build_cnn
from tests.serving import running_server

CUDA_WORKS = "CUDAExecutionProvider" in ort.get_available_providers()


def _serve(repo: Path, **overrides):
    overrides.setdefault("model_control", "explicit")  # these tests load and unload (loopback: no token needed)
    settings = Settings(repo=repo, providers=overrides.pop("providers", "cpu"), access_log=False, **overrides)
    return running_server(create_app(settings))


def _index(client) -> dict[tuple[str, str | None], dict]:
    return {(r["name"], r.get("version")): r for r in client.get_model_repository_index()}


def _infer_ok(client, model: str = "tiny") -> np.ndarray:
    x = np.ones((1, *CNN_SHAPE), np.float32)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp]).as_numpy("logits")


def test_broken_models_beside_good_ones(fresh_repo: Path) -> None:
    (fresh_repo / "corrupt" / "1").mkdir(parents=True)
    (fresh_repo / "corrupt" / "1" / "model.onnx").write_bytes(b"\x08\x07this is not a protobuf" * 50)
    (fresh_repo / "empty" / "1").mkdir(parents=True)
    (fresh_repo / "empty" / "1" / "model.onnx").write_bytes(b"")
    (fresh_repo / "missing" / "1").mkdir(parents=True)
    build_cnn(fresh_repo / "badconfig" / "1" / "model.onnx")
    (fresh_repo / "badconfig" / "config.pbtxt").write_text("max_batch_size: 4\ninput [ { name: \"input\" ")
    build_cnn(fresh_repo / "wrongdims" / "1" / "model.onnx")
    (fresh_repo / "wrongdims" / "config.pbtxt").write_text(
        'max_batch_size: 4 input [ { name: "input" data_type: TYPE_FP32 dims: [ 3, 8, 8 ] } ]')
    build_cnn(fresh_repo / "noversion" / "model.onnx")  # not in a version directory
    (fresh_repo / "tiny" / "\u00b2").mkdir()  # str.isdigit() says yes, int() says no: not a version
    with _serve(fresh_repo) as url:
        client = httpclient.InferenceServerClient(url.removeprefix("http://"))
        assert client.is_server_ready()
        assert _infer_ok(client).shape == (1, 5)  # the good model serves
        index = _index(client)
        assert index[("tiny", "1")]["state"] == "READY"
        reasons = {}
        for name in ("corrupt", "empty", "missing", "badconfig", "wrongdims", "noversion"):
            row = next(r for (n, _), r in index.items() if n == name)
            assert row["state"] == "UNAVAILABLE", row
            reasons[name] = row["reason"]
            assert not client.is_model_ready(name)
            r = httpx.post(url + f"/v2/models/{name}/infer", content=b"{}")
            assert r.status_code == 503 and name in r.json()["error"]
        assert "ONNX" in reasons["corrupt"] or "protobuf" in reasons["corrupt"].lower()
        assert "missing" in reasons["missing"]
        assert "config.pbtxt" in reasons["badconfig"]
        assert "dims" in reasons["wrongdims"]
        assert "version" in reasons["noversion"]
        with pytest.raises(InferenceServerException, match="failed to load"):
            client.load_model("corrupt")
        assert _infer_ok(client).shape == (1, 5)
        page = httpx.get(url + "/")
        assert page.status_code == 200
    strict = Settings(repo=fresh_repo, providers="cpu", access_log=False, strict_readiness=True,
                      model_control="explicit")
    with running_server(create_app(strict)) as url:
        assert httpx.get(url + "/v2/health/ready").status_code == 503  # Triton's strict readiness


def test_model_deleted_and_unloaded_while_requests_run(fresh_repo: Path) -> None:
    sess = ort.InferenceSession(str(fresh_repo / "tiny" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    with _serve(fresh_repo) as url:
        hostport = url.removeprefix("http://")
        outcomes: list[tuple[int | str, bool]] = []
        stop = asyncio.Event()

        async def hammer(seed: int) -> None:
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                i = 0
                while not stop.is_set():
                    x = np.random.default_rng(seed * 1000 + i).standard_normal((1, *CNN_SHAPE)).astype(np.float32)
                    i += 1
                    body = orjson.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                                     "data": x.reshape(-1).tolist()}]})
                    r = await http.post("/v2/models/tiny/infer", content=body)
                    if r.status_code == 200:
                        got = np.array(r.json()["outputs"][0]["data"], np.float32).reshape(1, -1)
                        outcomes.append((200, bool(np.allclose(got, sess.run(None, {"input": x})[0], atol=1e-5))))
                    else:
                        outcomes.append((r.status_code, "error" in r.json()))
                    await asyncio.sleep(0)

        async def scenario() -> None:
            workers = [asyncio.create_task(hammer(s)) for s in range(8)]
            await asyncio.sleep(0.3)
            shutil.rmtree(fresh_repo / "tiny")  # the files go away while requests run...
            await asyncio.sleep(0.2)
            client = aioclient.InferenceServerClient(hostport)
            await client.unload_model("tiny")  # ...then the model is unloaded, still under load
            await asyncio.sleep(0.3)
            stop.set()
            await asyncio.gather(*workers)
            await client.close()

        asyncio.run(scenario())
        codes = [c for c, _ in outcomes]
        assert codes.count(200) > 0
        assert all(ok for _, ok in outcomes), "a response was wrong or an error was not JSON"
        assert set(codes) <= {200, 404, 503}, f"unexpected status codes {set(codes)}"
        assert codes[-1] in (404, 503)
        client = httpclient.InferenceServerClient(hostport)
        assert not client.is_model_ready("tiny")
        row = _index(client)[("tiny", None)]
        assert row["state"] == "UNAVAILABLE" and "unloaded" in row["reason"]
        with pytest.raises(InferenceServerException, match="no model directory"):
            client.load_model("tiny")
        assert client.is_server_live() and client.is_model_ready("tiny_cfg")
        assert _infer_ok(client, "tiny_cfg").shape == (1, 5)


@pytest.mark.skipif(CUDA_WORKS, reason="this machine has CUDA: the fallback cannot be provoked")
def test_cuda_requested_without_cuda(fresh_repo: Path, caplog: pytest.LogCaptureFixture) -> None:
    build_cnn(fresh_repo / "gpu_model" / "1" / "model.onnx")
    (fresh_repo / "gpu_model" / "config.pbtxt").write_text('instance_group [ { kind: KIND_GPU count: 1 } ]')
    caplog.set_level(logging.WARNING, logger="sepconv.runtime")
    with _serve(fresh_repo, providers="auto") as url:  # auto: CPU, with a warning
        client = httpclient.InferenceServerClient(url.removeprefix("http://"))
        assert client.is_model_ready("gpu_model")
        assert client.get_model_metadata("gpu_model")["parameters"]["execution_providers"] == ["CPUExecutionProvider"]
        assert _infer_ok(client, "gpu_model").shape == (1, 5)
    assert any("CUDAExecutionProvider was requested" in r.getMessage() for r in caplog.records)
    with _serve(fresh_repo, providers="auto", strict_providers=True) as url:  # strict: a clear load failure
        client = httpclient.InferenceServerClient(url.removeprefix("http://"))
        assert not client.is_model_ready("gpu_model")
        row = _index(client)[("gpu_model", "1")]
        assert row["state"] == "UNAVAILABLE"
        assert "CUDAExecutionProvider was requested" in row["reason"] and "strict" in row["reason"]
        assert client.is_model_ready("tiny")  # KIND_AUTO models are unaffected
    with _serve(fresh_repo, providers="cuda", strict_providers=True) as url:  # server-wide cuda, strict
        client = httpclient.InferenceServerClient(url.removeprefix("http://"))
        assert not client.is_model_ready("tiny")
        assert "CUDAExecutionProvider" in _index(client)[("tiny", "1")]["reason"]


def _external_model(version_dir: Path, location: str) -> None:
    build_cnn(version_dir / "model.onnx")
    model = onnx.load(str(version_dir / "model.onnx"))
    onnx.save(model, str(version_dir / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    model = onnx.load(str(version_dir / "model.onnx"), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(model, str(version_dir / "model.onnx"))


def _subgraph_external_model(path: Path, location: str) -> None:
    """An ``If`` whose branch holds an initializer with external data at ``location``."""
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.FLOAT, [2], [0.0, 0.0])
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "8")):
        weight.external_data.add(key=key, value=value)
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    then_branch = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "then", [], [out], [weight])
    else_branch = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "else", [], [out])
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=then_branch, else_branch=else_branch)], "sub",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])], [out])
    path.parent.mkdir(parents=True)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = supported_ir_version()
    onnx.save(model, str(path))


def test_nothing_outside_the_repository_is_opened(fresh_repo: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    build_cnn(outside / "escaped" / "1" / "model.onnx")
    (fresh_repo / "linked_dir").symlink_to(outside / "escaped", target_is_directory=True)
    (fresh_repo / "linked_file" / "1").mkdir(parents=True)
    (fresh_repo / "linked_file" / "1" / "model.onnx").symlink_to(outside / "escaped" / "1" / "model.onnx")
    _external_model(fresh_repo / "ext_ok" / "1", "weights.bin")
    _external_model(fresh_repo / "ext_escape" / "1", "../../../outside/escaped/weights.bin")
    shutil.copy(fresh_repo / "ext_ok" / "1" / "weights.bin", outside / "escaped" / "weights.bin")
    _external_model(fresh_repo / "ext_absolute" / "1", str(outside / "escaped" / "weights.bin"))
    _subgraph_external_model(fresh_repo / "ext_subgraph" / "1" / "model.onnx", "../../../outside/escaped/weights.bin")
    with _serve(fresh_repo) as url:
        client = httpclient.InferenceServerClient(url.removeprefix("http://"))
        index = _index(client)
        assert ("linked_dir", "1") not in index and ("linked_dir", None) not in index
        assert "outside the repository" in index[("linked_file", "1")]["reason"]
        assert index[("ext_ok", "1")]["state"] == "READY"  # external data inside the repo is fine
        assert _infer_ok(client, "ext_ok").shape == (1, 5)
        assert "outside the repository" in index[("ext_escape", "1")]["reason"]
        assert "relative" in index[("ext_absolute", "1")]["reason"]
        assert "outside the repository" in index[("ext_subgraph", "1")]["reason"]  # found inside the If branch
        with pytest.raises(InferenceServerException, match="failed to load"):
            client.load_model("linked_dir")


def test_reload_new_version_and_config_override(fresh_repo: Path) -> None:
    with _serve(fresh_repo) as url:
        client = httpclient.InferenceServerClient(url.removeprefix("http://"))
        first = _infer_ok(client)
        build_cnn(fresh_repo / "tiny" / "2" / "model.onnx", seed=99)
        client.load_model("tiny")  # picks up version 2 (latest 1)
        assert client.get_model_metadata("tiny")["versions"] == ["2"]
        assert not client.is_model_ready("tiny", "1")
        assert not np.allclose(_infer_ok(client), first)
        config = {"max_batch_size": 2, "version_policy": {"all": {}}, "dynamic_batching": {}}
        client.load_model("tiny", config=orjson.dumps(config).decode())
        assert client.get_model_metadata("tiny")["versions"] == ["1", "2"]
        assert client.get_model_config("tiny")["max_batch_size"] == 2
        np.testing.assert_allclose(_infer_ok(client), np.asarray(_infer_ok(client)))
        with pytest.raises(InferenceServerException, match="invalid 'config'"):
            client.load_model("tiny", config='{"max_batch_size": -3}')
        with pytest.raises(InferenceServerException, match="uploaded files"):
            client.load_model("tiny", config="{}", files={"file:1/model.onnx": b"x"})
        assert client.is_model_ready("tiny", "2")  # a refused reload keeps the model serving
        client.unload_model("tiny", unload_dependents=True)  # Triton's flag; nothing here depends on another model
        assert not client.is_model_ready("tiny") and client.is_model_ready("tiny_cfg")


def test_failed_reload_keeps_the_old_version_serving(fresh_repo: Path) -> None:
    with _serve(fresh_repo) as url:
        client = httpclient.InferenceServerClient(url.removeprefix("http://"))
        before = _infer_ok(client)
        (fresh_repo / "tiny" / "1" / "model.onnx").write_bytes(b"garbage")
        with pytest.raises(InferenceServerException, match="failed to load"):
            client.load_model("tiny")
        np.testing.assert_array_equal(_infer_ok(client), before)


def _slow_model(path: Path, layers: int = 160, size: int = 512) -> Path:
    """x FP32 [N, size, size] -> a chain of MatMuls: slow enough to be caught in flight."""
    from onnx import TensorProto, helper

    from sepconv.export.graph import supported_ir_version

    w = helper.make_tensor("w", TensorProto.FLOAT, [size, size],
                           (np.eye(size, dtype=np.float32)).reshape(-1).tolist())
    nodes, prev = [], "x"
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [prev, "w"], [f"m{i}"]))
        prev = f"m{i}"
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    graph = helper.make_graph(nodes, "slow", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", size, size])],
                              initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = supported_ir_version()
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def test_graceful_shutdown_lets_in_flight_requests_finish(tmp_path: Path) -> None:
    import threading
    import time

    _slow_model(tmp_path / "slow" / "1" / "model.onnx")
    (tmp_path / "slow" / "config.pbtxt").write_text("max_batch_size: 0")
    app = create_app(Settings(repo=tmp_path, providers="cpu", access_log=False, model_control="explicit"))
    x = np.random.default_rng(0).standard_normal((3, 512, 512)).astype(np.float32)
    results: list[httpx.Response] = []

    def request(url: str) -> None:
        header = orjson.dumps({"inputs": [{"name": "x", "shape": [3, 512, 512], "datatype": "FP32",
                                           "parameters": {"binary_data_size": x.nbytes}}],
                               "outputs": [{"name": "y", "parameters": {"binary_data": True}}]})
        results.append(httpx.post(url + "/v2/models/slow/infer", content=header + x.tobytes(), timeout=120,
                                  headers={"Inference-Header-Content-Length": str(len(header))}))

    with running_server(app) as url:
        thread = threading.Thread(target=request, args=(url,))
        thread.start()
        deadline = time.monotonic() + 60
        while app.state.in_flight.count < 1 and time.monotonic() < deadline:
            time.sleep(0.002)
        assert app.state.in_flight.count >= 1, "the request never reached the server"
    # leaving the block asked uvicorn to stop while the request ran; it still got its full answer
    thread.join(timeout=120)
    assert len(results) == 1
    for r in results:
        assert r.status_code == 200, r.text
        hlen = int(r.headers["inference-header-content-length"])
        np.testing.assert_allclose(np.frombuffer(r.content[hlen:], np.float32).reshape(x.shape), x, rtol=1e-5)
