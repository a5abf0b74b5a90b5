"""Per-layer profiling over a real server: /v1/models/{m}/summary, /profile, /v1/profile/conv, traces, CLI."""

from __future__ import annotations

import csv
import json
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from sepconv.export.networks import build_network
from sepconv.export.repository.writer import write_model
from sepconv.export.summary import by_kind as exporter_by_kind
from sepconv.service.app import create_app
from sepconv.service.settings import Settings
from tests.serving import running_server

SMALL = "mobilenet_v2_0.35_96"
FULL = "mobilenet_v2_1.0_224"
FOREIGN = "foreign_small"  # no sepconv.summary metadata: layers come from the graph
HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.fixture(scope="module")
def built() -> dict:
    return {
        SMALL: build_network("mobilenet_v2", alpha=0.35, resolution=96),
        FULL: build_network("mobilenet_v2", alpha=1.0, resolution=224),
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, built: dict):
    root = tmp_path_factory.mktemp("profiling")
    repo = root / "models"
    write_model(built[SMALL].model, repo, SMALL, max_batch=4)
    write_model(built[FULL].model, repo, FULL, max_batch=8)
    foreign = onnx.ModelProto()
    foreign.CopyFrom(built[SMALL].model)
    del foreign.metadata_props[:]
    write_model(foreign, repo, FOREIGN, max_batch=4)
    settings = Settings(repo=repo, trace_dir=root / "traces", profile_max_runs=100, profile_keep_traces=4,
                        profile_max_gmacs=200)
    with running_server(create_app(settings)) as url:
        yield url


def _profile(url: str, model: str, **body) -> httpx.Response:
    return httpx.post(f"{url}/v1/models/{model}/profile", json=body, timeout=600)


def _check_layers(result: dict, net, timed: bool = True) -> None:
    """One row per exporter layer, in network order, with the exporter's accounting."""
    layers = net.layers
    assert [r["name"] for r in result["layers"]] == [la.name for la in layers]
    for row, la in zip(result["layers"], layers, strict=True):
        assert (row["kind"], row["macs"], row["params"]) == (la.kind, la.macs, la.params)
        assert row["output_shape"] == la.output_shape
        assert row["time_us"]["p90"] >= row["time_us"]["p50"] >= 0
    expected = exporter_by_kind(net.summary())
    assert set(result["by_kind"]) == set(expected)
    for kind, shares in expected.items():
        got = result["by_kind"][kind]
        assert got["count"] == shares["count"]
        assert got["macs_percent"] == pytest.approx(shares["macs_percent"], abs=0.01)
        assert got["params_percent"] == pytest.approx(shares["params_percent"], abs=0.01)
    assert sum(k["time_percent"] for k in result["by_kind"].values()) == pytest.approx(100.0, abs=0.05)
    assert sum(r["percent"] for r in result["layers"]) == pytest.approx(100.0, abs=0.05)
    assert result["e2e_ms"]["p90"] >= result["e2e_ms"]["p50"] > 0
    # the time a layer costs goes to the conv/dense layers: every one of them was seen running
    for row in result["layers"] if timed else []:
        if row["kind"] != "other" and not row.get("fused_into"):
            assert row["time_us"]["p50"] > 0, row
            assert row["gmacs_per_s"] > 0


# --------------------------------------------------------------------------------------------
# summary
# --------------------------------------------------------------------------------------------
def test_summary_is_the_exporters(server: str, built: dict) -> None:
    r = httpx.get(f"{server}/v1/models/{SMALL}/summary")
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body.pop("precision"), body.pop("drift")) == ("fp32", None)  # an FP32 export: no drift report
    assert body == json.loads(json.dumps(built[SMALL].summary()))
    assert all("onnx_nodes" not in layer for layer in r.json()["layers"])


def test_summary_of_a_model_without_metadata_is_read_off_the_graph(server: str, built: dict) -> None:
    r = httpx.get(f"{server}/v1/models/{FOREIGN}/summary")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["source"] == "graph"
    assert body["macs"] == built[SMALL].summary()["macs"]  # the same convs, counted from the graph


