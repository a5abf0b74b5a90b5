"""Bad input over gRPC: every bad input of the REST tests (tests/test_server_errors.py) that gRPC can carry has a
twin here answered with the status code Triton gives (never INTERNAL for a client's mistake), and the server keeps
answering afterwards; the message limit (RESOURCE_EXHAUSTED), the admin token, grpc.health.v1 and reflection."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.utils import InferenceServerException

from sepconv.service.app import create_app
from sepconv.service.grpc.generated import grpc_service_pb2 as pb
from sepconv.service.grpc.generated import grpc_service_pb2_grpc as pb_grpc
from sepconv.service.settings import Settings
from tests.conftest import CNN_SHAPE
from tests.serving import free_port, running_server

C = grpc.StatusCode
N = int(np.prod(CNN_SHAPE))
GOOD_X = np.ones((1, *CNN_SHAPE), np.float32)


def raw(model: str, tensors: list[tuple[str, str, list[int], bytes]], *, version: str = "",
        outputs: list[tuple[str, dict]] | None = None) -> pb.ModelInferRequest:
    """A request with data in raw_input_contents (as tritonclient sends it)."""
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    for name, datatype, shape, data in tensors:
        request.inputs.add(name=name, datatype=datatype, shape=shape)
        request.raw_input_contents.append(data)
    for name, params in outputs or []:
        out = request.outputs.add(name=name)
        for key, value in params.items():
            if isinstance(value, bool):
                out.parameters[key].bool_param = value
            elif isinstance(value, int):
                out.parameters[key].int64_param = value
            else:
                out.parameters[key].string_param = value
    return request


def typed(model: str, tensors: list[tuple[str, str, list[int], str, list]]) -> pb.ModelInferRequest:
    """A request with data in each input's typed contents."""
    request = pb.ModelInferRequest(model_name=model)
    for name, datatype, shape, field, values in tensors:
        tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
        if field:
            getattr(tensor.contents, field).extend(values)
    return request


def f32(n: int) -> bytes:
    return np.zeros(n, np.float32).tobytes()


def tiny(shape: list[int], data: bytes | None = None, datatype: str = "FP32", name: str = "input",
         **kw) -> pb.ModelInferRequest:
    return raw("tiny", [(name, datatype, shape, f32(int(np.prod(shape))) if data is None else data)], **kw)


def multi_with(**kw) -> pb.ModelInferRequest:
    return raw("multi_io", [("a", "FP32", [1, 4], f32(4)), ("b", "FP16", [1, 4], np.zeros(4, np.float16).tobytes()),
                            ("idx", "INT64", [1, 2], np.zeros(2, np.int64).tobytes())], **kw)


def _missing_raw() -> pb.ModelInferRequest:
    request = multi_with()
    del request.raw_input_contents[2]
    return request


def _raw_and_contents() -> pb.ModelInferRequest:
    request = tiny([1, *CNN_SHAPE])
    request.inputs[0].contents.fp32_contents.extend([0.0] * N)
    return request


def _shm_input() -> pb.ModelInferRequest:
    request = tiny([1, *CNN_SHAPE])
    request.inputs[0].parameters["shared_memory_region"].string_param = "region0"
    return request


