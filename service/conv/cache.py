"""A bounded LRU of compiled ``/v1/conv`` graphs: one ONNX Runtime session per :class:`ConvKey`.

Repeated shapes reuse the session (filter values are run-time inputs). Counters (hits, misses, builds,
evictions) are exposed by ``GET /v1/conv/cache`` so a test or an operator can see the reuse. The cache only
stores; what to build is the engine's (:mod:`sepconv.service.conv.engine`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sepconv.export.single_op import ConvGraph, ConvKey


@dataclass(frozen=True)
class CompiledConv:
    graph: ConvGraph
    session: Any  # onnxruntime.InferenceSession
    provider: str  # the provider the session really runs on (first of get_providers())


class _Build:
    """A build in progress: requests for the same key wait for it instead of compiling the key again."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.entry: CompiledConv | None = None


class ConvCache:
    """Thread-safe LRU. A miss compiles outside the lock, so requests for other shapes (hits, or their own
    builds) go on meanwhile; requests for the same key wait for that one build (and count as hits)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(int(capacity), 1)
        self._entries: OrderedDict[ConvKey, CompiledConv] = OrderedDict()
        self._building: dict[ConvKey, _Build] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.builds = 0
        self.evictions = 0

    def get(self, key: ConvKey) -> CompiledConv | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def get_or_build(self, key: ConvKey, build: Callable[[], CompiledConv]) -> tuple[CompiledConv, bool]:
        """The entry for ``key`` and whether it was already cached or being built (``build`` runs on a miss,
        in the calling thread, without the lock). A build that fails leaves nothing: a waiting request then
        builds (and fails) on its own."""
        while True:
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None:
                    self.hits += 1
                    self._entries.move_to_end(key)
                    return entry, True
                pending = self._building.get(key)
                if pending is None:
                    self.misses += 1
                    pending = self._building[key] = _Build()
                    break
            pending.done.wait()
            if pending.entry is not None:
                with self._lock:
                    self.hits += 1
                return pending.entry, True
        try:
            entry = build()
        except BaseException:
            with self._lock:
                del self._building[key]
            pending.done.set()  # the waiters look again, and build on their own
            raise
        with self._lock:
            self.builds += 1
            self._entries[key] = entry
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
                self.evictions += 1
            del self._building[key]
            pending.entry = entry
        pending.done.set()
        return entry, False

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"size": len(self._entries), "capacity": self.capacity, "hits": self.hits,
                    "misses": self.misses, "builds": self.builds, "evictions": self.evictions}
