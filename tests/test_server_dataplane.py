"""The data plane without any transport: what a gRPC transport would call. One infer from a decoded request to
``session.run`` and back, the accounting of a failure (by error type), model readiness, the admin check."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from prometheus_client import REGISTRY

from sepconv.service.dataplane.dataplane import DataPlane
from sepconv.service.dataplane.types import InferRequest, InferResponse, InputTensor, RequestedOutput
from sepconv.service.errors import InvalidInput, ModelNotFound, PermissionDenied, Unauthenticated
from sepconv.service.registry.registry import ModelRegistry
from sepconv.service.runtime.serving import ServingHook, make_executor
from sepconv.service.settings import Settings
from tests.conftest import CNN_SHAPE, build_cnn


class Decoded:
    """A transport that already holds the decoded request (as a gRPC one would after reading the protobuf)."""

    def __init__(self, request: InferRequest) -> None:
        self.request = request

    async def decode(self) -> InferRequest:
        return self.request

    def encode(self, response: InferResponse) -> InferResponse:
        return response


@pytest.fixture()
def dataplane(tmp_path: Path):
    build_cnn(tmp_path / "dp_tiny" / "1" / "model.onnx", seed=5)
    settings = Settings(repo=tmp_path, providers="cpu", admin_token="t0ken", model_control="explicit")
    executor = make_executor(settings)
    registry = ModelRegistry(settings, hooks=[ServingHook(executor, settings)])
    registry.load_all()
    yield DataPlane(settings, registry)
    registry.close()
    executor.shutdown()


def _request(x: np.ndarray, shape: list[int] | None = None) -> InferRequest:
    return InferRequest(id="r1", inputs=[InputTensor("input", "FP32", shape or list(x.shape), x)],
                        outputs=[RequestedOutput("logits", binary=True)], binary_output=False)


def test_infer_runs_the_session_and_is_counted(dataplane: DataPlane, tmp_path: Path) -> None:
    x = np.random.default_rng(1).standard_normal((2, *CNN_SHAPE)).astype(np.float32)
    response = asyncio.run(dataplane.infer("dp_tiny", None, Decoded(_request(x))))
    reference = ort.InferenceSession(str(tmp_path / "dp_tiny" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert (response.model_name, response.model_version, response.id) == ("dp_tiny", "1", "r1")
    np.testing.assert_allclose(response.outputs[0].array, reference.run(["logits"], {"input": x})[0],
                               rtol=1e-5, atol=1e-6)
    stats = dataplane.statistics("dp_tiny")["model_stats"][0]
    assert stats["inference_stats"]["success"]["count"] == 1 and stats["inference_count"] == 2


def test_a_failure_is_counted_by_error_type(dataplane: DataPlane) -> None:
    def failures() -> float:
        return REGISTRY.get_sample_value("sepconv_inference_failures_total",
                                         {"model": "dp_tiny", "version": "1", "reason": "InvalidInput"}) or 0.0

    before = failures()
    x = np.zeros((1, 3, 3, 3), np.float32)
    with pytest.raises(InvalidInput, match="does not match"):
        asyncio.run(dataplane.infer("dp_tiny", None, Decoded(_request(x))))
    assert failures() == before + 1
    assert dataplane.statistics("dp_tiny")["model_stats"][0]["inference_stats"]["fail"]["count"] == 1
    with pytest.raises(ModelNotFound):  # an unknown model is nobody's failure
        asyncio.run(dataplane.infer("nope", None, Decoded(_request(x))))


def test_readiness_and_admin_check(dataplane: DataPlane) -> None:
    assert dataplane.model_ready("dp_tiny").ready
    asyncio.run(dataplane.unload("dp_tiny"))
    state = dataplane.model_ready("dp_tiny")
    assert not state.ready and "unloaded" in state.reason
    with pytest.raises(Unauthenticated):
        dataplane.authorize(None)
    with pytest.raises(PermissionDenied):
        dataplane.authorize("wrong")
    dataplane.authorize("t0ken")
