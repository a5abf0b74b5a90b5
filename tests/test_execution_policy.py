"""The execution policy of CPU models (service.runtime.serving): a lone request runs on a session with ORT's
defaults (all cores, spinning), queued and batched requests on a single-threaded session with one concurrent run
per core; the operator's ``intra_op_threads`` or ``concurrent_intra_op_threads = 0`` keep one thread setting.
Real registry, real ONNX Runtime sessions, a real data plane."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from sepconv.service.dataplane.dataplane import DataPlane
from sepconv.service.registry.registry import ModelRegistry
from sepconv.service.runtime.serving import ServingHook, make_executor
from sepconv.service.settings import Settings
from tests.conftest import CNN_SHAPE, build_cnn
from tests.test_server_dataplane import Decoded, _request


def _threads(session: ort.InferenceSession) -> int:
    return session.get_session_options().intra_op_num_threads


def _spinning(session: ort.InferenceSession) -> str:
    return session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")


def _loaded(tmp_path: Path, **settings: object):
    build_cnn(tmp_path / "policy" / "1" / "model.onnx", seed=9)
    s = Settings(repo=tmp_path, providers="cpu", **settings)
    executor = make_executor(s)
    registry = ModelRegistry(s, hooks=[ServingHook(executor, s)])
    registry.load_all()
    return s, executor, registry


def test_cpu_default_lone_on_ort_defaults_concurrent_single_threaded_one_per_core(tmp_path: Path) -> None:
    s, executor, registry = _loaded(tmp_path)
    try:
        model = registry.get("policy")
        sched = model.scheduler
        assert sched.session is not sched.inline_session
        assert _threads(sched.session) == 1 and _spinning(sched.session) == "0"
        assert _threads(sched.inline_session) == 0 and _spinning(sched.inline_session) == "1"  # ORT's defaults
        assert model.session is sched.inline_session  # the registry's third session is not kept
        cores = max(2, os.cpu_count() or 2)
        assert model.config.instance_count == cores == sched.workers
        assert model.config.to_json()["instance_group"][0]["count"] == cores  # what /config reports

        # concurrent requests: all answered by the single-threaded session, each its own answer
        dataplane = DataPlane(s, registry)
        xs = [np.random.default_rng(i).standard_normal((1, *CNN_SHAPE)).astype(np.float32) for i in range(8)]

        async def burst():
            return await asyncio.gather(*(dataplane.infer("policy", None, Decoded(_request(x))) for x in xs))

        reference = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"])
        for x, response in zip(xs, asyncio.run(burst()), strict=True):
            np.testing.assert_allclose(response.outputs[0].array, reference.run(["logits"], {"input": x})[0],
                                       rtol=1e-5, atol=1e-6)
        assert sched._cost and not sched._inline_cost  # learned on the concurrent session only
    finally:
        registry.close()
        executor.shutdown()


@pytest.mark.parametrize("override", [{}, {"intra_op_threads": 2}, {"inline_spinning": False},
                                      {"concurrent_intra_op_threads": 0}])
def test_a_cpu_model_load_builds_only_the_sessions_it_keeps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            override: dict) -> None:
    """Two sessions per CPU model whatever the settings: the registry's session is the lone one where a concurrent
    one is made, so no third build is thrown away."""
    from sepconv.service.registry import registry as registry_module
    from sepconv.service.runtime import serving

    made: list[ort.InferenceSession] = []
    for module in (registry_module, serving):
        real = module.make_session

        def counting(*args, _real=real, **kwargs):  # noqa: ANN002, ANN003
            made.append(_real(*args, **kwargs))
            return made[-1]
        monkeypatch.setattr(module, "make_session", counting)
    _, executor, registry = _loaded(tmp_path, **override)
    try:
        model, sched = registry.get("policy"), registry.get("policy").scheduler
        assert len(made) == 2
        kept = {id(sched.session), id(sched.inline_session), id(model.session)}
        assert kept == {id(m) for m in made}  # every session built is in use
    finally:
        registry.close()
        executor.shutdown()


@pytest.mark.parametrize("override", [{"intra_op_threads": 2}, {"concurrent_intra_op_threads": 0}])
def test_operator_thread_settings_keep_one_session_for_concurrent_runs(tmp_path: Path, override: dict) -> None:
    _, executor, registry = _loaded(tmp_path, **override)
    try:
        model = registry.get("policy")
        sched = model.scheduler
        assert sched.session is model.session and _spinning(sched.session) == "0"
        assert _threads(sched.session) == override.get("intra_op_threads", 0)
        assert _spinning(sched.inline_session) == "1"  # lone requests still get the spinning session
        assert model.config.instance_count == 2 == sched.workers
    finally:
        registry.close()
        executor.shutdown()


def test_batch_workers_sets_the_concurrent_runs(tmp_path: Path) -> None:
    _, executor, registry = _loaded(tmp_path, batch_workers=3)
    try:
        model = registry.get("policy")
        assert model.config.instance_count == 3 == model.scheduler.workers
        assert _threads(model.scheduler.session) == 1
    finally:
        registry.close()
        executor.shutdown()


# -- which requests count as alone (service.dataplane.inflight) -----------------------------------------------
def test_in_flight_alone_looks_at_requests_about_to_start() -> None:
    from sepconv.service.dataplane.inflight import LOOK_AROUND, InFlight

    async def main() -> None:
        t = InFlight()
        t.count = 1
        assert await t.alone()
        t.count = 2
        assert not await t.alone()
        t.count = 1

        async def waiting_request(delay_iterations: int) -> None:  # a request read on a later loop iteration
            for _ in range(delay_iterations):
                await asyncio.sleep(0)
            t.count += 1

        for delay in range(LOOK_AROUND):
            task = asyncio.ensure_future(waiting_request(delay))
            assert not await t.alone(), delay
            await task
            t.count = 1

    asyncio.run(main())


def test_concurrent_small_requests_leave_the_event_loop(tmp_path: Path) -> None:
    """Requests that cost the transport almost nothing (here: a tiny model's) used to find ``count == 1`` one after
    another while an inline run held the loop, and all ran inline, one at a time (231 of 240 with that rule).
    Through a real server: a sequential client runs inline; eight concurrent clients mostly go through the run
    slots; a lone client after the burst runs inline again."""
    import http.client
    import threading

    import orjson

    from sepconv.service.app import create_app
    from tests.serving import running_server

    build_cnn(tmp_path / "tiny" / "1" / "model.onnx", seed=4)
    app = create_app(Settings(repo=tmp_path, providers="cpu", grpc_port=0, access_log=False))
    x = np.random.default_rng(0).standard_normal((1, *CNN_SHAPE)).astype(np.float32)
    header = orjson.dumps({"inputs": [{"name": "input", "shape": [1, *CNN_SHAPE], "datatype": "FP32",
                                       "parameters": {"binary_data_size": x.nbytes}}]})
    body, headers = header + x.tobytes(), {"Inference-Header-Content-Length": str(len(header))}

    def client(port: int, n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for _ in range(n):
            conn.request("POST", "/v2/models/tiny/infer", body, headers)
            response = conn.getresponse()
            assert response.status == 200, response.read()
            response.read()
        conn.close()

    with running_server(app) as url:
        port = int(url.rsplit(":", 1)[1])
        sched = app.state.dataplane.registry.get("tiny").scheduler
        client(port, 30)
        lone = sched.inline_runs
        assert lone >= 25
        time.sleep(0.6)
        threads = [threading.Thread(target=client, args=(port, 30)) for _ in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        concurrent = sched.inline_runs - lone
        assert concurrent <= 0.25 * 240, concurrent
        time.sleep(0.6)
        before = sched.inline_runs
        client(port, 20)
        assert sched.inline_runs - before >= 15