# --------------------------------------------------------------------------------------------
# model profiles
# --------------------------------------------------------------------------------------------
def test_fused_profile_maps_fused_nodes_to_layers(server: str, built: dict) -> None:
    r = _profile(server, SMALL, runs=5, warmup=2, batch_size=2)
    assert r.status_code == 200, r.text
    result = r.json()
    assert (result["model"], result["provider"], result["batch_size"], result["runs"]) == (SMALL, "cpu", 2, 5)
    assert result["method"] == "trace" and result["fused"] is True
    _check_layers(result, built[SMALL])
    assert result["unattributed_nodes"] == [] and result["unattributed_us"]["p50"] == 0
    # ORT fuses the residual Adds into the projecting conv: they read as fused, not as missing
    adds = [r for r in result["layers"] if r["op_type"] == "Add"]
    assert adds and all(a["fused_into"].endswith("_project") for a in adds)
    assert any(n.endswith("_nchwc") for row in result["layers"] for n in row.get("nodes", []))
    assert result["layer_sum_ms"] > 0 and result["gap_percent"] is not None

    trace = httpx.get(result["trace_url"])
    assert trace.status_code == 200
    doc = trace.json()
    names = {r["name"] for r in result["layers"]}
    kernels = [e for e in doc["traceEvents"] if e.get("cat") == "Node"]
    assert kernels and all(e["args"]["layer"] in names for e in kernels)
    assert all(e["ph"] == "X" and "ts" in e and "dur" in e for e in kernels)  # Chrome trace events
    # exactly our warm-up + timed runs were traced: no serving request ever lands in a profile
    assert sum(1 for e in doc["traceEvents"] if str(e.get("name", "")).startswith("model_run")) == 7


def test_unfused_profile_has_one_node_per_op(server: str, built: dict) -> None:
    result = _profile(server, SMALL, runs=3, warmup=1, fused=False, threads=1).json()
    assert result["fused"] is False and result["graph_optimization"] == "disable" and result["threads"] == 1
    _check_layers(result, built[SMALL])
    for row, la in zip(result["layers"], built[SMALL].layers, strict=True):
        assert "fused_into" not in row
        assert row["time_us"]["p50"] > 0
        assert len(row["nodes"]) == len(la.onnx_nodes)


def test_mobilenet_v2_224_fused_and_unfused(server: str, built: dict) -> None:
    figures, nodes = {}, {}
    for fused in (True, False):
        r = _profile(server, FULL, runs=10, warmup=3, fused=fused)
        assert r.status_code == 200, r.text
        result = r.json()
        _check_layers(result, built[FULL])
        # summed layer time vs end to end: reported (the goal is within 15% on a quiet machine); here only
        # what holds under any load: the figure is consistent, and kernel time fits inside the traced runs
        e2e, layer_sum = result["e2e_ms"]["p50"], result["layer_sum_ms"]
        assert result["gap_percent"] == pytest.approx(100 * (e2e - layer_sum) / e2e, abs=0.02)
        assert 0 < layer_sum <= 2 * result["traced_run_ms"]["p90"]
        figures[fused] = (result["e2e_ms"]["p50"], result["layer_sum_ms"], result["gap_percent"])
        nodes[fused] = sum(len(row.get("nodes", [])) for row in result["layers"])
    # ORT fused the graph (Conv+Clip, residual Adds): fewer runtime nodes than the one-node-per-op view
    assert nodes[False] == sum(len(la.onnx_nodes) for la in built[FULL].layers) > nodes[True]
    print(f"\n{FULL} e2e p50 / layer sum / gap%: fused {figures[True]}, unfused {figures[False]}; "
          f"runtime nodes {nodes[True]} vs {nodes[False]}")


