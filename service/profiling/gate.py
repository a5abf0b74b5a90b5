"""One profile at a time per server (:class:`ProfileGate`), and the Chrome traces profiles leave behind
(:class:`TraceStore`). Both are made once per app (``sepconv.service.rest.profiling.attach``).

A profile takes seconds and all the cores it is given; two at once would measure each other. A second one
while one runs gets :class:`~sepconv.service.errors.Busy` (429) with a ``Retry-After`` estimate from the last
profile's duration. A trace is served only by its id (``<32 hex>``, with or without ``.json``) from the store's
directory, which keeps the newest ``keep`` files.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sepconv.service.errors import Busy, NotFound


class ProfileGate:
    """A non-blocking lock: a second profile while one runs gets 429 with a ``Retry-After`` estimate."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started = 0.0
        self._last_duration = 5.0
        self.running: str | None = None

    def retry_after(self) -> int:
        elapsed = time.monotonic() - self._started
        return max(1, int(round(self._last_duration - elapsed + 0.5)))

    def acquire(self, what: str) -> None:
        """Take the gate or raise :class:`Busy`; :meth:`release` (from any thread: a job's) gives it back."""
        if not self._lock.acquire(blocking=False):
            seconds = self.retry_after()
            raise Busy(f"a profile is already running on this server ({self.running}); retry in about {seconds} s",
                       retry_after=seconds)
        self._started = time.monotonic()
        self.running = what

    def release(self) -> None:
        self._last_duration = max(1.0, time.monotonic() - self._started)
        self.running = None
        self._lock.release()

    @contextmanager
    def hold(self, what: str) -> Iterator[None]:
        self.acquire(what)
        try:
            yield
        finally:
            self.release()


_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")


class TraceStore:
    """Chrome-trace files in ``directory`` named ``<32 hex>.json``; only the newest ``keep`` are kept."""

    def __init__(self, directory: Path, keep: int) -> None:
        self.directory = Path(directory)
        self.keep = max(1, int(keep))
        self._lock = threading.Lock()

    def save(self, events: list[dict[str, Any]], metadata: dict[str, Any]) -> str:
        trace_id = uuid.uuid4().hex
        self.directory.mkdir(parents=True, exist_ok=True)
        doc = {"traceEvents": events, "displayTimeUnit": "ms", "otherData": metadata}
        tmp = self.directory / f".{trace_id}.tmp"
        tmp.write_text(json.dumps(doc, separators=(",", ":")), encoding="utf-8")
        tmp.replace(self.directory / f"{trace_id}.json")
        self._prune()
        return trace_id

    def _prune(self) -> None:
        with self._lock:
            files = sorted((p for p in self.directory.glob("*.json") if _TRACE_ID.match(p.stem)),
                           key=lambda p: p.stat().st_mtime_ns, reverse=True)
            for old in files[self.keep:]:
                old.unlink(missing_ok=True)

    def path(self, trace_id: str) -> Path:
        """The file of ``trace_id`` (``<32 hex>`` with or without ``.json``); 404 if unknown."""
        stem = trace_id[:-5] if trace_id.endswith(".json") else trace_id
        if not _TRACE_ID.match(stem):
            raise NotFound(f"no trace {trace_id!r} (trace ids are 32 hex digits)")
        path = self.directory / f"{stem}.json"
        if not path.is_file():
            raise NotFound(f"no trace {stem!r}: it never existed or was replaced by newer ones "
                           f"(the server keeps the newest {self.keep})")
        return path
