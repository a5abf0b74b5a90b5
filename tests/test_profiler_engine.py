"""The profiling engine without a server: node->layer mapping across architectures and ORT rewrites."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from sepconv.export import layers as L
from sepconv.export.graph import GraphBuilder
from sepconv.export.networks import build_network
from sepconv.export.padding import Pads
from sepconv.service.errors import Busy, InvalidInput, NotFound, TooLarge
from sepconv.service.profiling import trace as pt
from sepconv.service.profiling.engine import profile_model
from sepconv.service.profiling.gate import ProfileGate, TraceStore
from sepconv.service.profiling.isolated import layer_graphs
from sepconv.service.profiling.request import (
    ConvProfileRequest,
    ProfilePlan,
    ProfileRequest,
    plan_conv_profile,
    plan_profile,
)
from sepconv.service.profiling.timing import percentile, summarize
from sepconv.service.settings import Settings


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    return Settings(trace_dir=tmp_path / "traces", profile_keep_traces=2)


def _plan(settings: Settings, **fields: object) -> ProfilePlan:
    return plan_profile(ProfileRequest(**fields), settings)


@pytest.mark.parametrize(("arch", "layout", "fused"), [
    ("mobilenet_v3_small", "NCHW", False),  # ORT inlines HardSwish into HardSigmoid+Mul, unnamed
    ("mobilenet_v3_small", "NHWC", True),  # input Transpose; SE blocks; fused HardSwish
    ("mobilenet_v1", "NHWC", True),
])
def test_every_runtime_node_maps_to_a_layer(arch: str, layout: str, fused: bool, tmp_path: Path,
                                            settings: Settings) -> None:
    net = build_network(arch, alpha=0.5, resolution=64, input_layout=layout)
    path = tmp_path / "model.onnx"
    onnx.save(net.model, path)
    result = profile_model(path, arch, _plan(settings, runs=2, warmup=1, fused=fused),
                           TraceStore(settings.trace_dir, 2))
    assert [r["name"] for r in result["layers"]] == [la.name for la in net.layers]
    assert result["unattributed_nodes"] == []
    assert result["unattributed_us"]["p50"] == 0
    for row in result["layers"]:
        assert row.get("nodes") or row.get("fused_into"), row


def test_a_trace_profile_builds_two_sessions(tmp_path: Path, settings: Settings,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The traced session also writes the graph ORT runs (the node mapping needs it), then the untraced one for
    end-to-end time: two session builds, not a third just to learn the fused graph."""
    from sepconv.service.profiling import sessions

    made = []
    real = sessions.make_session

    def counting(model, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if model in (str(path), path, path.read_bytes()):  # not the roofline's microbenchmark graphs
            made.append(kwargs)
        return real(model, *args, **kwargs)
    monkeypatch.setattr(sessions, "make_session", counting)
    path = tmp_path / "residual.onnx"
    onnx.save(_residual_graph(), path)
    result = profile_model(path, "residual", _plan(settings, runs=2, warmup=1), TraceStore(settings.trace_dir, 2))
    assert len(made) == 2 and made[0].get("enable_profiling") and made[0].get("optimized_model_path"), made
    rows = {r["name"]: r for r in result["layers"]}
    assert rows["add"]["fused_into"] == "project"  # read from the runtime graph: ORT fused the Add into the conv


def _residual_graph() -> onnx.ModelProto:
    """conv(8) -> depthwise -> project(8) + residual add: 8 channels force ORT's ReorderOutput nodes."""
    rng = np.random.default_rng(0)
    b = GraphBuilder("residual")
    x = L.network_input(b, "input", "NCHW", 3, 16, 16)
    x = L.conv2d(b, x, rng.standard_normal((3, 3, 3, 8)), name="stem", act="relu6")
    y = L.depthwise_conv2d(b, x, rng.standard_normal((3, 3, 8, 1)), name="dw", act="relu6")
    y = L.conv2d(b, y, rng.standard_normal((1, 1, 8, 8)), bias=np.zeros(8), name="project")
    x = L.add(b, x, y, name="add")
    L.network_output(b, x, "out", "NCHW")
    summary = {"layers": [la.as_dict() for la in b.layers]}
    return b.to_model({"sepconv.summary": json.dumps(summary)})


def test_fused_add_and_layout_nodes(tmp_path: Path, settings: Settings) -> None:
    path = tmp_path / "residual.onnx"
    onnx.save(_residual_graph(), path)
    result = profile_model(path, "residual", _plan(settings, runs=3, warmup=1),
                           TraceStore(settings.trace_dir, 2))
    rows = {r["name"]: r for r in result["layers"]}
    assert rows["add"]["fused_into"] == "project" and rows["add"]["time_us"]["p50"] == 0
    assert any(n.endswith("_nchwc") for n in rows["project"]["nodes"])
    assert result["unattributed_nodes"] == []
    unfused = profile_model(path, "residual", _plan(settings, runs=3, warmup=1, fused=False),
                            TraceStore(settings.trace_dir, 2))
    rows = {r["name"]: r for r in unfused["layers"]}
    assert rows["add"]["nodes"] == ["add"] and rows["stem"]["nodes"] == ["stem", "stem_relu6"]


def test_trace_runs_and_percentiles() -> None:
    events = [
        {"cat": "Session", "name": "model_run", "ts": 0, "dur": 100},
        {"cat": "Node", "name": "a_kernel_time", "ts": 10, "dur": 30, "args": {"provider": "CPUExecutionProvider"}},
        {"cat": "Node", "name": "b_kernel_time", "ts": 50, "dur": 20},
        {"cat": "Session", "name": "model_run", "ts": 200, "dur": 100},
        {"cat": "Node", "name": "a_kernel_time", "ts": 210, "dur": 40},
        {"cat": "Node", "name": "a_kernel_time", "ts": 260, "dur": 5},  # a node run twice in one run adds up
        {"cat": "Node", "name": "stray_kernel_time", "ts": 500, "dur": 99},  # outside every run
    ]
    assert pt.runs_of(events) == [{"a": 30.0, "b": 20.0}, {"a": 45.0}]
    assert pt.execution_order(events) == ["a", "a"]
    assert pt.run_walls(events) == [100.0, 100.0]
    assert percentile([1, 2, 3, 4, 5], 90) == pytest.approx(4.6)
    assert summarize([3.0, 1.0, 2.0]) == {"p50": 2.0, "p90": 2.8}


def test_layer_graphs_are_standalone_models() -> None:
    model = _residual_graph()
    layers = json.loads(model.metadata_props[0].value)["layers"]
    graphs = {lg.name: lg for lg in layer_graphs(model, layers)}
    assert set(graphs) == {"stem", "dw", "project", "add"}
    add = graphs["add"].model
    assert add is not None and len(add.graph.input) == 2  # the residual and the projection
    for lg in graphs.values():
        onnx.checker.check_model(lg.model, full_check=True)


def test_trace_store_keeps_the_newest(tmp_path: Path) -> None:
    store = TraceStore(tmp_path, keep=2)
    ids = [store.save([{"name": str(i)}], {}) for i in range(3)]
    assert store.path(ids[-1]).is_file() and store.path(ids[-1] + ".json").is_file()
    with pytest.raises(NotFound, match="no trace"):
        store.path(ids[0])
    for bad in ("../../etc/passwd", "a" * 31, "A" * 32):
        with pytest.raises(NotFound, match="no trace"):
            store.path(bad)


def test_the_gate_lets_one_profile_run() -> None:
    gate = ProfileGate()
    with gate.hold("first"):
        with pytest.raises(Busy, match="already running on this server \\(first\\)") as busy:
            with gate.hold("second"):
                pass
        assert busy.value.retry_after is not None and busy.value.retry_after >= 1
    with gate.hold("third"):  # released after the first one
        assert gate.running == "third"


def test_plans_are_validated_once_with_typed_errors(settings: Settings) -> None:
    plan = plan_profile(ProfileRequest(fused=False, threads=1), settings)
    assert (plan.method, plan.provider, plan.session.optimization) == ("trace", "cpu", "disable")
    assert plan.session.settings.intra_op_threads == 1
    with pytest.raises(InvalidInput, match="runs"):
        plan_profile(ProfileRequest(runs=0), settings)
    with pytest.raises(InvalidInput, match="max_batch_size"):
        plan_profile(ProfileRequest(batch_size=5), settings, model_max_batch=4)
    with pytest.raises(TooLarge, match="G multiply-adds"):
        plan_profile(ProfileRequest(batch_size=8, runs=100), settings, metadata={"macs": str(10**10)})
    conv = plan_conv_profile(ConvProfileRequest(input_shape=[1, 15, 15, 8], filters=16, kernel_size=[3, 5],
                                                strides=2, padding="VALID"), settings)
    g = conv.geometry
    assert (conv.kernel, g.strides, g.padding, conv.out_hw) == ((3, 5), (2, 2), Pads(0, 0, 0, 0), (7, 6))
    with pytest.raises(TooLarge):
        plan_conv_profile(ConvProfileRequest(input_shape=[1, 4096, 4096, 64], filters=64), settings)
