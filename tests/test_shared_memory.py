"""Triton's system shared-memory extension over REST and gRPC, driven by tritonclient's own shared-memory utilities
against a real server: regions registered, tensors read from and written into them (at offsets), status and
unregister, the checks on names, keys, offsets and sizes, nothing outside a region touched, and every region
unregistered when the server stops."""

from __future__ import annotations

import os
import uuid

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException, deserialize_bytes_tensor, serialize_byte_tensor

from sepconv.service.app import create_app
from sepconv.service.errors import PermissionDenied
from sepconv.service.settings import Settings
from tests.conftest import CNN_CLASSES, CNN_SHAPE
from tests.serving import running_server

pytestmark = pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm on this machine")

PROTOCOLS = ["http", "grpc"]
CLIENTS = {"http": httpclient, "grpc": grpcclient}


def reference(server, name: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(server.repo / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feed), strict=True))


@pytest.fixture(params=PROTOCOLS)
def client(request, server):
    protocol = request.param
    c = (httpclient.InferenceServerClient(server.hostport) if protocol == "http"
         else grpcclient.InferenceServerClient(server.grpc_hostport))
    c.protocol = protocol  # type: ignore[attr-defined]
    yield c
    c.unregister_system_shared_memory()
    c.close()


@pytest.fixture()
def regions():
    """Creates shared-memory objects (tritonclient's utility) and destroys them after the test."""
    handles = []

    def make(size: int) -> tuple[str, shm.SharedMemoryRegion]:
        key = f"/sepconv-test-{uuid.uuid4().hex[:12]}"
        handle = shm.create_shared_memory_region(key[1:], key, size)
        handles.append(handle)
        return key, handle

    yield make
    for handle in handles:
        shm.destroy_shared_memory_region(handle)


def status_of(client, name: str | None = None) -> list[dict]:
    if client.protocol == "http":
        return client.get_system_shared_memory_status(name or "")
    regions = client.get_system_shared_memory_status(name or "", as_json=True).get("regions", {})
    return [{"name": r["name"], "key": r["key"], "offset": int(r.get("offset", 0)), "byte_size": int(r["byte_size"])}
            for r in regions.values()]


def infer(client, model: str, inputs, outputs):
    return client.infer(model, inputs, outputs=outputs)


def test_infer_with_inputs_and_outputs_in_shared_memory(client, server, regions) -> None:
    lib = CLIENTS[client.protocol]
    x = np.random.default_rng(3).standard_normal((2, *CNN_SHAPE)).astype(np.float32)
    in_key, in_handle = regions(x.nbytes)
    out_key, out_handle = regions(2 * CNN_CLASSES * 4)
    shm.set_shared_memory_region(in_handle, [x])
    client.register_system_shared_memory("in", in_key, x.nbytes)
    client.register_system_shared_memory("out", out_key, 2 * CNN_CLASSES * 4)
    assert sorted((r["name"], r["key"], r["byte_size"]) for r in status_of(client)) == [
        ("in", in_key, x.nbytes), ("out", out_key, 2 * CNN_CLASSES * 4)]
    assert status_of(client, "out") == [{"name": "out", "key": out_key, "offset": 0, "byte_size": 2 * CNN_CLASSES * 4}]

    inp = lib.InferInput("input", list(x.shape), "FP32")
    inp.set_shared_memory("in", x.nbytes)
    out = lib.InferRequestedOutput("logits")
    out.set_shared_memory("out", 2 * CNN_CLASSES * 4)
    result = infer(client, "tiny", [inp], [out])
    meta = result.get_output("logits")
    shape = list(meta["shape"] if client.protocol == "http" else meta.shape)
    assert [int(d) for d in shape] == [2, CNN_CLASSES]
    got = shm.get_contents_as_numpy(out_handle, np.float32, [2, CNN_CLASSES])
    np.testing.assert_allclose(got, reference(server, "tiny", {"input": x})["logits"], rtol=1e-5, atol=1e-6)

    # the same input region, the output returned in the response as usual
    plain = lib.InferRequestedOutput("logits", binary_data=True) if client.protocol == "http" else \
        lib.InferRequestedOutput("logits")
    result = infer(client, "tiny", [inp], [plain])
    np.testing.assert_allclose(result.as_numpy("logits"), got, rtol=1e-6)

    client.unregister_system_shared_memory("in")
    assert [r["name"] for r in status_of(client)] == ["out"]
    with pytest.raises(InferenceServerException, match="Unable to find shared memory region"):
        infer(client, "tiny", [inp], [out])
    with pytest.raises(InferenceServerException, match="Unable to find"):
        status_of(client, "in")
    client.unregister_system_shared_memory("in")  # unknown: no error, as in Triton
    client.unregister_system_shared_memory()
    assert status_of(client) == []