def test_isolated_method_times_every_layer(server: str, built: dict) -> None:
    """The CUDA method (each layer its own graph, device-synchronised runs) also runs on CPU."""
    result = _profile(server, SMALL, runs=2, warmup=1, method="isolated").json()
    assert result["method"] == "isolated" and "overhead_us" in result
    _check_layers(result, built[SMALL], timed=False)  # tiny CPU layers may sit within the overhead's noise
    assert all("fused_into" not in r for r in result["layers"])  # each layer runs on its own
    trace = httpx.get(result["trace_url"]).json()
    assert {e["name"] for e in trace["traceEvents"] if e["cat"] == "Layer"} == {r["name"] for r in result["layers"]}


def test_profile_of_a_model_without_metadata(server: str, built: dict) -> None:
    result = _profile(server, FOREIGN, runs=2, warmup=1).json()
    assert result["layer_source"] == "graph"
    assert result["unattributed_nodes"] == []
    assert len(result["layers"]) == len(built[SMALL].model.graph.node)  # one row per ONNX node
    assert result["by_kind"]["depthwise"]["count"] == 17


def test_serving_during_a_profile_succeeds_and_second_profile_gets_429(server: str) -> None:
    outcome: dict = {}

    def long_profile() -> None:
        for _ in range(100):  # our own probe below may hold the server for a moment before this starts
            outcome["profile"] = _profile(server, FULL, runs=60, warmup=5, fused=False)
            if outcome["profile"].status_code != 429:
                return
            time.sleep(0.05)

    x = np.random.default_rng(0).standard_normal((1, 3, 96, 96)).astype(np.float32)
    infer = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    thread = threading.Thread(target=long_profile)
    thread.start()
    statuses, busy = [], []
    with httpx.Client(timeout=120) as client:
        while thread.is_alive():
            statuses.append(client.post(f"{server}/v2/models/{SMALL}/infer", json=infer).status_code)
            if not busy and len(statuses) > 3:
                second = client.post(f"{server}/v1/models/{SMALL}/profile", json={"runs": 1, "warmup": 0})
                if second.status_code == 429:
                    busy.append(second)
    thread.join()
    assert outcome["profile"].status_code == 200, outcome["profile"].text
    assert statuses and all(s == 200 for s in statuses), statuses
    assert busy, "a second profile while one runs must be refused with 429"
    assert int(busy[0].headers["Retry-After"]) >= 1
    assert "already running" in busy[0].json()["error"]
    # the serving requests that ran meanwhile are not in the profile: only its own 65 runs were traced
    trace = httpx.get(outcome["profile"].json()["trace_url"]).json()
    assert sum(1 for e in trace["traceEvents"] if str(e.get("name", "")).startswith("model_run")) == 65


def test_old_traces_are_dropped(server: str) -> None:
    urls = [_profile(server, SMALL, runs=1, warmup=0).json()["trace_url"] for _ in range(5)]
    assert httpx.get(urls[0]).status_code == 404  # the server keeps the newest 4
    assert httpx.get(urls[-1]).status_code == 200


@pytest.mark.parametrize(("model", "body", "status", "needle"), [
    ("no_such_model", {}, 404, "unknown model"),
    (SMALL, {"runs": 0}, 400, "runs"),
    (SMALL, {"runs": 10**6}, 400, "runs"),
    (SMALL, {"warmup": -1}, 400, "warmup"),
    (SMALL, {"batch_size": 5}, 400, "max_batch_size"),
    (SMALL, {"batch_size": 0}, 400, "batch_size"),
    (SMALL, {"provider": "tpu"}, 400, "unknown provider"),
    (SMALL, {"threads": 0}, 400, "threads"),
    (SMALL, {"threads": 10**4}, 400, "threads"),
    (SMALL, {"method": "guess"}, 422, "method"),
    (SMALL, {"runs": "many"}, 422, "runs"),
    (SMALL, {"batch": 2}, 422, "batch"),
    (SMALL, {"runs": True}, 422, "runs"),  # strict: a boolean is not a run count
    (SMALL, {"fused": "yes"}, 422, "fused"),
    (FULL, {"batch_size": 8, "runs": 100}, 413, "G multiply-adds"),  # over the compute budget
])
def test_bad_profile_requests(server: str, model: str, body: dict, status: int, needle: str) -> None:
    r = _profile(server, model, **body)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]


