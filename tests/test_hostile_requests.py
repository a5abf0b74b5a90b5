"""What a hostile web page or client tried against what this change added, each answered with a clear 4xx and the
server unchanged: cross-origin state changes on every route, DNS rebinding, shared memory sized by the client,
broken compressed bodies, config overrides of the wrong shape, strings where numbers belong, profiles that cannot be
fed, a geometry TensorFlow refuses, and the loopback rule every transport shares."""

from __future__ import annotations

import gzip
import uuid
from pathlib import Path

import httpx
import orjson
import pytest

from sepconv.service.app import create_app
from sepconv.service.grpc.servicer import local_peer
from sepconv.service.settings import Settings, host_of, is_loopback
from tests.conftest import CNN_SHAPE
from tests.serving import running_server

EVIL = {"Origin": "http://evil.example", "Content-Type": "text/plain"}
N = CNN_SHAPE[0] * CNN_SHAPE[1] * CNN_SHAPE[2]


def _infer(data: list, datatype: str = "FP32", **extra: object) -> bytes:
    return orjson.dumps({"inputs": [{"name": "input", "shape": [1, *CNN_SHAPE], "datatype": datatype, "data": data,
                                     **extra}]})


@pytest.fixture(scope="module")
def url(model_repo: Path):
    app = create_app(Settings(repo=model_repo, providers="cpu", access_log=False, model_control="explicit",
                              grpc_port=0))
    with running_server(app) as base:
        yield base


@pytest.fixture()
def shm_object():
    key = f"/sepconv-test-{uuid.uuid4().hex[:8]}"
    path = Path("/dev/shm") / key[1:]
    path.write_bytes(b"\x00" * 4096)
    yield key, path
    path.unlink(missing_ok=True)


