"""Requests the server is handling, every transport together, and whether an inference counts as *alone*.

A request that is alone may run inline on the event loop thread, on the model's ORT-defaults session (see
:mod:`sepconv.service.runtime.scheduler` and :mod:`sepconv.service.runtime.serving`). ``count`` at the moment a
request arrives cannot tell: while an inline run holds the event loop, requests of other clients wait unread in
their sockets, so each of them, read when the run ends, would find ``count == 1`` and run inline too — one run at
a time on the loop, at ORT's default throughput, with every concurrent run slot idle (measured: shared-memory
requests from 16 clients went through at 0.73x ORT-defaults sequential). :meth:`InFlight.alone` first lets the
event loop turn a few times (:data:`LOOK_AROUND` iterations, ~10 µs each): requests already waiting in their
sockets are read and start, and count.
"""

from __future__ import annotations

import asyncio

LOOK_AROUND = 3  # loop iterations: one to read a waiting request, one to start its task, one to spare


class InFlight:
    """``count``: requests being handled (HTTP, and gRPC infer; read by graceful shutdown)."""

    def __init__(self) -> None:
        self.count = 0

    async def alone(self) -> bool:
        """Whether the inference request now starting is the server's only work, requests that were already
        waiting in their sockets included (see the module docstring)."""
        for _ in range(LOOK_AROUND):
            if self.count > 1:
                return False
            await asyncio.sleep(0)
        return self.count <= 1
