"""The scheduler on its own, with a real ONNX Runtime session: where a request runs (inline on the event loop
only when it is alone and measured short; otherwise a pool thread), batching, the queue-delay timer, and that
every run is accounted for."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from sepconv.export.repository.layout import DynamicBatching
from sepconv.service.errors import InvalidInput, Unavailable
from sepconv.service.rest.errors import status_of
from sepconv.service.runtime.scheduler import Scheduler
from tests.conftest import CNN_SHAPE, build_cnn


class RecordingSession:
    """A real InferenceSession that notes which thread each run happened on and the batch it got."""

    def __init__(self, path: Path) -> None:
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.runs: list[tuple[int, int]] = []  # (thread id, batch)

    def run(self, names, feed):  # noqa: ANN001, ANN201 - InferenceSession.run's signature
        self.runs.append((threading.get_ident(), next(iter(feed.values())).shape[0]))
        return self.session.run(names, feed)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_cnn(tmp_path_factory.mktemp("sched") / "model.onnx", seed=3)


def _x(seed: int, batch: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, *CNN_SHAPE)).astype(np.float32)


def _scheduler(session: RecordingSession, executor: ThreadPoolExecutor, **kw) -> tuple[Scheduler, list]:
    executions: list[tuple[int, int, int, int]] = []
    delay = kw.pop("max_queue_delay_us", 0)
    opts = {"max_batch_size": 4, "batching": DynamicBatching(max_queue_delay_microseconds=delay), "workers": 2, **kw}
    sched = Scheduler(session, ["logits"], executor, on_execution=lambda *a: executions.append(a), label="t", **opts)
    return sched, executions


def test_lone_request_runs_inline_once_measured(model_path: Path) -> None:
    session = RecordingSession(model_path)
    reference = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])

    async def main() -> tuple[int, list]:
        with ThreadPoolExecutor(2) as pool:
            sched, executions = _scheduler(session, pool)
            for i in range(4):
                x = _x(i)
                job = await sched.submit({"input": x}, ["logits"], 1, alone=True)
                np.testing.assert_allclose(job.result["logits"], reference.run(["logits"], {"input": x})[0],
                                           rtol=1e-5, atol=1e-6)
            job = await sched.submit({"input": _x(9)}, ["logits"], 1, alone=False)  # others in flight: the pool
            return threading.get_ident(), executions

    loop_thread, executions = asyncio.run(main())
    threads = [t for t, _ in session.runs]
    assert threads[0] != loop_thread  # not measured yet: the pool
    assert threads[1:4] == [loop_thread] * 3  # alone and short: on the loop, no hand-off
    assert threads[4] != loop_thread  # not alone
    assert len(executions) == 5 and all(e[0] == 1 for e in executions)


def test_never_inline_over_the_limit_or_beside_a_run(model_path: Path) -> None:
    session = RecordingSession(model_path)

    async def main() -> int:
        with ThreadPoolExecutor(2) as pool:
            sched, _ = _scheduler(session, pool, inline_max_ns=0)
            for i in range(3):
                await sched.submit({"input": _x(i)}, ["logits"], 1, alone=True)
            sched2, _ = _scheduler(session, pool, workers=2)
            await sched2.submit({"input": _x(5)}, ["logits"], 1, alone=True)  # measured now
            # the first starts in the pool at once; the second, though "alone", must not run beside it
            await asyncio.gather(sched2.submit({"input": _x(6)}, ["logits"], 1),
                                 sched2.submit({"input": _x(7)}, ["logits"], 1, alone=True))
            return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert all(t != loop_thread for t, _ in session.runs)


def test_queued_requests_are_batched_and_answered_in_order(model_path: Path) -> None:
    session = RecordingSession(model_path)
    reference = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    xs = [_x(100 + i, 1 + i % 2) for i in range(9)]

    async def main() -> list:
        with ThreadPoolExecutor(1) as pool:
            sched, executions = _scheduler(session, pool, workers=1, adaptive=False)
            jobs = await asyncio.gather(*(sched.submit({"input": x}, ["logits"], x.shape[0]) for x in xs))
            assert sum(e[0] for e in executions) == sum(x.shape[0] for x in xs)
            return jobs

    jobs = asyncio.run(main())
    for x, job in zip(xs, jobs, strict=True):
        np.testing.assert_allclose(job.result["logits"], reference.run(["logits"], {"input": x})[0],
                                   rtol=1e-5, atol=1e-6)
    assert max(b for _, b in session.runs) > 1  # what queued behind the first run went in batches
    assert all(b <= 4 for _, b in session.runs)


def test_queue_delay_holds_a_batch_then_runs_it(model_path: Path) -> None:
    session = RecordingSession(model_path)

    async def main() -> None:
        with ThreadPoolExecutor(1) as pool:
            sched, _ = _scheduler(session, pool, workers=1, max_queue_delay_us=30_000, adaptive=False)
            # arrivals faster than the delay make it apply; two requests cannot fill a batch of 4, so the
            # timer must end the wait and run them together
            await asyncio.wait_for(asyncio.gather(*(sched.submit({"input": _x(i)}, ["logits"], 1)
                                                    for i in range(3))), timeout=30)

    asyncio.run(main())
    assert [b for _, b in session.runs] == [1, 2]


def test_closed_scheduler_refuses_and_bad_input_is_a_400(model_path: Path) -> None:
    session = RecordingSession(model_path)

    async def main() -> None:
        with ThreadPoolExecutor(1) as pool:
            sched, _ = _scheduler(session, pool)
            await sched.submit({"input": _x(1)}, ["logits"], 1, alone=True)
            with pytest.raises(InvalidInput) as bad:  # inline now: the error still comes back as a 400
                await sched.submit({"input": np.zeros((1, 3, 3, 3), np.float32)}, ["logits"], 1, alone=True)
            assert status_of(bad.value) == 400
            sched.close()
            with pytest.raises(Unavailable) as closed:
                await sched.submit({"input": _x(2)}, ["logits"], 1)
            assert status_of(closed.value) == 503

    asyncio.run(main())


def test_lone_requests_run_on_the_spinning_session_concurrent_ones_on_the_main(model_path: Path) -> None:
    """The spinning policy (service.runtime.serving): the inline path uses ``inline_session`` (ORT's spinning on),
    queued runs the main session; both give the model's answer."""
    main_session, spinning = RecordingSession(model_path), RecordingSession(model_path)
    reference = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])

    async def main() -> None:
        with ThreadPoolExecutor(2) as pool:
            sched, _ = _scheduler(main_session, pool, inline_session=spinning)
            for i in range(3):  # the first is measured in the pool, then inline
                job = await sched.submit({"input": _x(i)}, ["logits"], 1, alone=True)
                np.testing.assert_allclose(job.result["logits"], reference.run(["logits"], {"input": _x(i)})[0],
                                           rtol=1e-5, atol=1e-6)
            jobs = await asyncio.gather(*(sched.submit({"input": _x(i)}, ["logits"], 1, alone=False)
                                          for i in range(4)))
            for i, job in enumerate(jobs):
                np.testing.assert_allclose(job.result["logits"], reference.run(["logits"], {"input": _x(i)})[0],
                                           rtol=1e-5, atol=1e-6)

    asyncio.run(main())
    assert len(spinning.runs) == 2  # the two lone requests after the first
    assert len(main_session.runs) >= 2 and sum(b for _, b in main_session.runs) == 5  # the first + the 4 concurrent