def test_no_state_changes_from_another_origin(url: str, shm_object: tuple[str, Path]) -> None:
    """A web page's no-preflight POSTs reach loopback ports: none of them may change anything, on any route."""
    key, path = shm_object
    attempts = [
        ("/v2/systemsharedmemory/region/evil/register", orjson.dumps({"key": key, "offset": 0, "byte_size": 4096})),
        ("/v2/systemsharedmemory/unregister", b"{}"),
        ("/v1/profile/conv", orjson.dumps({"input_shape": [1, 8, 8, 4], "filters": 4, "runs": 1, "warmup": 0})),
        ("/v1/models/tiny/profile", b"{}"),
        ("/v2/repository/models/tiny/unload", b"{}"),
        ("/v2/models/tiny/infer", _infer([0.0] * N)),
    ]
    for headers in (EVIL, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"}):
        for path_, body in attempts:
            r = httpx.post(url + path_, content=body, headers=headers)
            assert r.status_code == 403 and "cross-origin" in r.json()["error"], (path_, headers, r.text)
    assert httpx.get(url + "/v2/systemsharedmemory/status").json() == []
    assert httpx.get(url + "/v2/models/tiny/ready").status_code == 200
    # the server's own pages (same origin) and non-browser clients still work
    host = url.removeprefix("http://")
    same = httpx.post(url + "/v2/models/tiny/infer", content=_infer([0.0] * N), headers={"Origin": f"http://{host}"})
    assert same.status_code == 200
    assert httpx.post(url + "/v2/models/tiny/infer", content=_infer([0.0] * N)).status_code == 200


def test_dns_rebinding_cannot_use_the_tokenless_admin_side_or_shared_memory(url: str,
                                                                          shm_object: tuple[str, Path]) -> None:
    """A page whose own name resolves to 127.0.0.1 sends Host: its name (and a matching Origin): without an admin
    token, state changes need a loopback Host; shared memory too."""
    key, _ = shm_object
    port = url.rsplit(":", 1)[1]
    rebound = {"Host": f"rebind.evil:{port}", "Origin": f"http://rebind.evil:{port}"}
    r = httpx.post(url + "/v2/logging", json={"log_verbose_level": 1}, headers=rebound)
    assert r.status_code == 403 and "loopback name" in r.json()["error"]
    r = httpx.post(url + "/v2/repository/models/tiny/unload", json={}, headers=rebound)
    assert r.status_code == 403
    r = httpx.post(url + "/v2/systemsharedmemory/region/rb/register", headers=rebound,
                   json={"key": key, "offset": 0, "byte_size": 4096})
    assert r.status_code == 403, r.text
    assert httpx.get(url + "/v2/models/tiny/ready").status_code == 200
    assert httpx.post(url + "/v2/logging", json={}).status_code == 200  # Host 127.0.0.1: allowed


def test_shared_memory_size_is_checked_before_anything_is_allocated(url: str) -> None:
    """A declared 2**62-byte BYTES input (whose size no shape bounds) in an unknown region: 400 naming the region,
    not a MemoryError 500."""
    body = orjson.dumps({"inputs": [{"name": "text", "shape": [1, 2], "datatype": "BYTES", "parameters": {
        "shared_memory_region": "nothere", "shared_memory_byte_size": 2**62, "shared_memory_offset": 0}}]})
    r = httpx.post(url + "/v2/models/strings/infer", content=body)
    assert r.status_code == 400 and "nothere" in r.json()["error"]


def test_broken_compressed_bodies_are_refused(url: str) -> None:
    good = gzip.compress(_infer([0.0] * N))
    for bad, what in ((good + b"JUNKJUNK", "bytes after"), (good[:-12], "truncated"), (good + good, "after")):
        r = httpx.post(url + "/v2/models/tiny/infer", content=bad, headers={"Content-Encoding": "gzip"})
        assert r.status_code == 400 and what.split()[0] in r.json()["error"], (what, r.text)
    assert httpx.post(url + "/v2/models/tiny/infer", content=good,
                      headers={"Content-Encoding": "gzip"}).status_code == 200


@pytest.mark.parametrize("config", [{"dynamic_batching": 1}, {"instance_group": 3}, {"input": [5]},
                                    {"version_policy": {"latest": 2}}])
def test_config_overrides_of_the_wrong_shape_are_400(url: str, config: dict) -> None:
    r = httpx.post(url + "/v2/repository/models/tiny_cfg/load", json={"parameters": {"config": config}})
    assert r.status_code == 400 and "must be a block" in r.json()["error"], r.text
    assert httpx.get(url + "/v2/models/tiny_cfg/ready").status_code == 200


@pytest.mark.parametrize("data", [["1.5"] * N, [True] * N, [0.0] * (N - 1) + ["7"], [[0.0] * (N - 1) + [True]]])
def test_numbers_only_in_numeric_json_data(url: str, data: list) -> None:
    """numpy reads "1.5" and true as numbers; Triton answers 400, and so does this server."""
    r = httpx.post(url + "/v2/models/tiny/infer", content=_infer(data))
    assert r.status_code == 400 and "JSON numbers" in r.json()["error"], r.text


def test_a_model_a_profile_cannot_feed_is_422(url: str) -> None:
    r = httpx.post(url + "/v1/models/strings/profile", json={"runs": 1, "warmup": 0})
    assert r.status_code == 422 and "BYTES" in r.json()["error"], r.text


def test_profile_conv_refuses_what_tensorflow_refuses(url: str) -> None:
    """Strides and dilations both > 1 on a depthwise conv: /v1/conv and /v1/profile/conv share the rule."""
    r = httpx.post(url + "/v1/profile/conv", json={"input_shape": [1, 8, 8, 4], "filters": 4, "strides": 2,
                                                   "dilations": 2, "runs": 1, "warmup": 0})
    assert r.status_code == 400 and "TensorFlow requires all strides to be 1" in r.json()["error"], r.text


class _Peer:
    def __init__(self, peer: str) -> None:
        self._peer = peer

    def peer(self) -> str:
        return self._peer


@pytest.mark.parametrize(("peer", "local"), [("ipv4:127.0.0.1:5000", True), ("ipv4:127.3.4.5:1", True),
                                             ("ipv6:[::1]:5000", True), ("ipv6:[::ffff:127.0.0.1]:1", True),
                                             ("unix:/tmp/s", True), ("ipv4:10.0.0.1:5000", False),
                                             ("ipv6:[2001:db8::1]:1", False), ("ipv4:127.evil:1", False)])
def test_grpc_local_peer(peer: str, local: bool) -> None:
    assert local_peer(_Peer(peer)) is local  # type: ignore[arg-type]


def test_loopback_and_host_header_rules() -> None:
    assert [is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "[::1]", "::ffff:127.0.0.2")] == [True] * 5
    assert not any(is_loopback(h) for h in ("0.0.0.0", "10.0.0.1", "rebind.evil", "127.0.0.1.evil", ""))
    assert [host_of(h) for h in ("127.0.0.1:8000", "[::1]:8000", "localhost", "::1")] == \
        ["127.0.0.1", "::1", "localhost", "::1"]


def test_every_typed_error_has_a_status_on_both_transports() -> None:
    """A new error class must be mapped explicitly, REST and gRPC alike (not fall back to the base's 500)."""
    import inspect  # noqa: PLC0415

    from sepconv.service import errors as e  # noqa: PLC0415
    from sepconv.service.grpc.errors import GRPC_STATUS  # noqa: PLC0415
    from sepconv.service.rest.errors import HTTP_STATUS  # noqa: PLC0415

    classes = {c for _, c in inspect.getmembers(e, inspect.isclass) if issubclass(c, e.ServiceError)}
    assert classes == set(HTTP_STATUS) == set(GRPC_STATUS)


def test_sweep_budget_must_be_finite(url: str) -> None:
    r = httpx.post(url + "/v1/profile/sweep", content=b'{"arch": "mobilenet_v2", "alphas": [0.35], '
                                                      b'"resolutions": [96], "runs": 1, "budget_ms": Infinity}')
    assert r.status_code in (400, 422), r.text
    r = httpx.post(url + "/v1/profile/sweep", content=b'{"arch": "mobilenet_v2", "alphas": [0.35], '
                                                      b'"resolutions": [96], "runs": 1, "budget_ms": 1e999}')
    assert r.status_code in (400, 422), r.text
