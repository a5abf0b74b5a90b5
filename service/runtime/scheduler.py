"""Request scheduling per model: Triton's dynamic batcher on asyncio.

Contract: :meth:`Scheduler.submit` runs one request (a feed already checked against the model) and returns
its finished :class:`Job` (outputs and the queue/compute timings), or raises a typed error: ``Unavailable``
(the model is being unloaded or the server is stopping), ``InvalidInput`` (ONNX Runtime refused the input),
``InternalError`` (a batch run failed for another reason). Each ``session.run`` is reported once to
``on_execution(batch, input_ns, infer_ns, output_ns)``.

Requests queue per model. Up to ``workers`` runs (one per model instance) are in progress at once;
whenever a slot is free (a request arrives, or a run ends) the oldest request is taken together with
every queued request of the same per-item shapes while the batch stays within ``max_batch_size``
(waiting up to ``max_queue_delay`` for more when that is configured), handed to the thread pool, which
runs one ``session.run`` (ORT releases the GIL), splits the outputs back by request and resolves the
requests' futures with one ``call_soon_threadsafe``. A request that finds a free slot starts from its
own ``submit`` call: route -> ``submit`` -> ``_dispatch`` -> executor thread ``_run`` -> ``session.run``.
With no queue delay nothing waits: a batch forms from what queued while the previous runs were busy,
so a lone request is never delayed and concurrent ones are coalesced.

A lone request (the server handling no other request, no ``session.run`` in progress anywhere in the
process, and runs of its batch size measured under 20 ms) runs on the event loop thread itself, from
``submit``: handing it to a pool thread and waking the loop again costs two thread wake-ups (~0.1 ms,
2% of a MobileNet run), and with nothing else in progress there is nobody for the loop to serve
meanwhile (a request arriving during that run is read when it ends, and queued as usual).

Two sessions (see :mod:`sepconv.service.runtime.serving`): the inline path, where the request is alone, runs on
``inline_session`` (on a CPU: ORT's defaults, all cores, spinning) and gets ORT-default speed; queued and batched
runs, under concurrency, use ``session`` (on a CPU: single-threaded runs, ``workers`` = one per core, spinning off:
no thread busy-waits on a core the event loop and the other runs need). Run times are learned per session.

The configured ``max_queue_delay`` is spent only while requests have recently been arriving faster
than that delay (an exponentially weighted mean of the gaps between arrivals): then waiting can fill a
batch. A client sending one request at a time would only be slowed by it, so it is not made to wait.

Batch size: ``max_batch_size`` is a ceiling. With ``adaptive`` on (the default), the batcher keeps a
running mean of the measured ``session.run`` time per image for each batch-size bucket (1, 2, 4, ...,
max) and forms the batch whose bucket has been cheapest per image, exploring a larger bucket now and
then. On a GPU, big batches win and it grows to them; on a CPU where a big batch spills the caches
(MobileNet at 224x224 on a small CPU), it stays small and the concurrent workers keep the cores busy.

Several workers run ``session.run`` concurrently on the same session (ORT sessions are thread-safe and
share the intra-op pool, which fills the cores better than one run at a time).

Models without dynamic batching use the same queue with one request per run. The batching settings are the
config's ``dynamic_batching`` block, :class:`~sepconv.export.repository.layout.DynamicBatching` (``None`` = no
dynamic batching).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from sepconv.export.repository.layout import DynamicBatching
from sepconv.service.errors import InternalError, InvalidInput, Unavailable

log = logging.getLogger("sepconv.batcher")


_INLINE_MAX_NS = 20_000_000  # a lone request runs on the event loop when its run is measured under 20 ms

OnExecution = Callable[[int, int, int, int], None]  # (batch, input_ns, infer_ns, output_ns) per session.run


class Session(Protocol):
    """What the scheduler needs of a session (``onnxruntime.InferenceSession``, or a test's wrapper of one)."""

    def run(self, output_names: list[str], input_feed: dict[str, np.ndarray]) -> list[Any]: ...


class _RunCount:
    """``session.run`` calls in progress in this process, over all models (inline runs wait for zero)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def add(self, n: int) -> None:
        with self._lock:
            self.value += n


_RUNNING = _RunCount()


@dataclass
class Job:
    inputs: dict[str, np.ndarray]
    outputs: list[str]
    batch: int
    key: tuple
    future: asyncio.Future | None = None
    enqueued_ns: int = field(default_factory=time.perf_counter_ns)
    queue_ns: int = 0
    input_ns: int = 0
    infer_ns: int = 0
    output_ns: int = 0
    batch_size: int = 0  # size of the batch this job ran in
    result: dict[str, np.ndarray] | None = None


def _signature(inputs: dict[str, np.ndarray], batched: bool) -> tuple:
    return tuple(sorted((k, v.dtype.str, v.shape[1:] if batched else v.shape) for k, v in inputs.items()))


class Scheduler:
    """Queues requests for one loaded model and runs them, batched when the model allows it."""

    def __init__(self, session: Session, output_names: list[str], executor: Executor, *, max_batch_size: int,
                 batching: DynamicBatching | None, workers: int = 1, on_execution: OnExecution | None = None,
                 label: str = "", adaptive: bool = True, inline_max_ns: int = _INLINE_MAX_NS,
                 inline_session: Session | None = None) -> None:
        self.session = session
        self.inline_session = inline_session or session
        self.output_names = list(output_names)
        self.executor = executor
        self.max_batch_size = max(1, int(max_batch_size))
        self.batched = max_batch_size > 0
        self.coalesce = batching is not None and self.batched
        self.delay_ns = (batching.max_queue_delay_microseconds if batching else 0) * 1000
        preferred = [p for p in (batching.preferred_batch_size if batching else ()) if p <= self.max_batch_size]
        self.target = max(preferred) if preferred else self.max_batch_size
        self.workers = max(1, int(workers))
        self.adaptive = adaptive
        self.inline_max_ns = int(inline_max_ns)
        buckets = {1, self.max_batch_size}
        b = 2
        while b < self.max_batch_size:
            buckets.add(b)
            b *= 2
        self.buckets = sorted(buckets)
        self._cost: dict[int, float] = {}  # bucket -> running mean of ns per image (runs on ``session``)
        self._inline_cost: dict[int, float] = {}  # the same for runs on ``inline_session`` when it is another one
        self._executions = 0
        self.on_execution = on_execution
        self.label = label
        self._queue: deque[Job] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._busy = 0  # runs in progress (at most ``workers``)
        self._timer: asyncio.TimerHandle | None = None  # pending end of a queue delay
        self._closed = False
        self.in_flight = 0
        self.inline_runs = 0  # requests run inline on the event loop (the rest went through the run slots)
        self._last_arrival = 0
        self._mean_gap_ns = float("inf")

    # -- public ------------------------------------------------------------------------------
    async def submit(self, inputs: dict[str, np.ndarray], outputs: list[str], batch: int, *,
                     alone: bool = False) -> Job:
        """Run one request; returns the finished job (``job.result`` = requested outputs).

        Either inline (``_run_inline``: ``alone`` = the server handles no other request, nothing running,
        a short model) or queued: ``_dispatch`` hands it to the executor when a run slot is free, and the
        run thread resolves its future."""
        if self._closed:
            raise Unavailable(f"model {self.label} is being unloaded")
        loop = self._loop = asyncio.get_running_loop()
        job = Job(inputs=inputs, outputs=outputs, batch=batch, key=_signature(inputs, self.batched))
        if self._last_arrival:
            gap = job.enqueued_ns - self._last_arrival
            self._mean_gap_ns = gap if self._mean_gap_ns == float("inf") else 0.8 * self._mean_gap_ns + 0.2 * gap
        self._last_arrival = job.enqueued_ns
        if self._inline_ok(job, alone):
            return self._run_inline(job)
        job.future = loop.create_future()
        self._queue.append(job)
        self.in_flight += 1
        try:
            self._dispatch()
            await job.future
        finally:
            self.in_flight -= 1
        return job

    def close(self) -> None:
        """Stop taking requests; queued ones still run (any thread may call this)."""
        self._closed = True
        if self._loop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._dispatch)  # a queue delay no longer applies
            except RuntimeError:
                pass

    @property
    def queued(self) -> int:
        return len(self._queue)

    # -- on the event loop -----------------------------------------------------------------------
    def _inline_ok(self, job: Job, alone: bool) -> bool:
        """A lone request runs on the event loop thread itself, sparing the two thread hand-offs of the
        pool (~0.1 ms), when nothing else needs the loop meanwhile: the server is handling no other
        request (``alone``, from the caller: concurrent clients keep the pool path, where their requests
        are batched), no ``session.run`` is in progress in the process, and this batch size's runs were
        measured under ``inline_max_ns`` (the loop is never held long)."""
        if not alone or self._busy or self._queue or self._closed or _RUNNING.value:
            return False
        bucket = self._bucket(job.batch)
        per_image = self._inline_cost.get(bucket, self._cost.get(bucket))
        if per_image is None:
            return False
        return per_image * job.batch <= self.inline_max_ns

    def _run_inline(self, job: Job) -> Job:
        self.inline_runs += 1
        self._busy += 1
        _RUNNING.add(1)
        try:
            result = self._execute_one(job, [n for n in self.output_names if n in job.outputs], self.inline_session)
        finally:
            _RUNNING.add(-1)
            self._busy -= 1
        if isinstance(result, BaseException):
            raise result
        job.result = result
        return job

    def _dispatch(self) -> None:
        """Start runs while a slot is free (``workers`` concurrent runs) and requests are queued."""
        while self._busy < self.workers and self._queue:
            if self._hold_for_batch():
                return
            jobs = self._take()
            if not jobs:
                return
            start = time.perf_counter_ns()
            for job in jobs:
                job.queue_ns = start - job.enqueued_ns
            names = [n for n in self.output_names if any(n in j.outputs for j in jobs)]
            self._busy += 1
            _RUNNING.add(1)
            try:
                self.executor.submit(self._run, jobs, names)
            except RuntimeError as exc:  # the executor is shut down (server stopping): answer, take the next
                self._busy -= 1
                _RUNNING.add(-1)
                error = Unavailable(f"model {self.label} is being unloaded ({exc})")
                for fut in (j.future for j in jobs):
                    if fut is not None and not fut.done():
                        fut.set_exception(error)

    def _hold_for_batch(self) -> bool:
        """Spend the queue delay (see the module docstring): True while the head request should wait."""
        if not (self.coalesce and self.delay_ns > 0 and self._mean_gap_ns < self.delay_ns) or self._closed:
            return False
        head = self._queue[0]
        if self._queued_batch(head.key) >= self.target:
            return False
        left = head.enqueued_ns + self.delay_ns - time.perf_counter_ns()
        if left <= 0:
            return False
        if self._timer is None:
            self._timer = self._loop.call_later(left / 1e9, self._on_timer)  # type: ignore[union-attr]
        return True

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()

    def _queued_batch(self, key: tuple) -> int:
        return sum(j.batch for j in self._queue if j.key == key and not j.future.done())  # type: ignore[union-attr]

    def _finish(self, jobs: list[Job], results: list[dict[str, np.ndarray] | BaseException]) -> None:
        """A run ended (called on the loop by the run thread): answer its requests, start the next run."""
        self._busy -= 1
        _RUNNING.add(-1)
        for job, res in zip(jobs, results, strict=True):
            fut = job.future
            if fut is None or fut.done():  # cancelled: the client went away
                continue
            if isinstance(res, BaseException):
                fut.set_exception(res)
            else:
                job.result = res
                fut.set_result(None)
        self._dispatch()

    def _take(self) -> list[Job]:
        while self._queue and self._queue[0].future.done():  # cancelled (client went away)
            self._queue.popleft()
        if not self._queue:
            return []
        head = self._queue.popleft()
        jobs, total = [head], head.batch
        limit = self._batch_limit(head) if self.coalesce else total
        if self.coalesce and total < limit:
            keep: deque[Job] = deque()
            while self._queue:
                job = self._queue.popleft()
                if job.future.done():
                    continue
                if job.key == head.key and total + job.batch <= limit:
                    jobs.append(job)
                    total += job.batch
                    if total >= limit:
                        break
                else:
                    keep.append(job)
            keep.extend(self._queue)
            self._queue = keep
        return jobs

    def _batch_limit(self, head: Job) -> int:
        """How many images to put in the next run (see the module docstring)."""
        available = head.batch + sum(j.batch for j in self._queue if j.key == head.key and not j.future.done())
        available = min(available, self.max_batch_size)
        if not self.adaptive or available <= 1:
            return self.max_batch_size
        candidates = [b for b in self.buckets if b <= available]
        if available not in candidates:
            candidates.append(available)
        unexplored = [b for b in candidates if self._bucket(b) not in self._cost]
        if unexplored:
            return max(unexplored)
        best = min(candidates, key=lambda b: self._cost[self._bucket(b)])
        if self._executions % 32 == 31:  # now and then, re-measure the next larger size
            larger = [b for b in candidates if b > best]
            if larger:
                return larger[0]
        return best

    def _bucket(self, size: int) -> int:
        return max(b for b in self.buckets if b <= size)

    def _learn(self, size: int, infer_ns: int, inline: bool = False) -> None:
        """Fold one run's time into its bucket's mean. Runs on another inline session (a different thread count
        and spinning) are kept apart: they decide only whether a lone request may run inline."""
        per_image = infer_ns / max(1, size)
        key = self._bucket(size)
        costs = self._inline_cost if inline else self._cost
        if not inline:
            self._executions += 1
        old = costs.get(key)
        costs[key] = per_image if old is None else 0.7 * old + 0.3 * per_image

    # -- in the run thread ---------------------------------------------------------------------------
    def _run(self, jobs: list[Job], names: list[str]) -> None:
        try:
            results = self._execute(jobs, names)
        except Exception as exc:  # noqa: BLE001 - a failure must still answer every request
            log.exception("batch run failed")
            results = [InternalError(f"inference failed: {exc}")] * len(jobs)
        try:
            self._loop.call_soon_threadsafe(self._finish, jobs, results)  # type: ignore[union-attr]
        except RuntimeError:  # the event loop is closed: nobody is waiting any more
            pass

    def _execute(self, jobs: list[Job], names: list[str]) -> list[dict[str, np.ndarray] | BaseException]:
        if len(jobs) == 1:
            return [self._execute_one(jobs[0], names)]
        t0 = time.perf_counter_ns()
        feed = {k: np.concatenate([j.inputs[k] for j in jobs], axis=0) for k in jobs[0].inputs}
        t1 = time.perf_counter_ns()
        try:
            outs = self.session.run(names, feed)
        except Exception:  # noqa: BLE001 - one bad request must not fail the others: run them alone
            return [self._execute_one(j, [n for n in names if n in j.outputs]) for j in jobs]
        t2 = time.perf_counter_ns()
        results: list[dict[str, np.ndarray] | BaseException] = []
        offset = 0
        total = sum(j.batch for j in jobs)
        for job in jobs:
            sl = slice(offset, offset + job.batch)
            offset += job.batch
            results.append({n: o[sl] for n, o in zip(names, outs, strict=True) if n in job.outputs})
        t3 = time.perf_counter_ns()
        for job in jobs:
            job.input_ns, job.infer_ns, job.output_ns, job.batch_size = t1 - t0, t2 - t1, t3 - t2, total
        self._learn(total, t2 - t1)
        if self.on_execution is not None:
            self.on_execution(total, t1 - t0, t2 - t1, t3 - t2)
        return results

    def _execute_one(self, job: Job, names: list[str],
                     session: Session | None = None) -> dict[str, np.ndarray] | BaseException:
        """One request alone (in a run thread, or inline on the loop: ``session`` = the inline session)."""
        t0 = time.perf_counter_ns()
        try:
            outs = (session or self.session).run(names, job.inputs)
        except Exception as exc:  # noqa: BLE001 - ORT reports bad input through many exception types
            return InvalidInput(f"inference failed: {str(exc).strip()[:500]}")
        t1 = time.perf_counter_ns()
        result = dict(zip(names, outs, strict=True))
        t2 = time.perf_counter_ns()
        job.input_ns, job.infer_ns, job.output_ns, job.batch_size = 0, t1 - t0, t2 - t1, job.batch
        # also what decides whether a lone request may run inline
        self._learn(job.batch, t1 - t0, inline=session is not None and session is not self.session)
        if self.on_execution is not None:
            self.on_execution(job.batch, 0, t1 - t0, t2 - t1)
        return result
