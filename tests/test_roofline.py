"""Roofline fields of a profile, the device ceilings route, layer times that add up (quiet and loaded), and the
model page's server-rendered charts checked mark by mark against the API's numbers."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from sepconv.export.networks import build_network
from sepconv.export.repository.writer import write_model
from sepconv.service.app import create_app
from sepconv.service.profiling.roofline import ROOFLINE_KINDS
from sepconv.service.settings import Settings
from tests.serving import running_server

SMALL = "mobilenet_v2_0.35_96"
FULL = "mobilenet_v2_1.0_224"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("roofline")
    repo = root / "models"
    write_model(build_network("mobilenet_v2", alpha=0.35, resolution=96).model, repo, SMALL, max_batch=4)
    write_model(build_network("mobilenet_v2", alpha=1.0, resolution=224).model, repo, FULL, max_batch=4)
    settings = Settings(repo=repo, trace_dir=root / "traces", profile_max_runs=100, profile_max_gmacs=200)
    with running_server(create_app(settings)) as url:
        yield url


def _profile(url: str, model: str, **body) -> dict:
    r = httpx.post(f"{url}/v1/models/{model}/profile", json=body, timeout=600)
    assert r.status_code == 200, r.text
    return r.json()


def test_roofline_fields_are_consistent(server: str) -> None:
    for batch in (1, 2):
        result = _profile(server, SMALL, runs=5, warmup=2, batch_size=batch)
        roof = result["roofline"]
        peak, bw = roof["peak_gmacs_per_s"], roof["bandwidth_gb_per_s"]
        assert peak > 0 and bw > 0 and roof["ridge_macs_per_byte"] == pytest.approx(peak / bw, rel=1e-3)
        ridge = peak / bw
        for row in result["layers"]:
            assert {"bytes", "arithmetic_intensity", "bound", "roof_percent"} <= row.keys()
            assert row["bound"] in ("memory", "compute")
            if not row["macs"]:
                assert row["roof_percent"] is None and row["arithmetic_intensity"] == 0
                continue
            assert row["bytes"] > 0
            ai = row["macs"] * batch / row["bytes"]
            assert row["arithmetic_intensity"] == pytest.approx(ai, rel=1e-3, abs=1e-4)
            assert row["bound"] == ("compute" if ai >= ridge else "memory")
            if row["time_us"]["p50"] > 0:
                attained = row["macs"] * batch / (row["time_us"]["p50"] * 1e3)
                expected = 100 * attained / min(peak, bw * ai)
                assert row["roof_percent"] == pytest.approx(expected, rel=1e-2, abs=0.02)
                # bounded: a layer cannot beat the device's ceilings by an order of magnitude. Cache-resident data
                # beats the streaming bandwidth (the classifier's 5 MB of weights sit in a 32 MB L3: 304 % was seen
                # with the bandwidth measured under load); wrong bytes or a wrong roof would be far above
                assert 0 < row["roof_percent"] < 1000, row
        if batch == 1:
            by_name = {r["name"]: r for r in result["layers"]}
        else:  # activations scale with the batch, weights do not
            for row in result["layers"]:
                one = by_name[row["name"]]
                assert one["bytes"] <= row["bytes"] <= 2 * one["bytes"]
    # the first conv: weights 3x3x3x(32*0.35 -> 16) + bias, input 96x96x3, output 48x48x16, FP32 (plus the few
    # bytes of its Pad node's constants: TF's SAME at stride 2 pads asymmetrically)
    conv1 = by_name["Conv1"]
    c = conv1["output_shape"][-1]
    assert 0 <= conv1["bytes"] - 4 * (3 * 3 * 3 * c + c + 96 * 96 * 3 + 48 * 48 * c) <= 64


def test_ceilings_route_caches_and_remeasures(server: str) -> None:
    first = httpx.get(f"{server}/v1/profile/roofline", timeout=120).json()
    again = httpx.get(f"{server}/v1/profile/roofline", timeout=120).json()
    assert first == again and first["provider"] == "cpu" and first["peak_gmacs_per_s"] > 0
    assert first["tracing_cost_us_per_node"] >= 0
    fresh = httpx.post(f"{server}/v1/profile/roofline", timeout=120)
    assert fresh.status_code == 200 and fresh.json()["measured_at"] > first["measured_at"]
    assert httpx.get(f"{server}/v1/profile/roofline?provider=tpu", timeout=30).status_code == 400


def _check_adds_up(result: dict) -> float:
    e2e, layer_sum = result["e2e_ms"]["p50"], result["layer_sum_ms"]
    rows_sum = sum(r["time_us"]["p50"] for r in result["layers"]) / 1000.0
    assert rows_sum == pytest.approx(layer_sum, rel=1e-3)
    corr = result["time_correction"]
    assert corr["tracing_cost_us_per_node"] >= 0 and corr["scale"] > 0
    assert corr["cost_removed_layer_sum_ms"] <= corr["traced_layer_sum_ms"]
    assert abs(rows_sum - e2e) <= 0.10 * e2e, (rows_sum, e2e, corr)
    # the split is kept: each row is its traced share of the run
    shares = sorted(result["layers"], key=lambda r: -r["time_us"]["p50"])
    assert shares[0]["time_us"]["p50"] > 0 and shares[0]["kind"] in ROOFLINE_KINDS
    return rows_sum / e2e


def _burners(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0  # utime + stime, in clock ticks (USER_HZ = 100)


@pytest.mark.slow
def test_layer_times_add_up_quiet_and_loaded(server: str) -> None:
    """Rows' p50s within 10 % of the e2e p50 as the machine is (quiet, or other suites running) and with two
    CPU burners running through the whole profile (a 2-core machine: every core contended)."""
    quiet = _check_adds_up(_profile(server, FULL, runs=20, warmup=5))
    burners = _burners(2)
    try:
        time.sleep(0.3)
        loaded_result = _profile(server, FULL, runs=20, warmup=5)
        burned = [_cpu_seconds(p.pid) for p in burners]
    finally:
        for p in burners:
            p.kill()
            p.wait()
    assert min(burned) > 0.2, burned  # the burners really ran during the profile
    loaded = _check_adds_up(loaded_result)
    print(f"\nrows / e2e p50: quiet {quiet:.3f}, loaded {loaded:.3f}; e2e p50 "
          f"{loaded_result['e2e_ms']['p50']:.3f} ms loaded, scale {loaded_result['time_correction']['scale']}")


# --------------------------------------------------------------------------------------------
# the page's charts, without a browser (the browser test is tests/test_browser.py)
# --------------------------------------------------------------------------------------------
class _Marks(HTMLParser):
    """Every ``svg[data-chart]`` and the ``.mark`` elements inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.charts: dict[str, dict] = {}
        self._current: str | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "svg" and "data-chart" in a:
            self._current = a["data-chart"]
            self.charts[self._current] = {"points": int(a["data-points"]), "marks": []}
        elif self._current and "mark" in (a.get("class") or "").split():
            self.charts[self._current]["marks"].append(a)

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._current = None