# (id, RPC, request, code, message fragment); the REST twin's id in the comment where the names differ
INFER_CASES = [
    ("no inputs", pb.ModelInferRequest(model_name="tiny"), C.INVALID_ARGUMENT, "no inputs"),
    ("unknown input", tiny([1, *CNN_SHAPE], name="image"), C.INVALID_ARGUMENT, "unknown input"),
    ("missing input", raw("multi_io", [("a", "FP32", [1, 4], f32(4))]), C.INVALID_ARGUMENT, "missing input"),
    ("wrong datatype", tiny([1, *CNN_SHAPE], datatype="INT32"), C.INVALID_ARGUMENT, "datatype"),
    ("unsupported datatype", tiny([1, *CNN_SHAPE], datatype="FP8"), C.INVALID_ARGUMENT, "unsupported datatype"),
    ("wrong rank", tiny(list(CNN_SHAPE)), C.INVALID_ARGUMENT, "shape"),
    ("wrong spatial size", tiny([1, 4, 16, 3]), C.INVALID_ARGUMENT, "shape"),
    ("negative dim", tiny([-1, *CNN_SHAPE], f32(N)), C.INVALID_ARGUMENT, "negative"),
    ("too few elements", typed("tiny", [("input", "FP32", [1, *CNN_SHAPE], "fp32_contents", [0.0] * (N - 1))]),
     C.INVALID_ARGUMENT, "elements"),
    ("no data at all", typed("tiny", [("input", "FP32", [1, *CNN_SHAPE], "", [])]), C.INVALID_ARGUMENT, "elements"),
    ("contents of another type", typed("tiny", [("input", "FP32", [1, *CNN_SHAPE], "int_contents", [0] * N)]),
     C.INVALID_ARGUMENT, "fp32_contents"),
    ("FP16 in contents", typed("multi_io", [("b", "FP16", [1, 4], "fp32_contents", [0.0] * 4)]),
     C.INVALID_ARGUMENT, "raw_input_contents"),
    ("int out of range for INT8", typed("tiny", [("input", "INT8", [1, 2], "int_contents", [1, 300])]),
     C.INVALID_ARGUMENT, "out of range"),  # REST: "float into int64" (a value the datatype cannot hold)
    ("batch over max", raw("tiny_cfg", [("input", "FP32", [5, *CNN_SHAPE], f32(5 * N))]), C.INVALID_ARGUMENT,
     "max_batch_size"),
    ("empty batch", tiny([0, *CNN_SHAPE], b""), C.INVALID_ARGUMENT, "empty"),
    ("unknown output", tiny([1, *CNN_SHAPE], outputs=[("probs", {})]), C.INVALID_ARGUMENT, "unknown output"),
    ("classification not a count", tiny([1, *CNN_SHAPE], outputs=[("logits", {"classification": -3})]),
     C.INVALID_ARGUMENT, "classification"),
    ("classification as a string", tiny([1, *CNN_SHAPE], outputs=[("logits", {"classification": "3"})]),
     C.INVALID_ARGUMENT, "classification"),
    ("classification with shared memory", tiny([1, *CNN_SHAPE], outputs=[("logits", {
        "classification": 3, "shared_memory_region": "r"})]), C.INVALID_ARGUMENT, "classification"),
    ("classification of a BOOL output", multi_with(outputs=[("positive", {"classification": 2})]),
     C.INVALID_ARGUMENT, "unsupported type"),
    ("output requested twice", tiny([1, *CNN_SHAPE], outputs=[("logits", {}), ("logits", {})]), C.INVALID_ARGUMENT,
     "twice"),
    ("raw size too small", tiny([1, *CNN_SHAPE], f32(N - 1)), C.INVALID_ARGUMENT, "needs"),  # REST: binary size
    ("raw size too large", tiny([1, *CNN_SHAPE], f32(N + 2)), C.INVALID_ARGUMENT, "needs"),  # ... bytes left over
    ("raw for some inputs only", _missing_raw(), C.INVALID_ARGUMENT, "raw_input_contents"),
    ("raw and contents", _raw_and_contents(), C.INVALID_ARGUMENT, "contents"),
    ("shared-memory input without its size", _shm_input(), C.INVALID_ARGUMENT, "shared_memory_byte_size"),
    ("bytes not utf-8", raw("strings", [("text", "BYTES", [1, 2], b"\x02\0\0\0\xff\xfe\x02\0\0\0ok")]),
     C.INVALID_ARGUMENT, "UTF-8"),
    ("bytes length past data", raw("strings", [("text", "BYTES", [1, 2], b"\x09\0\0\0ab")]), C.INVALID_ARGUMENT,
     "runs past"),
    ("unknown model", raw("nope", [("x", "FP32", [1], f32(1))]), C.NOT_FOUND, "unknown model"),
    ("unknown version", tiny([1, *CNN_SHAPE], version="7"), C.NOT_FOUND, "unknown version"),
    ("version not a number", tiny([1, *CNN_SHAPE], version="abc"), C.INVALID_ARGUMENT, "version"),
    ("version of 5000 digits", tiny([1, *CNN_SHAPE], version="9" * 5000), C.INVALID_ARGUMENT, "version"),
    ("version not ascii digits", tiny([1, *CNN_SHAPE], version="\u00b2"), C.INVALID_ARGUMENT, "version"),
    ("version outside policy", raw("tiny_cfg", [("input", "FP32", [1, *CNN_SHAPE], f32(N))], version="1"),
     C.NOT_FOUND, "unknown version"),
    ("empty tensor, huge dims", tiny([0, 2**40, 2**40, 3], b""), C.INVALID_ARGUMENT, "too large"),
    ("bytes empty tensor, huge dims", raw("strings", [("text", "BYTES", [0, 2**62], b"")]), C.INVALID_ARGUMENT,
     "too large"),
    ("65 dimensions", tiny([1] * 65, f32(1)), C.INVALID_ARGUMENT, "dimensions"),
    ("bad model name", raw("..hidden", [("x", "FP32", [1], f32(1))]), C.INVALID_ARGUMENT, "invalid model name"),
]


def _assert_still_serves(channel: grpc.Channel) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    response = stub.ModelInfer(tiny([1, *CNN_SHAPE], GOOD_X.tobytes()))
    assert np.frombuffer(response.raw_output_contents[0], np.float32).shape == (5,)