def test_offsets_and_nothing_outside_the_region_is_touched(client, server, regions) -> None:
    """A region registered at an offset into its object, tensors at offsets into the region: the input is read
    from exactly there, the output written exactly there, every other byte of the object keeps its value."""
    lib = CLIENTS[client.protocol]
    x = np.random.default_rng(4).standard_normal((1, *CNN_SHAPE)).astype(np.float32)
    out_bytes = CNN_CLASSES * 4
    base, in_at, out_at = 128, 40, 40 + x.nbytes + 24
    size = out_at + out_bytes + 16  # the region
    key, handle = regions(base + size + 64)
    sentinel = np.full(base + size + 64, 0xAB, dtype=np.uint8)
    shm.set_shared_memory_region(handle, [sentinel])
    shm.set_shared_memory_region(handle, [x], offset=base + in_at)
    client.register_system_shared_memory("both", key, size, offset=base)

    inp = lib.InferInput("input", list(x.shape), "FP32")
    inp.set_shared_memory("both", x.nbytes, offset=in_at)
    out = lib.InferRequestedOutput("logits")
    out.set_shared_memory("both", out_bytes, offset=out_at)
    infer(client, "tiny", [inp], [out])

    whole = shm.get_contents_as_numpy(handle, np.uint8, [base + size + 64])
    got = whole[base + out_at:base + out_at + out_bytes].view(np.float32).reshape(1, CNN_CLASSES)
    np.testing.assert_allclose(got, reference(server, "tiny", {"input": x})["logits"], rtol=1e-5, atol=1e-6)
    expected = sentinel.copy()
    expected[base + in_at:base + in_at + x.nbytes] = np.frombuffer(x.tobytes(), np.uint8)
    expected[base + out_at:base + out_at + out_bytes] = np.frombuffer(got.tobytes(), np.uint8)
    np.testing.assert_array_equal(whole, expected)


def test_bytes_tensors_in_shared_memory(client, server, regions) -> None:
    lib = CLIENTS[client.protocol]
    text = np.array([[b"hello", b"shared memory"]], dtype=object)
    blob = serialize_byte_tensor(text)
    in_key, in_handle = regions(len(blob.item()))
    out_key, out_handle = regions(256)
    shm.set_shared_memory_region(in_handle, [blob])
    client.register_system_shared_memory("text_in", in_key, len(blob.item()))
    client.register_system_shared_memory("text_out", out_key, 256)
    inp = lib.InferInput("text", [1, 2], "BYTES")
    inp.set_shared_memory("text_in", len(blob.item()))
    out = lib.InferRequestedOutput("echo")
    out.set_shared_memory("text_out", 256)
    infer(client, "strings", [inp], [out])
    got = shm.get_contents_as_numpy(out_handle, np.object_, [1, 2])
    expected = reference(server, "strings", {"text": np.array([["hello", "shared memory"]], dtype=object)})["echo"]
    assert [x.decode() if isinstance(x, bytes) else x for x in got.reshape(-1)] == list(expected.reshape(-1))
    raw = shm.get_contents_as_numpy(out_handle, np.uint8, [256])
    assert deserialize_bytes_tensor(raw[:4 + 5 + 4 + 13].tobytes()).tolist() == [b"hello", b"shared memory"]


