"""Requests the server is handling, every transport together, and whether an inference counts as *alone*.

A request that is alone may run inline on the event loop thread, on the model's ORT-defaults session (see
:mod:`sepconv.service.runtime.scheduler` and :mod:`sepconv.service.runtime.serving`). ``count`` alone cannot tell:
while an inline run holds the event loop, requests of other clients wait unread in their sockets, so each of them,
read when the run ends, finds ``count == 1`` and would run inline too — one run at a time on the loop, at ORT's
default throughput, with every concurrent run slot idle (measured: shared-memory requests from 16 clients went
through at 0.73x ORT-defaults sequential). So :meth:`InFlight.alone` also treats as concurrency a request from
another peer (another connection) that starts within :data:`BACK_TO_BACK_S` of the previous request's end — it was
waiting — and keeps the inline path off for :data:`CONTENDED_S` after any sign of concurrency. A client sending
one request at a time on its connection stays alone; one opening a new connection per request takes longer than
:data:`BACK_TO_BACK_S` to connect and send.
"""

from __future__ import annotations

import time
from collections.abc import Hashable

BACK_TO_BACK_S = 0.001  # another peer's request starting this soon after one ended was waiting for it
CONTENDED_S = 0.5  # how long a sign of concurrency keeps the inline path off


class InFlight:
    """``count``: requests being handled (HTTP, and gRPC infer; read by graceful shutdown)."""

    def __init__(self) -> None:
        self.count = 0
        self._last_end = float("-inf")
        self._last_peer: Hashable = None
        self._contended_until = float("-inf")

    def ended(self) -> None:
        """A request finished (its transport calls this after ``count -= 1``)."""
        self._last_end = time.perf_counter()

    def alone(self, peer: Hashable) -> bool:
        """Whether the inference request now starting, from connection ``peer``, is the server's only work."""
        now = time.perf_counter()
        if self.count > 1 or (peer != self._last_peer and now - self._last_end < BACK_TO_BACK_S):
            self._contended_until = now + CONTENDED_S
        self._last_peer = peer
        return now >= self._contended_until
