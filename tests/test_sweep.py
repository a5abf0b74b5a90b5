"""Variant sweeps over a real server: ``POST /v1/profile/sweep`` (sync and as a job), its bounds, ``sepconv sweep``.

Rows are checked against ``sepconv summary --json`` (params = total_params, macs) for the same variant, the Pareto
front and ``best_under_budget`` by brute force on the returned rows.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest
from typer.testing import CliRunner

from sepconv.export.networks import build_network
from sepconv.export.repository.writer import write_model
from sepconv.service.app import create_app
from sepconv.service.profiling.sweep import best_under_budget, pareto_front
from sepconv.service.settings import Settings
from tests.serving import running_server

SMALL = "mobilenet_v2_0.35_96"


def _cli(*args: str):
    from sepconv.cli import _register, app  # noqa: PLC0415

    _register()
    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("sweep")
    repo = root / "models"
    write_model(build_network("mobilenet_v2", alpha=0.35, resolution=96).model, repo, SMALL, max_batch=4)
    settings = Settings(repo=repo, trace_dir=root / "traces", profile_max_runs=100, profile_max_gmacs=60,
                        sweep_max_variants=6)
    with running_server(create_app(settings)) as url:
        yield url


def _sweep(url: str, **body) -> httpx.Response:
    return httpx.post(f"{url}/v1/profile/sweep", json=body, timeout=600)


def _summary(alpha: float, resolution: int) -> dict:
    result = _cli("summary", "mobilenet_v2", "--alpha", str(alpha), "--resolution", str(resolution), "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def _front_by_brute_force(rows: list[dict]) -> set[int]:
    out = set()
    for i, r in enumerate(rows):
        beaten = False
        for j, o in enumerate(rows):
            if j == i:
                continue
            no_worse = o["latency_ms"]["p50"] <= r["latency_ms"]["p50"] and o["macs"] >= r["macs"]
            better = o["latency_ms"]["p50"] < r["latency_ms"]["p50"] or o["macs"] > r["macs"]
            beaten |= no_worse and better
        if not beaten:
            out.add(i)
    return out


def test_sweep_rows_match_the_summary_and_the_front_is_right(server: str) -> None:
    alphas, resolutions = [0.35, 0.5], [96, 128]
    r = _sweep(server, arch="mobilenet_v2", alphas=alphas, resolutions=resolutions, runs=5, warmup=2)
    assert r.status_code == 200, r.text
    result = r.json()
    assert (result["arch"], result["provider"], result["batch_size"]) == ("mobilenet_v2", "cpu", 1)
    rows = result["rows"]
    assert [(row["alpha"], row["resolution"], row["precision"]) for row in rows] == \
        [(a, res, "fp32") for a in alphas for res in resolutions]
    for row in rows:
        summary = _summary(row["alpha"], row["resolution"])
        assert row["params"] == summary["total_params"] and row["macs"] == summary["macs"], row
        p50, p90 = row["latency_ms"]["p50"], row["latency_ms"]["p90"]
        assert 0 < p50 <= p90
        assert row["images_per_s"] == pytest.approx(1000.0 / p50, rel=1e-3)
    assert set(result["pareto"]) == _front_by_brute_force(rows)
    assert result["pareto"] == sorted(result["pareto"], key=lambda i: rows[i]["latency_ms"]["p50"])
    assert result["best_under_budget"] is None  # no budget asked
    # a budget between the fastest and the slowest p50: the largest-MACs row that fits, checked by brute force
    p50s = sorted(row["latency_ms"]["p50"] for row in rows)
    for budget in (p50s[0], (p50s[1] + p50s[2]) / 2, p50s[-1] * 2, p50s[0] / 2):
        fits = [i for i, row in enumerate(rows) if row["latency_ms"]["p50"] <= budget]
        expected = max(fits, key=lambda i: (rows[i]["macs"], -rows[i]["latency_ms"]["p50"])) if fits else None
        assert best_under_budget(rows, budget) == expected
    r = _sweep(server, arch="mobilenet_v2", alphas=alphas, resolutions=resolutions, runs=5, warmup=2,
               budget_ms=p50s[-1] * 100)
    assert r.status_code == 200, r.text
    again = r.json()
    assert again["best_under_budget"] == max(range(4), key=lambda i: again["rows"][i]["macs"])
    r = _sweep(server, arch="mobilenet_v2", alphas=[0.35], resolutions=[96], runs=3, budget_ms=1e-6)
    assert r.status_code == 200 and r.json()["best_under_budget"] is None


def test_pareto_and_budget_logic_on_made_up_rows() -> None:
    def row(lat: float, macs: int) -> dict:
        return {"latency_ms": {"p50": lat, "p90": lat}, "macs": macs}

    rows = [row(1.0, 10), row(2.0, 30), row(1.5, 5), row(2.0, 20), row(3.0, 30), row(0.5, 10)]
    assert set(pareto_front(rows)) == _front_by_brute_force(rows) == {1, 5}
    assert pareto_front(rows) == [5, 1]
    assert best_under_budget(rows, 2.0) == 1
    assert best_under_budget(rows, 1.9) == 5  # 10 MACs: rows 0 and 5 tie, the faster wins
    assert best_under_budget(rows, 0.1) is None and best_under_budget(rows, None) is None


def test_precision_variants(server: str) -> None:
    r = _sweep(server, arch="mobilenet_v2", alphas=[0.35], resolutions=[96], precisions=["fp32", "fp16", "int8"],
               runs=3, warmup=1)
    assert r.status_code == 200, r.text
    rows = r.json()["rows"]
    assert [row["precision"] for row in rows] == ["fp32", "fp16", "int8"]
    summary = _summary(0.35, 96)
    assert all(row["params"] == summary["total_params"] and row["macs"] == summary["macs"] for row in rows)


def test_a_sweep_job_reports_progress_and_blocks_other_profiles(server: str, tmp_path) -> None:
    body = {"arch": "mobilenet_v2", "alphas": [0.35, 0.5, 0.75], "resolutions": [96, 128], "runs": 40}
    r = httpx.post(f"{server}/v1/profile/sweep", json=body, headers={"Prefer": "respond-async"}, timeout=60)
    assert r.status_code == 202, r.text
    job_url = r.json()["job_url"]
    assert r.headers["location"] == job_url
    busy = [httpx.post(f"{server}/v1/profile/sweep", json=body, timeout=60),
            httpx.post(f"{server}/v1/models/{SMALL}/profile", json={"runs": 3}, timeout=60)]
    seen = []
    while True:
        job = httpx.get(job_url, timeout=30).json()
        seen.append((job["done"], job["total"]))
        if job["state"] != "running":
            break
        time.sleep(0.1)
    assert job["state"] == "done", job
    for b in busy:  # sent while the job held the gate (it builds 6 variants: seconds)
        assert b.status_code == 429, b.text
        assert int(b.headers["retry-after"]) >= 1 and "already running" in b.json()["error"]
    assert seen[-1] == (12, 12) and all(d <= t for d, t in seen)
    assert len(job["result"]["rows"]) == 6 and job["result"]["pareto"]
    # the gate is free again; the job can be read until it expires; unknown ids are 404
    assert _sweep(server, arch="mobilenet_v2", alphas=[0.35], resolutions=[96], runs=2).status_code == 200
    assert httpx.get(job_url, timeout=30).status_code == 200
    assert httpx.get(f"{server}/v1/profile/jobs/{'0' * 32}", timeout=30).status_code == 404


@pytest.mark.parametrize("body,status,needle", [
    ({"arch": "mobilenet_v2", "alphas": [1.0], "resolutions": [224], "runs": 100, "batch_size": 4}, 413,
     "multiply-adds"),
    ({"arch": "mobilenet_v2", "alphas": [0.35, 0.5, 0.75, 1.0], "resolutions": [96, 128]}, 413, "variants"),
    ({"arch": "resnet_50", "alphas": [1.0], "resolutions": [224]}, 400, "resnet_50"),
    ({"arch": "mobilenet_v2", "alphas": [0.0], "resolutions": [96]}, 400, "alpha"),
    ({"arch": "mobilenet_v2", "alphas": [0.35], "resolutions": [8]}, 400, "resolution"),
    ({"arch": "mobilenet_v2", "alphas": [0.35], "resolutions": [96], "precisions": ["fp8"]}, 400, "fp8"),
    ({"arch": "mobilenet_v2", "alphas": [], "resolutions": [96]}, 400, "at least one"),
    ({"arch": "mobilenet_v2", "alphas": [0.35], "resolutions": [96], "runs": 0}, 400, "runs"),
    ({"arch": "mobilenet_v2", "alphas": [0.35], "resolutions": [96], "batch_size": 0}, 400, "batch_size"),
    ({"arch": "mobilenet_v2", "alphas": [0.35], "resolutions": [96], "budget_ms": -1}, 400, "budget_ms"),
    ({"arch": "mobilenet_v2", "alphas": [0.35], "resolutions": [96], "provider": "tpu"}, 400, "provider"),
    ({"alphas": [0.35], "resolutions": [96]}, 422, "arch"),
    ({"arch": "mobilenet_v2", "alphas": "0.35", "resolutions": [96]}, 422, "alphas"),
    ({"arch": "mobilenet_v2", "alphas": [0.35], "resolutions": [96], "colour": "red"}, 422, "colour"),
])
def test_bad_sweeps(server: str, body: dict, status: int, needle: str) -> None:
    r = _sweep(server, **body)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]


def test_bad_json_is_a_4xx(server: str) -> None:
    r = httpx.post(f"{server}/v1/profile/sweep", content=b"{not json", timeout=30)
    assert 400 <= r.status_code < 500


def test_cli_sweep_table_and_json(server: str) -> None:
    args = ["sweep", "mobilenet_v2", "--url", server, "--alpha", "0.35,0.5", "--resolution", "96", "--runs", "3"]
    result = _cli(*args, "--json")
    assert result.exit_code == 0, result.output
    obj = json.loads(result.output[result.output.index("{"):])
    assert [row["alpha"] for row in obj["rows"]] == [0.35, 0.5] and "pareto" in obj
    result = _cli(*args, "--budget-ms", "1000")
    assert result.exit_code == 0, result.output
    assert "p50 ms" in result.output and "best under budget" in result.output and "Pareto front" in result.output
    lines = [ln for ln in result.output.splitlines() if "fp32" in ln]
    assert len(lines) == 2 and any(ln.lstrip("│ ").startswith("*") for ln in lines)
    result = _cli("sweep", "mobilenet_v2", "--url", server, "--alpha", "x")
    assert result.exit_code != 0
    result = _cli("sweep", "nonet", "--url", server)
    assert result.exit_code == 1 and "HTTP 400" in result.output