def test_shared_memory_mistakes_are_refused_and_the_server_keeps_serving(client, server, regions) -> None:
    lib = CLIENTS[client.protocol]
    x = np.zeros((1, *CNN_SHAPE), np.float32)
    key, handle = regions(x.nbytes + 64)
    client.register_system_shared_memory("r", key, x.nbytes + 64)
    for bad_key, message in (("/sepconv-never-created", "unable to open"), ("/../etc/passwd", "invalid"),
                             ("/a/b", "invalid"), ("/..", "invalid"), ("", "invalid")):
        with pytest.raises(InferenceServerException, match=message):
            client.register_system_shared_memory("other", bad_key, 16)
    with pytest.raises(InferenceServerException, match="already"):
        client.register_system_shared_memory("r", key, 16)
    with pytest.raises(InferenceServerException, match="past the end"):
        client.register_system_shared_memory("big", key, x.nbytes + 65)
    with pytest.raises(InferenceServerException, match="past the end"):
        client.register_system_shared_memory("late", key, 16, offset=x.nbytes + 60)

    def attempt(in_size: int, in_offset: int = 0, out_size: int = CNN_CLASSES * 4, out_offset: int = 0,
                region: str = "r") -> None:
        inp = lib.InferInput("input", list(x.shape), "FP32")
        inp.set_shared_memory(region, in_size, offset=in_offset)
        out = lib.InferRequestedOutput("logits")
        out.set_shared_memory("r", out_size, offset=out_offset)
        infer(client, "tiny", [inp], [out])

    cases = [
        (dict(in_size=x.nbytes - 4), "needs"),  # not the tensor's size
        (dict(in_size=x.nbytes, in_offset=68), "invalid offset"),  # past the region's end
        (dict(in_size=x.nbytes, out_size=CNN_CLASSES * 4 - 1), "at least"),  # the output does not fit
        (dict(in_size=x.nbytes, out_offset=x.nbytes + 62), "invalid offset"),
        (dict(in_size=x.nbytes, region="nope"), "Unable to find shared memory region"),
    ]
    for kwargs, message in cases:
        with pytest.raises(InferenceServerException, match=message):
            attempt(**kwargs)
    attempt(x.nbytes)  # still serving, the region still usable

    # an object shrunk after registering: a short read, refused, no crash
    os.truncate(os.path.join("/dev/shm", key[1:]), 64)
    with pytest.raises(InferenceServerException, match="shrunk"):
        attempt(x.nbytes)
    assert client.is_server_live()


def test_cuda_shared_memory_is_not_offered(triton) -> None:
    assert triton.get_cuda_shared_memory_status() == []
    with pytest.raises(InferenceServerException, match="not supported"):
        triton.register_cuda_shared_memory("gpu", b"\0" * 64, 0, 16)


def test_who_may_register_and_regions_unregistered_at_shutdown(model_repo, regions) -> None:
    key, _ = regions(64)
    off = create_app(Settings(repo=model_repo, shared_memory="off", grpc_port=0))
    with running_server(off) as url:
        c = httpclient.InferenceServerClient(url.removeprefix("http://"))
        with pytest.raises(InferenceServerException, match="turned off"):
            c.register_system_shared_memory("r", key, 64)
    # 'local' refuses a peer that is not on this host (the transport decides who is local)
    app = create_app(Settings(repo=model_repo, grpc_port=0))
    with pytest.raises(PermissionDenied, match="this server's host"):
        app.state.dataplane.register_shared_memory("r", key, 0, 64, local=False)
    with running_server(app) as url:
        c = httpclient.InferenceServerClient(url.removeprefix("http://"))
        c.register_system_shared_memory("r", key, 64)
        c.register_system_shared_memory("r2", key, 32, offset=16)
        registered = list(app.state.dataplane.shm._regions.values())
        assert len(registered) == 2 and all(os.fstat(r.fd).st_size == 64 for r in registered)
    assert len(app.state.dataplane.shm) == 0  # the lifespan's shutdown unregistered them, closing their files
    assert all(r.fd == -1 for r in registered)
