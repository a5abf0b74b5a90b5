"""Shared fixtures: small real ONNX models in a Triton-layout repository, and a real server over it.

* ``build_cnn(path, seed=...)`` — a tiny MobileNet-like net (conv, separable conv, pool, dense) made with
  ``export.layers``; input ``input`` FP32 ``[N, 8, 8, 3]`` (NHWC), output ``logits`` FP32 ``[N, 5]``.
* ``build_multi_io(path)`` — two inputs (FP32, FP16) + INT64, four outputs (FP32, FP16, INT64, BOOL).
* ``build_strings(path)`` — a BYTES (ONNX string) identity model.
* ``server`` (session scope) — ``create_app`` over such a repository, run by a real uvicorn on loopback, with its
  gRPC transport on another free port (``server.grpc_hostport``); ``triton`` — an unmodified ``tritonclient.http``
  client for it, ``triton_grpc`` — an unmodified ``tritonclient.grpc`` one.

Servers the tests make serve no gRPC unless they ask (``SEPCONV_GRPC_PORT`` defaults to 0 here, not 8001: test
processes running side by side must not fight over one port).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from sepconv.export import layers as L
from sepconv.export.graph import GraphBuilder, supported_ir_version
from tests.serving import free_port, running_server

os.environ.setdefault("SEPCONV_GRPC_PORT", "0")

CNN_SHAPE = (8, 8, 3)
CNN_CLASSES = 5


def _save(model: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def build_cnn(path: Path, seed: int = 0, classes: int = CNN_CLASSES, metadata: dict[str, str] | None = None) -> Path:
    rng = np.random.default_rng(seed)
    b = GraphBuilder("tiny_cnn")
    h, w, c = CNN_SHAPE
    x = L.network_input(b, "input", "NHWC", c, h, w)
    x = L.conv2d(b, x, rng.standard_normal((3, 3, c, 4)).astype(np.float32), name="conv1",
                 geometry=L.ConvGeometry(strides=2), act="relu6")
    x = L.separable_conv2d(b, x, rng.standard_normal((3, 3, 4, 1)).astype(np.float32),
                           rng.standard_normal((1, 1, 4, 8)).astype(np.float32), name="sep1", act="relu")
    x = L.global_avg_pool(b, x, name="pool", keepdims=False)
    x = L.dense(b, x, rng.standard_normal((8, classes)).astype(np.float32),
                rng.standard_normal(classes).astype(np.float32), name="logits_dense")
    L.network_output(b, x, "logits", "NHWC")
    return _save(b.to_model({"seed": str(seed), **(metadata or {})}), path)


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="sepconv-tests")
    model.ir_version = supported_ir_version()
    onnx.checker.check_model(model, full_check=True)
    return model


def build_multi_io(path: Path) -> Path:
    """a FP32 [N,4], b FP16 [N,4], idx INT64 [N,2] -> double=a+a, neg_half=-b, idx_plus=idx+1, positive=a>0."""
    one = helper.make_tensor("one", TensorProto.INT64, [1], [1])
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0])
    nodes = [
        helper.make_node("Add", ["a", "a"], ["double"]),
        helper.make_node("Neg", ["b"], ["neg_half"]),
        helper.make_node("Add", ["idx", "one"], ["idx_plus"]),
        helper.make_node("Greater", ["a", "zero"], ["positive"]),
    ]
    graph = helper.make_graph(
        nodes, "multi_io",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT16, ["N", 4]),
         helper.make_tensor_value_info("idx", TensorProto.INT64, ["N", 2])],
        [helper.make_tensor_value_info("double", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("neg_half", TensorProto.FLOAT16, ["N", 4]),
         helper.make_tensor_value_info("idx_plus", TensorProto.INT64, ["N", 2]),
         helper.make_tensor_value_info("positive", TensorProto.BOOL, ["N", 4])],
        initializer=[one, zero],
    )
    return _save(_model(graph), path)


def build_strings(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["echo"])], "strings",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["N", 2])],
        [helper.make_tensor_value_info("echo", TensorProto.STRING, ["N", 2])],
    )
    return _save(_model(graph), path)


def build_fixed(path: Path) -> Path:
    """No batch dimension: x FP32 [2, 3] -> y = x * 3."""
    three = helper.make_tensor("three", TensorProto.FLOAT, [1], [3.0])
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "three"], ["y"])], "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        initializer=[three],
    )
    return _save(_model(graph), path)


TINY_CFG = """
name: "tiny_cfg"
platform: "onnxruntime_onnx"
max_batch_size: 4  # small, so a batch of 5 is refused
input [ { name: "input" data_type: TYPE_FP32 dims: [ 8, 8, 3 ] } ]
output [ { name: "logits" data_type: TYPE_FP32 dims: [ 5 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
dynamic_batching { max_queue_delay_microseconds: 2000 preferred_batch_size: [ 2, 4 ] }
version_policy: { latest: { num_versions: 2 } }
"""

MULTI_CFG = """
name: "multi_io"
backend: "onnxruntime"
max_batch_size: 8
dynamic_batching { }
"""


def make_repo(root: Path) -> Path:
    """The test repository (see the module docstring)."""
    build_cnn(root / "tiny" / "1" / "model.onnx", seed=1, metadata={"note": "auto-completed config"})
    for v in (1, 2, 3):
        build_cnn(root / "tiny_cfg" / str(v) / "model.onnx", seed=10 + v)
    (root / "tiny_cfg" / "config.pbtxt").write_text(TINY_CFG)
    build_multi_io(root / "multi_io" / "1" / "model.onnx")
    (root / "multi_io" / "config.pbtxt").write_text(MULTI_CFG)
    build_strings(root / "strings" / "1" / "model.onnx")
    build_fixed(root / "fixed" / "1" / "model.onnx")
    return root


@dataclass
class Server:
    url: str
    app: object
    repo: Path
    grpc_port: int = 0

    @property
    def hostport(self) -> str:
        return self.url.removeprefix("http://")

    @property
    def grpc_hostport(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


def reference(server: Server, name: str, version: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The outputs of ``name``/``version`` of the test repository, from a plain ONNX Runtime session."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(server.repo / name / version / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feed), strict=True))


def cnn_input(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, *CNN_SHAPE)).astype(np.float32)


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repo(tmp_path_factory.mktemp("repo"))


@pytest.fixture()
def fresh_repo(tmp_path: Path, model_repo: Path) -> Path:
    """A private copy of the test repository (for tests that change files)."""
    dst = tmp_path / "repo"
    shutil.copytree(model_repo, dst)
    return dst


@pytest.fixture(scope="session")
def server(model_repo: Path):
    from sepconv.service.app import create_app
    from sepconv.service.settings import Settings

    grpc_port = free_port()
    app = create_app(Settings(repo=model_repo, providers="cpu", max_request_bytes=4 * 1024 * 1024,
                              admin_token=None, access_log=False, model_control="explicit", grpc_port=grpc_port))
    with running_server(app) as url:
        yield Server(url=url, app=app, repo=model_repo, grpc_port=grpc_port)


@pytest.fixture()
def triton(server: Server):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.hostport)
    yield client
    client.close()


@pytest.fixture()
def triton_grpc(server: Server):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_hostport)
    yield client
    client.close()
