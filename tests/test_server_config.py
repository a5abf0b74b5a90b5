"""config.pbtxt reading, auto-completion against real ORT sessions, provider resolution."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest
from pydantic import ValidationError

from sepconv.service.errors import InvalidInput
from sepconv.service.registry import pbtxt
from sepconv.service.registry.model_config import (
    ConfigError,
    ModelConfig,
    complete_config,
    config_from_json,
    parse_config,
)
from sepconv.service.rest.errors import status_of
from sepconv.service.runtime.sessions import ProviderError, cuda_provider_options, make_session, resolve_providers
from sepconv.service.settings import Settings
from tests.conftest import build_cnn, build_fixed

FULL = """
# a Triton config with most of what can appear
name: "m"
platform: "onnxruntime_onnx"
max_batch_size: 16
input [
  {
    name: "input"
    data_type: TYPE_FP32
    format: FORMAT_NHWC
    dims: [ 8, 8, 3 ]
  }
]
output { name: "logits", data_type: TYPE_FP32, dims: [ 5 ] }
instance_group [ { count: 2 kind: KIND_CPU } ]
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  preferred_batch_size: 16
  max_queue_delay_microseconds: 100
}
version_policy: { latest: { num_versions: 2 } }
parameters { key: "note" value: { string_value: "a \\"quoted\\" value" } }
optimization { execution_accelerators { cpu_execution_accelerator : [ { name : "openvino" } ] } }
"""


def test_pbtxt_forms() -> None:
    fields = pbtxt.parse('a: 1 b { c: "x" c: \'y\' } d: [1, 2.5, -3] e < f: true > g: ENUM_V; h: 0x10')
    assert fields["a"] == [1] and fields["b"][0]["c"] == ["x", "y"] and fields["d"] == [1, 2.5, -3]
    assert fields["e"] == [{"f": [True]}] and fields["g"] == ["ENUM_V"] and fields["h"] == [16]
    for bad in ('a: { b: 1', 'a 1', '"x": 1', 'a: [1, 2', 'a: @'):
        with pytest.raises(pbtxt.PbtxtError):
            pbtxt.parse(bad)


def test_parse_full_config() -> None:
    cfg = parse_config(FULL, "m")
    assert cfg.max_batch_size == 16
    assert [(t.name, t.datatype, t.dims) for t in cfg.inputs] == [("input", "FP32", [8, 8, 3])]
    assert cfg.outputs[0].dims == [5]
    assert cfg.instance_kind == "KIND_CPU" and cfg.instance_count == 2
    assert cfg.dynamic_batching.preferred_batch_size == (4, 8, 16)
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 100
    assert cfg.version_policy == ("latest", 2)
    assert cfg.select_versions([1, 2, 3]) == [2, 3]
    assert cfg.parameters == {"note": 'a "quoted" value'}
    js = cfg.to_json()
    assert js["input"][0]["format"] == "FORMAT_NHWC"  # unmodelled fields are echoed back
    assert "execution_accelerators" in js["optimization"] or "optimization" in js
    assert config_from_json(js, "m").to_json() == js  # JSON round trip (load with a config override)


@pytest.mark.parametrize(("text", "fragment"), [
    ('name: "other"', "directory"),
    ('platform: "tensorrt_plan"', "not served"),
    ("max_batch_size: -1", ">= 0"),
    ('input [ { name: "x" data_type: TYPE_FOO dims: [1] } ]', "data_type"),
    ('input [ { name: "x" data_type: TYPE_FP32 dims: [0] } ]', "dims"),
    ("instance_group [ { kind: KIND_MODEL } ]", "KIND_MODEL"),
    ("version_policy { latest { num_versions: 0 } }", "num_versions"),
    ('default_model_filename: "../x.onnx"', "plain file name"),
    ("max_batch_size: 1.5", "integer"),
])
def test_bad_configs(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        parse_config(text, "m")


def test_auto_complete_and_checks(tmp_path: Path) -> None:
    sess = ort.InferenceSession(str(build_cnn(tmp_path / "cnn.onnx")), providers=["CPUExecutionProvider"])
    done = complete_config(ModelConfig(name="m"), sess.get_inputs(), sess.get_outputs(), 8, 250)
    assert done.max_batch_size == 8 and done.dynamic_batching.max_queue_delay_microseconds == 250
    assert done.inputs[0].dims == [8, 8, 3] and done.outputs[0].dims == [5]
    assert set(done.auto_completed) >= {"max_batch_size", "input", "output"}
    with pytest.raises(ConfigError, match="dims"):
        complete_config(parse_config('max_batch_size: 2 input [{name: "input" data_type: TYPE_FP32 dims: [3,8,8]}]',
                                     "m"), sess.get_inputs(), sess.get_outputs(), 8, 0)
    with pytest.raises(ConfigError, match="FP16"):
        complete_config(parse_config('input [{name: "input" data_type: TYPE_FP16 dims: [8,8,3]}]', "m"),
                        sess.get_inputs(), sess.get_outputs(), 8, 0)
    with pytest.raises(ConfigError, match="not a input"):
        complete_config(parse_config('input [{name: "image" data_type: TYPE_FP32 dims: [8,8,3]}]', "m"),
                        sess.get_inputs(), sess.get_outputs(), 8, 0)
    fixed = ort.InferenceSession(str(build_fixed(tmp_path / "fixed.onnx")), providers=["CPUExecutionProvider"])
    assert complete_config(ModelConfig(name="f"), fixed.get_inputs(), fixed.get_outputs(), 8, 0).max_batch_size == 0
    with pytest.raises(ConfigError, match="dynamic batch"):
        complete_config(parse_config("max_batch_size: 4", "f"), fixed.get_inputs(), fixed.get_outputs(), 8, 0)


def test_resolve_providers_and_session_options(tmp_path: Path) -> None:
    s = Settings(providers="cpu")
    assert resolve_providers(None, s) == ["CPUExecutionProvider"]
    assert resolve_providers("cuda", s) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers(["cpuexecutionprovider"], s) == ["CPUExecutionProvider"]
    auto = resolve_providers("auto", s)
    assert auto[-1] == "CPUExecutionProvider"
    assert ("CUDAExecutionProvider" in auto) == ("CUDAExecutionProvider" in ort.get_available_providers())
    with pytest.raises(ProviderError, match="unknown execution provider") as err:
        resolve_providers("tpu", s)
    assert isinstance(err.value, InvalidInput) and status_of(err.value) == 400
    path = build_fixed(tmp_path / "fixed.onnx")
    sess = make_session(path, Settings(graph_optimization="basic", intra_op_threads=1), providers="cpu")
    assert sess.get_providers() == ["CPUExecutionProvider"]
    assert make_session(path.read_bytes(), Settings(), optimization="disable").get_inputs()[0].name == "x"
    with pytest.raises(InvalidInput, match="optimisation level"):
        make_session(path, Settings(), optimization="turbo")


def test_cuda_options_keep_fp32_exact() -> None:
    """What a CUDA session is given (checked without a GPU): no TF32 unless asked, cuDNN algorithm search."""
    options = cuda_provider_options(Settings())
    assert options["use_tf32"] == "0"  # TF32 would round conv inputs to 10 mantissa bits: not TF's FP32 numbers
    assert options["cudnn_conv_algo_search"] == "EXHAUSTIVE"
    assert options["device_id"] == "0" and options["arena_extend_strategy"] == "kNextPowerOfTwo"
    fast = cuda_provider_options(Settings(cuda_use_tf32=True, cudnn_conv_algo_search="HEURISTIC", cuda_device_id=1))
    assert fast["use_tf32"] == "1" and fast["cudnn_conv_algo_search"] == "HEURISTIC" and fast["device_id"] == "1"
    with pytest.raises(ValidationError):
        Settings(cudnn_conv_algo_search="FASTEST")
