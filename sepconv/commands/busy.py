"""A POST to the server's profiling routes that waits out ``429 Too Many Requests`` (one profile or sweep runs at
a time): the wait the server's ``Retry-After`` asks for, clamped to 0.5-30 s, at most ``max_waits`` times."""

from __future__ import annotations

import time
from typing import Any

import httpx


class ServerBusy(Exception):
    """The server stayed busy (429) through every wait, or could not be reached (message for the user)."""


def post_when_free(endpoint: str, body: dict[str, Any], *, timeout: float, max_waits: int = 20,
                   headers: dict[str, str] | None = None, on_wait: Any = None) -> httpx.Response:
    """POST ``body`` as JSON; the first answer that is not a 429 (``on_wait(seconds)`` before each wait)."""
    for _ in range(max_waits + 1):
        try:
            response = httpx.post(endpoint, json=body, headers=headers, timeout=timeout)
        except httpx.HTTPError as exc:
            raise ServerBusy(f"cannot reach {endpoint}: {exc}") from exc
        if response.status_code != 429:
            return response
        wait = float(response.headers.get("Retry-After", "2") or 2)
        if on_wait is not None:
            on_wait(wait)
        time.sleep(min(max(wait, 0.5), 30.0))
    raise ServerBusy("the server stayed busy with other profiles; try again later")