@pytest.mark.parametrize(("request_", "code", "fragment"), [c[1:] for c in INFER_CASES],
                         ids=[c[0] for c in INFER_CASES])
def test_bad_infer_request_gets_its_status(server, request_, code, fragment) -> None:
    with grpc.insecure_channel(server.grpc_hostport) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request_)
        assert info.value.code() == code, info.value.details()
        assert fragment.lower() in info.value.details().lower()
        # the same request in a stream: its response carries the error, the stream goes on
        responses = list(stub.ModelStreamInfer(iter([request_, tiny([1, *CNN_SHAPE], GOOD_X.tobytes())])))
        assert fragment.lower() in responses[0].error_message.lower()
        assert not responses[1].error_message and responses[1].infer_response.model_name == "tiny"
        _assert_still_serves(channel)


def _config_load(config: str) -> pb.RepositoryModelLoadRequest:
    request = pb.RepositoryModelLoadRequest(model_name="tiny")
    request.parameters["config"].string_param = config
    return request


OTHER_CASES = [
    ("ModelMetadata", pb.ModelMetadataRequest(name="nope"), C.NOT_FOUND, "unknown model"),
    ("ModelMetadata", pb.ModelMetadataRequest(name="tiny", version="abc"), C.INVALID_ARGUMENT, "version"),
    ("ModelConfig", pb.ModelConfigRequest(name="tiny_cfg", version="1"), C.NOT_FOUND, "unknown version"),
    ("ModelConfig", pb.ModelConfigRequest(name="nope"), C.NOT_FOUND, "unknown model"),
    ("ModelStatistics", pb.ModelStatisticsRequest(name="nope"), C.NOT_FOUND, "unknown model"),
    ("ModelReady", pb.ModelReadyRequest(name="tiny", version="abc"), C.INVALID_ARGUMENT, "version"),
    ("RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name="..hidden"), C.INVALID_ARGUMENT,
     "invalid model name"),
    ("RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name="never_there"), C.NOT_FOUND,
     "no model directory"),
    ("RepositoryModelLoad", _config_load('{"instance_group": [{"count": 1000000}]}'), C.INVALID_ARGUMENT, "count"),
    ("RepositoryModelLoad", _config_load('{"max_batch_size": "\u00b2"}'), C.INVALID_ARGUMENT, "config"),
    ("RepositoryModelLoad", _config_load('{"parameters": ' * 1000 + "{}" + "}" * 1000), C.INVALID_ARGUMENT, "config"),
    ("RepositoryModelLoad", _config_load("{not json"), C.INVALID_ARGUMENT, "config"),
    ("LogSettings", pb.LogSettingsRequest(settings={"colour": pb.LogSettingsRequest.SettingValue(bool_param=True)}),
     C.INVALID_ARGUMENT, "unknown log setting"),
    ("SystemSharedMemoryRegister", pb.SystemSharedMemoryRegisterRequest(name="r", key="/../k", byte_size=8),
     C.INVALID_ARGUMENT, "invalid shared-memory key"),
    ("SystemSharedMemoryRegister", pb.SystemSharedMemoryRegisterRequest(name="r", key="/sepconv-none", byte_size=8),
     C.INVALID_ARGUMENT, "unable to open"),
    ("SystemSharedMemoryStatus", pb.SystemSharedMemoryStatusRequest(name="nope"), C.NOT_FOUND, "unable to find"),
    ("CudaSharedMemoryRegister", pb.CudaSharedMemoryRegisterRequest(name="g", byte_size=8), C.UNIMPLEMENTED,
     "not supported"),
]


@pytest.mark.parametrize(("rpc", "request_", "code", "fragment"), OTHER_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(OTHER_CASES)])
def test_bad_request_of_other_rpcs(server, rpc, request_, code, fragment) -> None:
    with grpc.insecure_channel(server.grpc_hostport) as channel:
        with pytest.raises(grpc.RpcError) as info:
            getattr(pb_grpc.GRPCInferenceServiceStub(channel), rpc)(request_)
        assert info.value.code() == code, info.value.details()
        assert fragment.lower() in info.value.details().lower()
        _assert_still_serves(channel)


def test_message_over_the_limit_is_resource_exhausted(server) -> None:
    """SEPCONV_MAX_REQUEST_BYTES (4 MiB for the test server) caps a gRPC message as it caps a REST body."""
    big = np.zeros((5, 512, 512, 3), np.float32)  # 15 MiB
    client = grpcclient.InferenceServerClient(server.grpc_hostport)
    inp = grpcclient.InferInput("input", list(big.shape), "FP32")
    inp.set_data_from_numpy(big)
    with pytest.raises(InferenceServerException) as info:
        client.infer("tiny", [inp])
    assert info.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    with grpc.insecure_channel(server.grpc_hostport) as channel:
        _assert_still_serves(channel)


