"""``sepconv profile`` / ``sepconv sweep`` wait out a busy server (429 + Retry-After) through one helper
(``sepconv.commands.busy``): a real HTTP server on loopback answers 429 a given number of times."""

from __future__ import annotations

import pytest

from sepconv.commands.busy import ServerBusy, post_when_free
from tests.serving import running_server


class Busy:
    """An ASGI app: 429 (Retry-After: 0) to the first ``busy`` POSTs, then 200 with the headers it got."""

    def __init__(self, busy: int) -> None:
        self.busy = busy
        self.posts = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        if scope["method"] == "POST":
            self.posts += 1
        status = 429 if scope["method"] == "POST" and self.posts <= self.busy else 200
        prefer = dict(scope["headers"]).get(b"prefer", b"")
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"retry-after", b"0"), (b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"prefer": "' + prefer + b'"}'})


def test_waits_out_429_then_returns_the_answer() -> None:
    app, waits = Busy(busy=2), []
    with running_server(app, ready_path="/") as base:
        response = post_when_free(base + "/v1/profile/sweep", {"x": 1}, timeout=10, max_waits=5,
                                  headers={"Prefer": "respond-async"}, on_wait=waits.append)
    assert response.status_code == 200 and response.json() == {"prefer": "respond-async"}
    assert app.posts == 3 and waits == [0.0, 0.0]


def test_gives_up_after_max_waits_with_a_clear_message() -> None:
    app = Busy(busy=100)
    with running_server(app, ready_path="/") as base, pytest.raises(ServerBusy, match="stayed busy"):
        post_when_free(base + "/v1/models/m/profile", {}, timeout=10, max_waits=2)
    assert app.posts == 3


def test_unreachable_server_is_a_clear_error() -> None:
    from tests.serving import free_port

    with pytest.raises(ServerBusy, match="cannot reach"):
        post_when_free(f"http://127.0.0.1:{free_port()}/v1/models/m/profile", {}, timeout=2)
