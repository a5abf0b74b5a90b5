"""The latest profile of each model and the latest sweep of each architecture, kept in memory for the model
page (``GET /ui/models/{m}`` and its charts). Bounded: one of each per name, at most ``MAX_NAMES`` names."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

MAX_NAMES = 64


class Latest:
    def __init__(self) -> None:
        self._profiles: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._sweeps: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _put(store: OrderedDict[str, dict[str, Any]], key: str, value: dict[str, Any]) -> None:
        store[key] = value
        store.move_to_end(key)
        while len(store) > MAX_NAMES:
            store.popitem(last=False)

    def put_profile(self, model: str, result: dict[str, Any]) -> None:
        with self._lock:
            self._put(self._profiles, model, result)

    def put_sweep(self, arch: str, result: dict[str, Any]) -> None:
        with self._lock:
            self._put(self._sweeps, arch, result)

    def profile(self, model: str) -> dict[str, Any] | None:
        with self._lock:
            return self._profiles.get(model)

    def sweep(self, arch: str) -> dict[str, Any] | None:
        with self._lock:
            return self._sweeps.get(arch)