def test_failures_are_counted_in_stats(server, triton_grpc) -> None:
    def fails() -> int:
        stats = triton_grpc.get_inference_statistics("tiny", as_json=True)["model_stats"][0]
        return int(stats["inference_stats"]["fail"].get("count", 0))

    before = fails()
    with grpc.insecure_channel(server.grpc_hostport) as channel, pytest.raises(grpc.RpcError):
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(tiny([1, 8, 8, 3], f32(3)))
    assert fails() == before + 1


def test_admin_token_guards_load_and_unload(model_repo) -> None:
    port = free_port()
    app = create_app(Settings(repo=model_repo, providers="cpu", admin_token="s3cret", access_log=False,
                              model_control="explicit", grpc_port=port))
    with running_server(app):
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        with pytest.raises(InferenceServerException) as info:
            client.unload_model("tiny")
        assert info.value.status() == "StatusCode.UNAUTHENTICATED" and "Bearer" in info.value.message()
        with pytest.raises(InferenceServerException) as info:
            client.unload_model("tiny", headers={"authorization": "Bearer wrong"})
        assert info.value.status() == "StatusCode.PERMISSION_DENIED"
        assert client.is_model_ready("tiny") and client.get_model_repository_index()  # reading needs no token
        client.unload_model("tiny", headers={"authorization": "Bearer s3cret"})
        assert not client.is_model_ready("tiny")
        inp = grpcclient.InferInput("input", list(GOOD_X.shape), "FP32")
        inp.set_data_from_numpy(GOOD_X)
        with pytest.raises(InferenceServerException) as info:
            client.infer("tiny", [inp])
        assert info.value.status() == "StatusCode.UNAVAILABLE" and "not ready" in info.value.message()
        client.load_model("tiny", headers={"authorization": "Bearer s3cret"})
        assert client.is_model_ready("tiny")
        with pytest.raises(InferenceServerException) as info:  # a log change is an admin call too
            client.update_log_settings({"log_info": True})
        assert info.value.status() == "StatusCode.UNAUTHENTICATED"
        assert client.get_log_settings()  # reading them is not
        client.update_log_settings({"log_info": True}, headers={"authorization": "Bearer s3cret"})
        client.close()


def test_model_control_none_refuses_admin_calls(model_repo) -> None:
    """The default model control ('none', as Triton's): load, unload and log changes are refused over gRPC too."""
    port = free_port()
    app = create_app(Settings(repo=model_repo, providers="cpu", access_log=False, grpc_port=port))
    with running_server(app):
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        for call in (lambda: client.unload_model("tiny"), lambda: client.load_model("tiny"),
                     lambda: client.update_log_settings({"log_verbose_level": 1})):
            with pytest.raises(InferenceServerException) as info:
                call()
            assert info.value.status() == "StatusCode.PERMISSION_DENIED" and "model control" in info.value.message()
        assert client.is_model_ready("tiny") and client.get_log_settings()
        client.close()


def test_health_overall_and_per_model(fresh_repo) -> None:
    port = free_port()
    app = create_app(Settings(repo=fresh_repo, providers="cpu", access_log=False, model_control="explicit",
                              grpc_port=port))
    with running_server(app), grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        check = lambda service: health.Check(health_pb2.HealthCheckRequest(service=service)).status  # noqa: E731
        serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
        assert check("") == serving
        assert check("inference.GRPCInferenceService") == serving
        assert check("tiny") == serving and check("multi_io") == serving
        with pytest.raises(grpc.RpcError) as info:
            check("no_such_model")
        assert info.value.code() == C.NOT_FOUND
        watch = health.Watch(health_pb2.HealthCheckRequest(service="tiny"))
        assert next(watch).status == serving
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        client.unload_model("tiny")
        assert check("tiny") == not_serving
        assert next(watch).status == not_serving  # watchers hear of it (registry hook)
        client.load_model("tiny")
        assert check("tiny") == serving
        assert next(watch).status == serving
        watch.cancel()
        client.close()


def test_reflection_lists_the_services(server) -> None:
    with grpc.insecure_channel(server.grpc_hostport) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = list(stub.ServerReflectionInfo(iter([
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="inference.GRPCInferenceService"),
        ])))
        names = {s.name for s in answers[0].list_services_response.service}
        assert {"inference.GRPCInferenceService", "grpc.health.v1.Health",
                "grpc.reflection.v1alpha.ServerReflection"} <= names
        files = answers[1].file_descriptor_response.file_descriptor_proto
        assert files and any(b"ModelInfer" in f for f in files)

