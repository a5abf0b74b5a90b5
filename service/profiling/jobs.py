"""Profiles and sweeps run as jobs with progress (``Prefer: respond-async``), for the CLI's progress bar and the page.

:meth:`JobStore.start` takes the server's :class:`~sepconv.service.profiling.gate.ProfileGate` in the caller's
thread — so a second profile or sweep gets 429 at once, exactly as a synchronous one would — and runs the work
in a thread of its own, which releases the gate when it ends. ``work(progress)`` reports ``(done, total, stage)``;
:meth:`JobStore.get` answers the job's state (``running`` | ``done`` | ``failed``), progress, and when finished its
result or its error (a :class:`~sepconv.service.errors.ServiceError`, kept for the transport to map). Bounded: one
job runs at a time (the gate), at most ``MAX_KEPT`` finished ones are kept, each for ``keep_seconds``; an
unknown or expired id is :class:`~sepconv.service.errors.NotFound`.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sepconv.service.errors import InternalError, NotFound, ServiceError
from sepconv.service.profiling.gate import ProfileGate

MAX_KEPT = 32
Progress = Callable[[int, int, str], None]


@dataclass
class Job:
    id: str
    kind: str  # "profile" | "sweep"
    what: str
    state: str = "running"
    done: int = 0
    total: int = 1
    stage: str = "queued"
    started: float = field(default_factory=time.time)
    finished: float | None = None
    result: dict[str, Any] | None = None
    error: ServiceError | None = None

    def public(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "kind": self.kind, "what": self.what, "state": self.state,
                               "done": self.done, "total": self.total, "stage": self.stage,
                               "started": round(self.started, 3),
                               "elapsed_s": round((self.finished or time.time()) - self.started, 3)}
        if self.result is not None:
            out["result"] = self.result
        if self.error is not None:
            out["error"] = self.error.message
        return out


class JobStore:
    """Jobs by id; see the module docstring."""

    def __init__(self, gate: ProfileGate, keep_seconds: float) -> None:
        self.gate = gate
        self.keep_seconds = float(keep_seconds)
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()

    def start(self, kind: str, what: str, work: Callable[[Progress], dict[str, Any]],
              finish: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> Job:
        """Take the gate (429 if held) and run ``work`` in a thread; ``finish`` post-processes the result."""
        self.gate.acquire(what)
        job = Job(uuid.uuid4().hex, kind, what)
        with self._lock:
            self._prune()
            self._jobs[job.id] = job

        def progress(done: int, total: int, stage: str) -> None:
            job.done, job.total, job.stage = int(done), max(1, int(total)), stage

        def run() -> None:
            try:
                result = work(progress)
                job.result = finish(result) if finish else result
                job.state, job.done, job.stage = "done", job.total, "done"
            except ServiceError as exc:
                job.error, job.state = exc, "failed"
            except Exception as exc:  # noqa: BLE001 - a job's failure is its answer, the server keeps serving
                job.error, job.state = InternalError(f"the {kind} failed: {type(exc).__name__}: {exc}"), "failed"
            finally:
                job.finished = time.time()
                self.gate.release()

        threading.Thread(target=run, name=f"sepconv-{kind}-{job.id[:8]}", daemon=True).start()
        return job

    def get(self, job_id: str) -> Job:
        with self._lock:
            self._prune()
            job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}: it never existed or expired (finished jobs are kept "
                           f"{self.keep_seconds:.0f} s)")
        return job

    def _prune(self) -> None:
        now = time.time()
        for jid, job in list(self._jobs.items()):
            if job.finished is not None and now - job.finished > self.keep_seconds:
                del self._jobs[jid]
        finished = [jid for jid, job in self._jobs.items() if job.finished is not None]
        for jid in finished[:max(0, len(finished) - MAX_KEPT)]:
            del self._jobs[jid]