def parse_charts(html: str) -> dict[str, dict]:
    parser = _Marks()
    parser.feed(html)
    return parser.charts


def check_charts_against(charts: dict[str, dict], profile: dict | None, sweep: dict | None) -> None:
    """Every chart's marks equal the API's numbers (shared with the browser test)."""
    if profile is not None:
        rows = profile["layers"]
        lt = charts["layer-times"]
        assert lt["points"] == len(lt["marks"]) == len(rows)
        for mark, row in zip(lt["marks"], rows, strict=True):
            assert mark["data-name"] == row["name"] and mark["data-kind"] == row["kind"]
            assert float(mark["data-value"]) == pytest.approx(row["time_us"]["p50"], rel=1e-5, abs=1e-6)
            assert mark.get("data-fused-into") == row.get("fused_into")
        bk = charts["by-kind"]
        assert bk["points"] == len(bk["marks"]) == 3 * len(profile["by_kind"])
        for mark in bk["marks"]:
            want = profile["by_kind"][mark["data-kind"]][f"{mark['data-metric']}_percent"]
            assert float(mark["data-value"]) == pytest.approx(want, rel=1e-5, abs=1e-6)
        rf = charts["roofline"]
        plotted = [r for r in rows if r["kind"] in ROOFLINE_KINDS and r["macs"] and r["gmacs_per_s"]]
        assert rf["points"] == len(rf["marks"]) == len(plotted) > 0
        for mark, row in zip(rf["marks"], plotted, strict=True):
            assert mark["data-name"] == row["name"] and mark["data-bound"] == row["bound"]
            assert float(mark["data-x"]) == pytest.approx(row["arithmetic_intensity"], rel=1e-5)
            assert float(mark["data-y"]) == pytest.approx(row["gmacs_per_s"], rel=1e-5)
    if sweep is not None:
        sw = charts["sweep"]
        assert sw["points"] == len(sw["marks"]) == len(sweep["rows"])
        for mark, row in zip(sw["marks"], sweep["rows"], strict=True):
            assert float(mark["data-x"]) == pytest.approx(row["latency_ms"]["p50"], rel=1e-5)
            assert int(mark["data-y"]) == row["macs"]
        assert {int(m["data-index"]) for m in sw["marks"] if m["data-front"] == "true"} == set(sweep["pareto"])


def test_charts_fragment_matches_the_api(server: str) -> None:
    empty = httpx.get(f"{server}/ui/models/{SMALL}/charts", timeout=30)
    assert empty.status_code == 200
    assert httpx.get(f"{server}/ui/models/nope/charts", timeout=30).status_code == 404
    profile = _profile(server, SMALL, runs=5, warmup=2, fused=False)
    sweep = httpx.post(f"{server}/v1/profile/sweep", json={"arch": "mobilenet_v2", "alphas": [0.35, 0.5],
                                                           "resolutions": [96, 128], "runs": 3, "budget_ms": 50},
                       timeout=600).json()
    html = httpx.get(f"{server}/ui/models/{SMALL}/charts", timeout=30).text
    charts = parse_charts(html)
    assert set(charts) == {"layer-times", "by-kind", "roofline", "sweep"}
    check_charts_against(charts, profile, sweep)
    assert profile["trace_url"] in html
    # a fused profile: layers fused away are drawn as such
    fused = _profile(server, SMALL, runs=5, warmup=2)
    charts = parse_charts(httpx.get(f"{server}/ui/models/{SMALL}/charts", timeout=30).text)
    check_charts_against(charts, fused, sweep)
    assert any(m.get("data-fused-into") for m in charts["layer-times"]["marks"])
    assert re.search(r'data-chart="roofline"[^>]*>', html)