@pytest.mark.skipif(HAS_CUDA, reason="this server has CUDA")
def test_cuda_without_a_gpu_is_a_clear_400(server: str) -> None:
    for r in (_profile(server, SMALL, provider="cuda"),
              httpx.post(f"{server}/v1/profile/conv", json={"input_shape": [1, 8, 8, 4], "filters": 4,
                                                            "provider": "cuda"})):
        assert r.status_code == 400
        assert "CUDA" in r.json()["error"]


def test_trace_route_is_not_a_file_server(server: str) -> None:
    for bad in ("..%2F..%2Fetc%2Fpasswd", "0" * 32, "not-a-trace.json", "%2Fetc%2Fpasswd"):
        r = httpx.get(f"{server}/v1/profile/traces/{bad}")
        assert r.status_code == 404, (bad, r.text)
        assert "error" in r.json()


# --------------------------------------------------------------------------------------------
# /v1/profile/conv
# --------------------------------------------------------------------------------------------
def test_conv_profile_112x112x32_to_64_k3(server: str) -> None:
    r = httpx.post(f"{server}/v1/profile/conv", timeout=600,
                   json={"input_shape": [1, 112, 112, 32], "kernel_size": 3, "filters": 64, "runs": 5, "warmup": 1})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["theoretical_ratio"] == pytest.approx(1 / 64 + 1 / 9, rel=1e-12)
    assert body["macs_ratio"] == pytest.approx(1 / 64 + 1 / 9, rel=1e-12)
    expected = {"standard": (3 * 3 * 32 * 64, 112 * 112 * 3 * 3 * 32 * 64),
                "depthwise": (3 * 3 * 32, 112 * 112 * 3 * 3 * 32),
                "pointwise": (32 * 64, 112 * 112 * 32 * 64),
                "separable": (3 * 3 * 32 + 32 * 64, 112 * 112 * (3 * 3 * 32 + 32 * 64))}
    for variant, (params, macs) in expected.items():
        assert (body[variant]["params"], body[variant]["macs"]) == (params, macs), variant
        assert body[variant]["time_us"]["p90"] >= body[variant]["time_us"]["p50"] > 0
    assert body["measured_ratio"] == pytest.approx(
        body["separable"]["time_us"]["p50"] / body["standard"]["time_us"]["p50"], rel=1e-3)
    print(f"\nconv 112x112x32->64 k3: theoretical {body['theoretical_ratio']:.4f}, "
          f"measured {body['measured_ratio']:.4f} (best-of {body['measured_ratio_min']:.4f})")


def test_conv_profile_strides_and_multiplier(server: str) -> None:
    body = httpx.post(f"{server}/v1/profile/conv", timeout=120, json={
        "input_shape": [2, 15, 15, 8], "kernel_size": [3, 5], "filters": 16, "strides": 2, "padding": "VALID",
        "depth_multiplier": 2, "runs": 2, "warmup": 0}).json()
    assert body["depthwise"]["output_shape"] == [7, 6, 16]
    assert body["pointwise"]["macs"] == 7 * 6 * 16 * 16
    assert body["theoretical_ratio"] == pytest.approx(1 / 16 + 1 / 15)
    explicit = httpx.post(f"{server}/v1/profile/conv", timeout=120, json={
        "input_shape": [1, 8, 8, 4], "filters": 4, "padding": [[0, 0], [2, 0], [0, 2], [0, 0]], "runs": 1}).json()
    assert explicit["standard"]["output_shape"] == [8, 8, 4]


@pytest.mark.parametrize(("body", "status"), [
    ({"input_shape": [1, 8, 8], "filters": 4}, 400),
    ({"input_shape": [1, 8, 8, 4], "filters": 0}, 400),
    ({"input_shape": [1, 8, 8, 4], "filters": 4, "kernel_size": 0}, 400),
    ({"input_shape": [1, 8, 8, 4], "filters": 4, "runs": 0}, 400),
    ({"input_shape": [1, 8, 8, 4], "filters": 4, "padding": "MIRROR"}, 400),
    ({"input_shape": [1, 8, 8, 4], "filters": 4, "strides": 0}, 400),
    ({"input_shape": [1, 8, 8, 4], "filters": 4, "provider": "abacus"}, 400),
    ({"input_shape": [1, 2, 2, 4], "filters": 4, "kernel_size": 5, "padding": "VALID"}, 400),
    ({"input_shape": [1, 8, 8, 4], "filters": 4, "padding": [[1, 1], [1, 1], [1, 1], [1, 1]]}, 400),
    ({"input_shape": [1, 4096, 4096, 64], "filters": 64}, 413),
    ({"input_shape": [1, 512, 512, 64], "filters": 4096, "kernel_size": 7}, 413),
    ({"input_shape": [1, 112, 112, 64], "filters": 256, "runs": 100}, 413),  # over the compute budget
    ({"filters": 4}, 422),
    ({"input_shape": [1, 8, 8, True], "filters": 4}, 422),
    ({"input_shape": [1, 8, 8, 4], "filters": 4, "runs": 2.5}, 422),
])
def test_bad_conv_profile_requests(server: str, body: dict, status: int) -> None:
    r = httpx.post(f"{server}/v1/profile/conv", json=body, timeout=60)
    assert r.status_code == status, r.text
    assert r.json()["error"]


# --------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU)
# --------------------------------------------------------------------------------------------
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDAExecutionProvider in this onnxruntime")
def test_cuda_profile_reports_device_times(server: str, built: dict) -> None:
    r = _profile(server, SMALL, runs=5, warmup=2, provider="cuda")
    if r.status_code == 400 and "did not start" in r.text:
        pytest.skip("CUDA is listed but does not start here")
    result = r.json()
    assert result["method"] == "isolated" and result["execution_provider"] == "CUDAExecutionProvider"
    # a tiny layer's GPU time may sit within the noise of the subtracted launch+sync overhead (then 0)
    _check_layers(result, built[SMALL], timed=False)
    heaviest = max(result["layers"], key=lambda row: row["macs"])
    assert heaviest["time_us"]["p50"] > 0 and result["layer_sum_ms"] > 0
    trace = _profile(server, SMALL, provider="cuda", method="trace")
    assert trace.status_code == 400 and "launch" in trace.json()["error"]
    conv = httpx.post(f"{server}/v1/profile/conv", timeout=300, json={
        "input_shape": [1, 112, 112, 32], "kernel_size": 3, "filters": 64, "runs": 10, "provider": "cuda"}).json()
    assert conv["execution_provider"] == "CUDAExecutionProvider" and conv["measured_ratio"] > 0


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def _cli(*args: str):
    from sepconv.cli import _register, app  # noqa: PLC0415

    _register()
    return CliRunner().invoke(app, list(args))


def test_cli_profile_table_json_and_csv(server: str, tmp_path: Path, built: dict) -> None:
    table = _cli("profile", "--url", server, SMALL, "--runs", "2", "--warmup", "1")
    assert table.exit_code == 0, table.output
    assert "by kind" in table.output and "depthwise" in table.output and "block_16_project" in table.output

    as_json = _cli("profile", "--url", server, SMALL, "--runs", "2", "--batch", "2", "--unfused", "--json")
    assert as_json.exit_code == 0, as_json.output
    result = json.loads(as_json.stdout)
    assert result["batch_size"] == 2 and result["fused"] is False
    assert len(result["layers"]) == len(built[SMALL].layers)

    out = tmp_path / "layers.csv"
    assert _cli("profile", "--url", server, SMALL, "--runs", "2", "--csv", str(out)).exit_code == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == len(built[SMALL].layers)
    times = [float(r["time_us_p50"]) for r in rows]
    assert times == sorted(times, reverse=True)  # sorted by time

    bad = _cli("profile", "--url", server, SMALL, "--runs", "0")
    assert bad.exit_code == 1 and "runs" in bad.output
    unwritable = _cli("profile", "--url", server, SMALL, "--runs", "1", "--csv", str(tmp_path / "no" / "x.csv"))
    assert unwritable.exit_code == 1 and "cannot write" in unwritable.output
