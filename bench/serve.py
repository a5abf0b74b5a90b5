"""Server overhead and throughput against in-process ONNX Runtime, in one run (issue 4's goals).

    .venv/bin/python bench/serve.py [--model mobilenet_v2_1.0_224] [--rounds 4] [--requests 15] [--seconds 4]
                                    [--versus OTHER_CHECKOUT] [--mlserver VENV]

* exports the catalog's ``mobilenet_v2_1.0_224`` (catalog config: max_batch_size 16, dynamic batching) into a
  temporary repository (or copies ``models/NAME`` when it is there), starts ``sepconv serve`` on it in a
  subprocess (uvicorn + httptools + uvloop, the real server), and opens an in-process session with the same
  settings (``sepconv.service.runtime.make_session`` with ``Settings()`` from the same ``SEPCONV_*`` environment: the
  same threads, optimisation level, spinning and providers; the bench prints them). Both call ``session.run``
  from their main thread (the server runs a lone request on its event-loop thread, see service/runtime/scheduler.py);
* latency at batch 1, one sample of each kind in turn so background load hits all of them alike: in-process
  ``session.run``; the server over loopback with a binary request and with a JSON request (bodies prepared
  before timing, one kept-alive connection); the in-process time to decode that JSON body with orjson + numpy;
* throughput: in-process sequential ``session.run`` at batch 1 vs the server at concurrency 1, 4 and 16
  (binary requests, one connection per client thread), in short slices taken in turn, medians per kind;
* ``--versus DIR`` (another checkout, e.g. ``git worktree add /tmp/old HEAD~1``) also starts that checkout's
  server on the same repository and interleaves its binary and JSON latency samples with this one's: an A/B
  of two code versions in one run, which a noisy machine cannot give from separate runs;
* gRPC (issue 12): the same server's gRPC port (``SEPCONV_GRPC_PORT``) and a bare ``grpc.aio`` servicer (the
  transport floor: a subprocess, uvloop like the server, that receives the same ``ModelInferRequest`` and answers
  a prebuilt 4 KB ``ModelInferResponse``), both called with one prebuilt request through a plain stub (sync
  channel: the same client work for both); and in-process ONNX Runtime with its DEFAULT session options
  (``ort.InferenceSession(path)``, what a user gets), sampled in the same rounds as the REST figures;
* issue 13: the REST transport floor (a bare uvicorn + httptools + uvloop ASGI app, a subprocess, that reads the
  same binary body, the same JSON body and the shared-memory request, and answers 4 KB: what moving those bytes
  costs through uvicorn) and the socket floor (a bare uvloop protocol, no HTTP library: the physical floor), the
  server with Triton's system shared memory (the client copies the image into a /dev/shm region, sends a
  request naming it, reads the logits from another region), the simdjson decode
  floor (parse + ``as_buffer`` + cast: no Python object per number), ORT-defaults sequential throughput, and with
  ``--mlserver VENV`` MLServer's JSON p50 on the same ONNX file (a minimal runtime class, from a venv of its own);
* prints the figures and the ratios against the goals:
  binary p50 <= 1.10 x in-process p50; (JSON p50 - in-process p50) <= 1.25 x decode floor;
  throughput at concurrency 16 >= 1.1 x in-process sequential;
  (gRPC p50 - default-ORT p50) <= 1.25 x gRPC transport floor p50;
  issue 13: (binary p50 - default-ORT p50) <= 1.25 x REST floor; shared-memory p50 <= 1.10 x default-ORT p50;
  (JSON p50 - default-ORT p50) <= 1.25 x simdjson floor; JSON p50 <= 0.55 x MLServer JSON p50;
  throughput at concurrency 16 >= 1.1 x default-ORT sequential.

    .venv/bin/python bench/serve.py --grpc-floor PORT   # (internal) the bare servicer, as the bench starts it
    .venv/bin/python bench/serve.py --rest-floor PORT   # (internal) the bare ASGI app, as the bench starts it
    .venv/bin/python bench/serve.py --socket-floor PORT # (internal) the bare uvloop protocol, likewise
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def timed(samples: list[float], call, *args) -> None:  # noqa: ANN001
    """Append the wall time of ``call(*args)`` to ``samples``."""
    t = time.perf_counter()
    call(*args)
    samples.append(time.perf_counter() - t)


def pct(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples), q))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prepare_repo(model: str, repo: Path) -> Path:
    existing = ROOT / "models" / model
    if (existing / "1" / "model.onnx").is_file() and (existing / "config.pbtxt").is_file():
        shutil.copytree(existing, repo / model)
        return repo / model / "1" / "model.onnx"
    from sepconv.export.repository.catalog import export, load_catalog

    _, requests = load_catalog(ROOT / "models" / "catalog.toml")
    request = next((r for r in requests if r.model_name == model), None)
    if request is None:
        raise SystemExit(f"{model} is not in models/catalog.toml")
    return export(request, repo).path


class Conn:
    """One kept-alive HTTP/1.1 connection (TCP_NODELAY) sending prebuilt requests: as little client work as
    possible, so that the figures are the server's (the client shares the machine's cores with it)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=120)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray(1 << 20)

    @staticmethod
    def build(path: str, body: bytes, headers: dict[str, str]) -> bytes:
        head = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        return ("\r\n".join(head) + "\r\n\r\n").encode() + body

    def send(self, request: bytes) -> tuple[int, dict[str, str], bytes]:
        self.sock.sendall(request)
        view, got = memoryview(self.buf), 0
        while True:
            n = self.sock.recv_into(view[got:])
            if n == 0:
                raise ConnectionError("the server closed the connection")
            got += n
            end = self.buf.find(b"\r\n\r\n", 0, got)
            if end >= 0:
                break
        lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        total = end + 4 + int(headers.get("content-length", "0"))
        if total > len(self.buf):
            self.buf.extend(bytes(total - len(self.buf)))
            view = memoryview(self.buf)
        while got < total:
            got += self.sock.recv_into(view[got:total])
        return status, headers, bytes(self.buf[end + 4:total])

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        return self.send(self.build(path, body, headers))

    def close(self) -> None:
        self.sock.close()


def binary_body(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    header = orjson.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                       "parameters": {"binary_data_size": x.nbytes}}],
                           "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]})
    return header + x.tobytes(), {"Inference-Header-Content-Length": str(len(header)),
                                  "Content-Type": "application/octet-stream"}


def json_body(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    # as tritonclient sends it with binary_data=False: a flat list
    return orjson.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                     "data": x.reshape(-1).tolist()}],
                         "outputs": [{"name": "logits", "parameters": {"binary_data": False}}]}), \
        {"Content-Type": "application/json"}


def decode_binary(headers: dict[str, str], data: bytes) -> np.ndarray:
    hl = int(headers["inference-header-content-length"])
    meta = orjson.loads(data[:hl])
    return np.frombuffer(data[hl:], np.float32).reshape(meta["outputs"][0]["shape"])


# ``sepconv serve`` from the code of one checkout. ``python -m sepconv`` in another checkout would not do: the
# venv's editable install maps ``sepconv.service`` and ``sepconv.export`` to *its* checkout's folders whatever
# the working directory (pyproject's package-dir), so an A/B would run one side's CLI on the other's server.
# This finder, first on the import path, maps the three packages to ``tree``'s folders.
# glibc malloc settings under which a small process keeps freed memory instead of trimming its heap after each
# request body (the bare REST floor app otherwise page-faults ~300 times per 600 KB body; the server, whose heap
# never shrinks back, does not): the uvicorn floor without that cost.
KEEP_HEAP = "glibc.malloc.trim_threshold=134217728:glibc.malloc.mmap_threshold=33554432"

TREE_BOOT = """
import sys
from importlib.machinery import PathFinder
from importlib.util import spec_from_file_location
tree = sys.argv.pop(1)
FOLDERS = {"sepconv": tree + "/sepconv", "sepconv.export": tree + "/export", "sepconv.service": tree + "/service"}
class TreeFinder:
    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname in FOLDERS:
            return spec_from_file_location(fullname, FOLDERS[fullname] + "/__init__.py",
                                           submodule_search_locations=[FOLDERS[fullname]])
        parent = fullname.rpartition(".")[0]
        return PathFinder.find_spec(fullname, [FOLDERS[parent]]) if parent in FOLDERS else None
sys.meta_path.insert(0, TreeFinder)
import sepconv.service
assert sepconv.service.__file__.startswith(tree), sepconv.service.__file__
from sepconv.cli import main
sys.argv[0] = "sepconv"
main()
"""


def start_server(tree: Path, repo: Path, grpc_port: int = 0) -> tuple[subprocess.Popen, int]:
    """``sepconv serve`` of checkout ``tree`` (its own code, see TREE_BOOT) on ``repo``; returns (process, port)."""
    port = free_port()
    env = {**os.environ, "SEPCONV_REPO": str(repo), "SEPCONV_PORT": str(port), "SEPCONV_HOST": "127.0.0.1",
           "SEPCONV_GRPC_PORT": str(grpc_port)}
    return subprocess.Popen([sys.executable, "-c", TREE_BOOT, str(tree.resolve()), "serve", "--log-level",
                             "warning"], cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), port


# -- gRPC --------------------------------------------------------------------------------------------------
GRPC_OPTIONS = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
FLOOR_OUTPUT = 4000  # bytes: mobilenet's 1000 FP32 logits, what the real server answers


def grpc_floor_server(port: int) -> None:
    """The transport floor: a bare grpc.aio servicer (on uvloop, as the server) that receives the request (protobuf
    parsing included) and answers a prebuilt ModelInferResponse of FLOOR_OUTPUT raw bytes; no other work."""

    import grpc
    import uvloop

    from sepconv.service.grpc.generated import grpc_service_pb2 as pb
    from sepconv.service.grpc.generated import grpc_service_pb2_grpc as pb_grpc

    response = pb.ModelInferResponse(model_name="floor", model_version="1",
                                     raw_output_contents=[bytes(FLOOR_OUTPUT)])
    response.outputs.add(name="logits", datatype="FP32", shape=[1, FLOOR_OUTPUT // 4])

    class Floor(pb_grpc.GRPCInferenceServiceServicer):
        async def ServerReady(self, request, context):  # noqa: N802
            return pb.ServerReadyResponse(ready=True)

        async def ModelInfer(self, request, context):  # noqa: N802
            return response

    async def serve() -> None:
        server = grpc.aio.server(options=GRPC_OPTIONS)
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(Floor(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    uvloop.run(serve())


def rest_floor_server(port: int) -> None:
    """The REST transport floor: a bare ASGI app under uvicorn (httptools + uvloop, as the server) that reads the
    whole body and answers FLOOR_OUTPUT bytes as a binary V2 response would; no other work."""
    import uvicorn

    header = orjson.dumps({"model_name": "floor", "model_version": "1", "outputs": [
        {"name": "logits", "datatype": "FP32", "shape": [1, FLOOR_OUTPUT // 4],
         "parameters": {"binary_data_size": FLOOR_OUTPUT}}]})
    body = header + bytes(FLOOR_OUTPUT)
    headers = [(b"content-type", b"application/octet-stream"), (b"content-length", str(len(body)).encode()),
               (b"inference-header-content-length", str(len(header)).encode())]

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    uvicorn.run(app, host="127.0.0.1", port=port, http="httptools", loop="uvloop", log_level="warning",
                lifespan="off")


def socket_floor_server(port: int) -> None:
    """The socket floor: a bare uvloop protocol (no HTTP library, no ASGI) that reads each request's headers and
    ``Content-Length`` body into one buffer and answers the same FLOOR_OUTPUT-byte binary V2 response: what moving
    the bytes over loopback costs, one copy on each side."""
    import asyncio

    import uvloop

    header = orjson.dumps({"model_name": "floor", "model_version": "1", "outputs": [
        {"name": "logits", "datatype": "FP32", "shape": [1, FLOOR_OUTPUT // 4],
         "parameters": {"binary_data_size": FLOOR_OUTPUT}}]})
    body = header + bytes(FLOOR_OUTPUT)
    response = (b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: %d\r\n"
                b"inference-header-content-length: %d\r\n\r\n" % (len(body), len(header))) + body

    class Floor(asyncio.Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            self.transport, self.buf, self.need = transport, bytearray(), -1

        def data_received(self, data: bytes) -> None:
            self.buf += data
            while True:
                if self.need < 0:
                    end = self.buf.find(b"\r\n\r\n")
                    if end < 0:
                        return
                    head = bytes(self.buf[:end]).lower()
                    at = head.find(b"content-length:")
                    length = int(head[at + 15:].split(b"\r\n", 1)[0]) if at >= 0 else 0
                    self.need = end + 4 + length
                if len(self.buf) < self.need:
                    return
                del self.buf[:self.need]
                self.need = -1
                self.transport.write(response)

    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(Floor, "127.0.0.1", port)
        await server.serve_forever()

    uvloop.run(serve())


MLSERVER_RUNTIME = '''
import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxModel(MLModel):
    """What a user writes to serve an ONNX file with MLServer: one session with ORT's defaults."""

    async def load(self) -> bool:
        self.session = ort.InferenceSession(self.settings.parameters.uri)
        self.input_name = self.session.get_inputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        (logits,) = self.session.run(None, {self.input_name: x})
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("logits", logits)])
'''


def start_mlserver(venv: Path, model_path: Path, model: str, workdir: Path) -> tuple[subprocess.Popen, int]:
    """MLServer (its own venv: a bench-only dependency) serving the same ONNX file through a minimal runtime."""
    port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    root = workdir / "mlserver"
    (root / model).mkdir(parents=True)
    (root / "onnx_runtime.py").write_text(MLSERVER_RUNTIME)
    (root / "settings.json").write_text(orjson.dumps({"http_port": port, "grpc_port": grpc_port,
                                                      "metrics_port": metrics_port, "host": "127.0.0.1",
                                                      "parallel_workers": 0}).decode())
    (root / model / "model-settings.json").write_text(orjson.dumps({
        "name": model, "implementation": "onnx_runtime.OnnxModel",
        "parameters": {"uri": str(model_path)}}).decode())
    proc = subprocess.Popen([str(venv / "bin" / "mlserver"), "start", str(root)], cwd=root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return proc, port


def simdjson_floor(body: bytes) -> float:
    """The JSON decode floor: simdjson parses the body and copies the numbers into a buffer (no Python object per
    number), cast to FP32 — what the server's JSON fast path does, minus its checks."""
    import simdjson

    parser = simdjson.Parser()
    t = time.perf_counter()
    doc = parser.parse(body)
    data = doc["inputs"][0]["data"]
    arr = np.frombuffer(data.as_buffer(of_type="d"), np.float64).astype(np.float32)
    dt = time.perf_counter() - t
    del data, doc
    assert arr.size
    return dt


class ShmPair:
    """An input and an output region in /dev/shm, mapped here (the client's side) and registered with the server."""

    def __init__(self, conn_port: int, nbytes_in: int, nbytes_out: int, tag: str = "") -> None:
        import mmap

        self.names = [f"sepconv-bench-{os.getpid()}{tag}-in", f"sepconv-bench-{os.getpid()}{tag}-out"]
        self.maps = []
        for name, size in zip(self.names, (nbytes_in, nbytes_out), strict=True):
            fd = os.open(f"/dev/shm/{name}", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            os.ftruncate(fd, size)
            self.maps.append(mmap.mmap(fd, size))
            os.close(fd)
        c = http.client.HTTPConnection("127.0.0.1", conn_port, timeout=10)
        for region, name, size in ((f"bench_in{tag}", self.names[0], nbytes_in),
                                   (f"bench_out{tag}", self.names[1], nbytes_out)):
            c.request("POST", f"/v2/systemsharedmemory/region/{region}/register",
                      orjson.dumps({"key": "/" + name, "offset": 0, "byte_size": size}))
            response = c.getresponse()
            assert response.status == 200, response.read()
            response.read()
        c.close()
        self.input = np.frombuffer(self.maps[0], np.uint8)
        self.output = np.frombuffer(self.maps[1], np.float32)

    @staticmethod
    def body(shape: list[int], nbytes_in: int, nbytes_out: int, tag: str = "") -> tuple[bytes, dict[str, str]]:
        return orjson.dumps({"inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "parameters": {
            "shared_memory_region": f"bench_in{tag}", "shared_memory_byte_size": nbytes_in}}],
            "outputs": [{"name": "logits", "parameters": {"shared_memory_region": f"bench_out{tag}",
                                                          "shared_memory_byte_size": nbytes_out}}]}), \
            {"Content-Type": "application/json"}

    def close(self) -> None:
        del self.input, self.output
        for m in self.maps:
            m.close()
        for name in self.names:
            try:
                os.unlink(f"/dev/shm/{name}")
            except OSError:
                pass


def grpc_request(model: str, x: np.ndarray, input_name: str = "input"):
    from sepconv.service.grpc.generated import grpc_service_pb2 as pb

    request = pb.ModelInferRequest(model_name=model, raw_input_contents=[x.tobytes()])
    request.inputs.add(name=input_name, datatype="FP32", shape=list(x.shape))
    request.outputs.add(name="logits")
    return request


def grpc_stub(port: int, deadline_s: float = 180.0):
    """A stub on a fresh channel to 127.0.0.1:port, once the server there answers ServerReady."""
    import grpc

    from sepconv.service.grpc.generated import grpc_service_pb2 as pb
    from sepconv.service.grpc.generated import grpc_service_pb2_grpc as pb_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=GRPC_OPTIONS)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            if stub.ServerReady(pb.ServerReadyRequest(), timeout=2).ready:
                return channel, stub
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def default_ort_session(path: Path):
    """``ort.InferenceSession(path)`` with ONNX Runtime's default session options (what a user gets)."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path))
    except ValueError:  # builds with several providers want them named; the default order is ORT's own
        return ort.InferenceSession(str(path), providers=ort.get_available_providers())


def wait_ready(server: subprocess.Popen, port: int, model: str) -> None:
    deadline = time.monotonic() + 180
    while True:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", f"/v2/models/{model}/ready")
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the server did not become ready: " + (server.stderr.read().decode()
                                                                    if server.poll() is not None else "timeout"))
        time.sleep(0.2)


def decode_floor(body: bytes) -> float:
    t = time.perf_counter()
    req = orjson.loads(body)
    inp = req["inputs"][0]
    arr = np.array(inp["data"], dtype=np.float32).reshape(inp["shape"])
    dt = time.perf_counter() - t
    assert arr.size
    return dt


def throughput_server(port: int, request: bytes, clients: int, seconds: float,
                      shm: list[tuple[bytes, ShmPair]] | None = None, x_bytes: np.ndarray | None = None,
                      ) -> tuple[float, float]:
    """(requests per second, CPU seconds this client process used per second) at ``clients`` connections; with
    ``shm`` (one (request, regions) per client), each request goes through that client's shared-memory regions
    (the client copies the image in and the logits out, as in the latency samples)."""
    counts = [0] * clients
    start_barrier = threading.Barrier(clients + 1)
    errors: list[str] = []
    stop = [0.0]

    def worker(i: int) -> None:
        conn = Conn(port)
        start_barrier.wait()
        try:
            own = shm[i] if shm is not None else None
            while time.perf_counter() < stop[0]:
                if own is not None:
                    own[1].input[:] = x_bytes
                status, _, data = conn.send(request if own is None else own[0])
                if own is not None:
                    own[1].output.copy()
                if status != 200:
                    errors.append(data[:200].decode(errors="replace"))
                    return
                counts[i] += 1
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    stop[0] = time.perf_counter() + seconds + 0.05
    cpu0 = time.process_time()
    start_barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    if errors:
        raise SystemExit(f"server error during throughput run: {errors[0]}")
    return sum(counts) / elapsed, cpu / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mobilenet_v2_1.0_224")
    ap.add_argument("--rounds", type=int, default=4, help="rounds (latency samples = rounds x requests; "
                                                          "throughput slices per kind = rounds)")
    ap.add_argument("--requests", type=int, default=15, help="latency samples per kind per round")
    ap.add_argument("--seconds", type=float, default=6.0, help="throughput time per kind (split into rounds)")
    ap.add_argument("--mlserver", type=Path, metavar="VENV", help="a virtualenv with mlserver (e.g. 1.7.1) and "
                    "onnxruntime installed: MLServer serves the same ONNX file (a minimal runtime class, what a user "
                    "writes) and its JSON p50 is sampled in the same rounds (a bench-only dependency, never the "
                    "project's: python -m venv VENV && VENV/bin/pip install mlserver==1.7.1 onnxruntime)")
    ap.add_argument("--versus", type=Path, help="another checkout of sepconv (e.g. a git worktree of an older "
                                                "commit): its server is started too and its latency samples are "
                                                "interleaved with this one's, for an A/B in the same run")
    args = ap.parse_args()

    from sepconv.service.runtime.sessions import make_session
    from sepconv.service.settings import Settings

    tmp = Path(tempfile.mkdtemp(prefix="sepconv-bench-"))
    server = other = floor_proc = rest_floor_proc = socket_floor_proc = kept_floor_proc = mlserver = None
    shm_pair = None
    try:
        model_path = prepare_repo(args.model, tmp)
        grpc_port, floor_port = free_port(), free_port()
        server, port = start_server(ROOT, tmp, grpc_port)
        floor_proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--grpc-floor",
                                       str(floor_port)], cwd=ROOT, stdout=subprocess.DEVNULL)
        rest_floor_port, socket_floor_port = free_port(), free_port()
        rest_floor_proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--rest-floor",
                                            str(rest_floor_port)], cwd=ROOT, stdout=subprocess.DEVNULL)
        socket_floor_proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--socket-floor",
                                              str(socket_floor_port)], cwd=ROOT, stdout=subprocess.DEVNULL)
        kept_floor_port = free_port()  # the same bare app, glibc keeping freed memory (see KEEP_HEAP)
        kept_floor_proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--rest-floor",
                                            str(kept_floor_port)], cwd=ROOT, stdout=subprocess.DEVNULL,
                                           env={**os.environ, "GLIBC_TUNABLES": KEEP_HEAP})
        if args.mlserver is not None:
            mlserver, mlserver_port = start_mlserver(args.mlserver.resolve(), model_path, args.model, tmp)
        if args.versus is not None:
            other, other_port = start_server(args.versus.resolve(), tmp)
        settings = Settings()  # the server reads the same SEPCONV_* environment: same session options
        session = make_session(model_path, settings)
        default_session = default_ort_session(model_path)
        in_name = session.get_inputs()[0].name
        shape = [1, *session.get_inputs()[0].shape[1:]]
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        path = f"/v2/models/{args.model}/infer"
        bin_body, bin_headers = binary_body(x)
        js_body, js_headers = json_body(x)

        wait_ready(server, port, args.model)
        wait_ready(rest_floor_proc, rest_floor_port, args.model)
        wait_ready(socket_floor_proc, socket_floor_port, args.model)
        wait_ready(kept_floor_proc, kept_floor_port, args.model)
        floor_conn, socket_conn, kept_conn = Conn(rest_floor_port), Conn(socket_floor_port), Conn(kept_floor_port)
        ml_conn = None
        if mlserver is not None:
            wait_ready(mlserver, mlserver_port, args.model)
            ml_conn = Conn(mlserver_port)
            status, _, data = ml_conn.post(path, js_body, js_headers)
            assert status == 200, data[:300]
            ml_out = orjson.loads(data)["outputs"][0]
            np.testing.assert_allclose(np.array(ml_out["data"], np.float32).reshape(1, -1),
                                       session.run(None, {in_name: x})[0], rtol=1e-4, atol=1e-4)
        nbytes_out = int(np.prod(session.get_outputs()[0].shape[1:])) * 4
        shm_pair = ShmPair(port, x.nbytes, nbytes_out)
        shm_body, shm_headers = ShmPair.body(shape, x.nbytes, nbytes_out)
        shm_request = Conn.build(path, shm_body, shm_headers)
        x_bytes = np.frombuffer(x.tobytes(), np.uint8)

        def shm_infer() -> np.ndarray:
            shm_pair.input[:] = x_bytes  # the client puts its tensor in the region...
            return shm_placed()

        def shm_placed() -> np.ndarray:  # perf_analyzer's way: the input was put in its region once, beforehand
            status, _, data = conn.send(shm_request)
            assert status == 200, data[:300]
            return shm_pair.output.copy()  # ...and takes the result from the other

        other_conn = None
        if other is not None:
            wait_ready(other, other_port, args.model)
            other_conn = Conn(other_port)
            for _ in range(4):
                assert other_conn.post(path, bin_body, bin_headers)[0] == 200
                other_conn.post(path, js_body, js_headers)

        meta_conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        meta_conn.request("GET", f"/v2/models/{args.model}")
        server_providers = orjson.loads(meta_conn.getresponse().read())["parameters"]["execution_providers"]
        meta_conn.close()

        conn = Conn(port)
        # correctness and warm-up
        expected = session.run(None, {in_name: x})[0]
        status, headers, data = conn.post(path, bin_body, bin_headers)
        assert status == 200, data[:300]
        np.testing.assert_allclose(decode_binary(headers, data), expected, rtol=1e-4, atol=1e-5)
        status, _, data = conn.post(path, js_body, js_headers)
        assert status == 200, data[:300]
        np.testing.assert_allclose(np.array(orjson.loads(data)["outputs"][0]["data"], np.float32).reshape(1, -1),
                                   expected, rtol=1e-4, atol=1e-5)
        grpc_channel, grpc_server_stub = grpc_stub(grpc_port)
        floor_channel, floor_stub = grpc_stub(floor_port)
        g_request = grpc_request(args.model, x, in_name)
        g_response = grpc_server_stub.ModelInfer(g_request)
        np.testing.assert_allclose(np.frombuffer(g_response.raw_output_contents[0], np.float32).reshape(
            list(g_response.outputs[0].shape)), expected, rtol=1e-4, atol=1e-5)
        assert len(floor_stub.ModelInfer(g_request).raw_output_contents[0]) == FLOOR_OUTPUT
        np.testing.assert_allclose(default_session.run(None, {in_name: x})[0], expected, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(shm_infer().reshape(expected.shape), expected, rtol=1e-4, atol=1e-5)
        assert floor_conn.send(bin_request_warm := Conn.build(path, bin_body, bin_headers))[0] == 200
        for _ in range(3):
            session.run(None, {in_name: x})
            default_session.run(None, {in_name: x})
            conn.post(path, bin_body, bin_headers)
            conn.post(path, js_body, js_headers)
            grpc_server_stub.ModelInfer(g_request)
            floor_stub.ModelInfer(g_request)
            decode_floor(js_body)
            simdjson_floor(js_body)
            shm_infer()
            floor_conn.send(bin_request_warm)
            socket_conn.send(bin_request_warm)
            kept_conn.send(bin_request_warm)
            shm_placed()

        load_before = os.getloadavg()
        # Latency: one sample of each kind in turn, so that background load hits every kind alike.
        inproc, srv_bin, srv_json, floor, other_bin, other_json = [], [], [], [], [], []
        ort_default, srv_grpc, grpc_floor = [], [], []
        rest_floor, srv_shm, sj_floor, ml_json, rest_floor_json, rest_floor_shm = [], [], [], [], [], []
        sock_floor, sock_floor_json, sock_floor_shm, srv_shm_placed = [], [], [], []
        kept_floor, kept_floor_json = [], []
        shm_floor_request = Conn.build(path, shm_body, shm_headers)  # the shared-memory request's own bytes
        bin_request, js_request = Conn.build(path, bin_body, bin_headers), Conn.build(path, js_body, js_headers)
        run = {in_name: x}
        for _ in range(args.rounds * args.requests):
            timed(inproc, session.run, None, run)
            timed(srv_bin, conn.send, bin_request)
            timed(srv_json, conn.send, js_request)
            floor.append(decode_floor(js_body))
            sj_floor.append(simdjson_floor(js_body))
            timed(rest_floor, floor_conn.send, bin_request)
            timed(rest_floor_json, floor_conn.send, js_request)
            timed(sock_floor, socket_conn.send, bin_request)
            timed(sock_floor_json, socket_conn.send, js_request)
            timed(kept_floor, kept_conn.send, bin_request)
            timed(kept_floor_json, kept_conn.send, js_request)
            if ml_conn is not None:
                timed(ml_json, ml_conn.send, js_request)
            time.sleep(0.05)  # nor spinning threads of the servers (MLServer's ORT defaults) during this one
            timed(ort_default, default_session.run, None, run)
            time.sleep(0.1)  # ORT's default intra-op threads spin ~40 ms after a run: not during the next sample
            # the shm request's bytes alone, after the same idle time as the shm sample
            timed(rest_floor_shm, floor_conn.send, shm_floor_request)
            time.sleep(0.1)
            timed(sock_floor_shm, socket_conn.send, shm_floor_request)
            time.sleep(0.1)
            timed(srv_shm, shm_infer)
            time.sleep(0.1)
            timed(srv_shm_placed, shm_placed)
            timed(srv_grpc, grpc_server_stub.ModelInfer, g_request)
            timed(grpc_floor, floor_stub.ModelInfer, g_request)
            if other_conn is not None:
                timed(other_bin, other_conn.send, bin_request)
                timed(other_json, other_conn.send, js_request)
        shm_pair.close()
        shm_pair = None
        floor_conn.close()
        socket_conn.close()
        kept_conn.close()
        if ml_conn is not None:
            ml_conn.close()
            mlserver.terminate()  # type: ignore[union-attr]
        rest_floor_proc.terminate()
        conn.close()
        grpc_channel.close()
        floor_channel.close()
        floor_proc.terminate()
        if other_conn is not None:
            other_conn.close()
            other.terminate()  # type: ignore[union-attr]  # not running during the throughput slices

        # Throughput: short slices in turn (in-process sequential, server at 1/4/16), medians per kind.
        slice_s = args.seconds / args.rounds
        seq_rates: list[float] = []
        seq_default: list[float] = []
        rates: dict[int, list[float]] = {1: [], 4: [], 16: []}
        client_cpu: dict[int, list[float]] = {1: [], 4: [], 16: []}
        shm_rates: list[float] = []
        shm_pairs = [ShmPair(port, x.nbytes, nbytes_out, tag=f"_c{i}") for i in range(16)]
        shm_requests = [(Conn.build(path, ShmPair.body(shape, x.nbytes, nbytes_out, tag=f"_c{i}")[0], shm_headers),
                         pair) for i, pair in enumerate(shm_pairs)]
        for _ in range(args.rounds):
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < slice_s:
                session.run(None, {in_name: x})
                n += 1
            seq_rates.append(n / (time.perf_counter() - t0))
            time.sleep(0.1)
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < slice_s:
                default_session.run(None, {in_name: x})
                n += 1
            seq_default.append(n / (time.perf_counter() - t0))
            time.sleep(0.1)
            for c in rates:
                rate, cpu = throughput_server(port, bin_request, c, slice_s)
                rates[c].append(rate)
                client_cpu[c].append(cpu)
            shm_rates.append(throughput_server(port, bin_request, 16, slice_s, shm=shm_requests, x_bytes=x_bytes)[0])
        for pair in shm_pairs:
            pair.close()
        thr_shm = statistics.median(shm_rates)
        seq_thr = statistics.median(seq_rates)
        seq_def = statistics.median(seq_default)
        thr = {c: statistics.median(v) for c, v in rates.items()}
        load_after = os.getloadavg()

        stats_conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        stats_conn.request("GET", f"/v2/models/{args.model}/stats")
        stats = orjson.loads(stats_conn.getresponse().read())["model_stats"][0]
        batches = {b["batch_size"]: b["compute_infer"]["count"] for b in stats["batch_stats"]}

        ms = lambda s: f"{s * 1000:7.2f} ms"  # noqa: E731
        kinds = (("in", inproc), ("bin", srv_bin), ("json", srv_json), ("floor", floor), ("ort", ort_default),
                 ("grpc", srv_grpc), ("gfloor", grpc_floor), ("rfloor", rest_floor), ("shm", srv_shm),
                 ("sjfloor", sj_floor), ("rfloorjs", rest_floor_json),
                 ("rfloorshm", rest_floor_shm), ("sfloor", sock_floor), ("sfloorjs", sock_floor_json),
                 ("sfloorshm", sock_floor_shm), ("shmplaced", srv_shm_placed), ("kfloor", kept_floor),
                 ("kfloorjs", kept_floor_json), *((("ml", ml_json),) if ml_json else ()))
        p50 = {k: pct(v, 50) for k, v in kinds}
        p90 = {k: pct(v, 90) for k, v in kinds}
        print(f"model {args.model}, batch 1, {args.rounds} rounds x {args.requests} requests; "
              f"body sizes: binary {len(bin_body)} B, JSON {len(js_body)} B")
        print(f"cpu cores {os.cpu_count()}, load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
        print(f"ORT session options, in-process and server alike (service.runtime.make_session, same Settings): "
              f"intra_op_threads {settings.intra_op_threads or 'ORT default'}, inter_op_threads "
              f"{settings.inter_op_threads or 'ORT default'}, graph optimisation {settings.graph_optimization}, "
              f"allow_spinning {settings.allow_spinning}, cpu arena {settings.enable_cpu_mem_arena}, mem pattern "
              f"{settings.enable_mem_pattern}; providers in-process {session.get_providers()}, "
              f"server {server_providers}")
        print(f"{'':28}{'p50':>10}{'p90':>11}")
        for key, label in (("in", "in-process session.run"), ("bin", "server, binary request"),
                           ("json", "server, JSON request"), ("floor", "JSON decode floor"),
                           ("ort", "in-process, ORT defaults"), ("grpc", "server, gRPC request"),
                           ("gfloor", "gRPC transport floor"), ("rfloor", "REST transport floor"),
                           ("shm", "server, shared memory"), ("sjfloor", "JSON decode floor, simdjson"),
                           ("rfloorjs", "REST floor, JSON body"), ("rfloorshm", "REST floor, shm request"),
                           ("sfloor", "socket floor, binary body"), ("sfloorjs", "socket floor, JSON body"),
                           ("sfloorshm", "socket floor, shm request"), ("kfloor", "REST floor, heap kept"),
                           ("kfloorjs", "REST floor, heap kept, JSON"),
                           ("shmplaced", "shm, input placed once"), ("ml", "MLServer, JSON request")):
            if key in p50:
                print(f"{label:28}{ms(p50[key]):>10} {ms(p90[key]):>10}")
        print(f"gRPC: request {g_request.ByteSize()} B (raw_input_contents), response {g_response.ByteSize()} B; "
              f"floor response {FLOOR_OUTPUT} B raw; ORT defaults: providers {default_session.get_providers()}")
        if other_bin:
            for samples, label in ((other_bin, "--versus server, binary"), (other_json, "--versus server, JSON")):
                print(f"{label:28}{ms(pct(samples, 50)):>10} {ms(pct(samples, 90)):>10}")
            print(f"A/B p50, this / --versus: binary {p50['bin'] / pct(other_bin, 50):.3f}, JSON "
                  f"{p50['json'] / pct(other_json, 50):.3f}; overhead over in-process p50: binary "
                  f"{(p50['bin'] - p50['in']) * 1000:.2f} vs {(pct(other_bin, 50) - p50['in']) * 1000:.2f} ms, JSON "
                  f"{(p50['json'] - p50['in']) * 1000:.2f} vs {(pct(other_json, 50) - p50['in']) * 1000:.2f} ms")
        print(f"throughput, in-process sequential: {seq_thr:7.1f} req/s (server's settings), {seq_def:7.1f} req/s "
              "(ORT defaults)")
        for c, v in thr.items():
            print(f"throughput, server concurrency {c:2d}: {v:7.1f} req/s  ({v / seq_thr:.2f}x; the client process "
                  f"used {statistics.median(client_cpu[c]):.2f} CPU-s/s of the {os.cpu_count()} cores)")
        print(f"throughput, server concurrency 16, shared memory: {thr_shm:7.1f} req/s  ({thr_shm / seq_def:.2f}x "
              "ORT-defaults sequential; each client its own regions, copying the image in and the logits out)")
        inf = stats["inference_stats"]
        avg = lambda k: inf[k]["ns"] / max(1, inf[k]["count"]) / 1e6  # noqa: E731
        print(f"server-side means over all requests: total {avg('success'):.2f} ms = queue {avg('queue'):.2f} + "
              f"input {avg('compute_input'):.2f} + infer {avg('compute_infer'):.2f} + output "
              f"{avg('compute_output'):.2f} ms (plus decoding before the queue)")
        print("server batch sizes (executions): " + ", ".join(f"{b}: {n}" for b, n in sorted(batches.items())))
        r_bin = p50["bin"] / p50["in"]
        r_json = (p50["json"] - p50["in"]) / p50["floor"]
        r_thr = thr[16] / seq_thr
        r_grpc = (p50["grpc"] - p50["ort"]) / p50["gfloor"]
        r_rest = (p50["bin"] - p50["ort"]) / p50["rfloor"]
        r_shm = p50["shm"] / p50["ort"]
        r_sj = (p50["json"] - p50["ort"]) / p50["sjfloor"]
        r_thr_def = thr[16] / seq_def
        r_sj_phys = (p50["json"] - p50["ort"]) / (p50["sjfloor"] + p50["rfloorjs"])
        print()
        print("goal                                                    measured   goal    met")
        print(f"binary p50 / in-process p50                              {r_bin:6.3f}  <= 1.10  {r_bin <= 1.10}")
        print(f"(JSON p50 - in-process p50) / decode floor p50           {r_json:6.3f}  <= 1.25  {r_json <= 1.25}")
        print(f"throughput at concurrency 16 / in-process sequential     {r_thr:6.3f}  >= 1.10  {r_thr >= 1.10}")
        print(f"(gRPC p50 - ORT-defaults p50) / gRPC floor p50           {r_grpc:6.3f}  <= 1.25  {r_grpc <= 1.25}")
        print("issue 13, against in-process ORT with its DEFAULT session options (what a user runs):")
        print(f"(binary p50 - ORT-defaults p50) / REST floor p50         {r_rest:6.3f}  <= 1.25  {r_rest <= 1.25}")
        print(f"  the same over the REST floor with glibc keeping freed memory (the bare app's own cost is mostly "
              f"page faults: heap trimmed after each body) {(p50['bin'] - p50['ort']) / p50['kfloor']:6.3f}; over the "
              f"socket floor (bare uvloop protocol) {(p50['bin'] - p50['ort']) / p50['sfloor']:6.3f}")
        print(f"shared-memory p50 / ORT-defaults p50                     {r_shm:6.3f}  <= 1.10  {r_shm <= 1.10}")
        print(f"  (shared-memory p50 - ORT-defaults p50) / REST floor moving the shm request's "
              f"{len(shm_body)} B  {(p50['shm'] - p50['ort']) / p50['rfloorshm']:6.3f}")
        print(f"  the same, input placed in its region once (perf_analyzer --shared-memory system's way) "
              f"{p50['shmplaced'] / p50['ort']:6.3f}")
        print(f"  a perfect server (ORT-defaults run + moving the shm request): through uvicorn "
              f"{(p50['ort'] + p50['rfloorshm']) / p50['ort']:.3f}, over a bare socket "
              f"{(p50['ort'] + p50['sfloorshm']) / p50['ort']:.3f}")
        print(f"(JSON p50 - ORT-defaults p50) / simdjson floor p50       {r_sj:6.3f}  <= 1.25  {r_sj <= 1.25}")
        print(f"  (JSON p50 - ORT-defaults p50) / (simdjson floor + REST floor moving the JSON body) {r_sj_phys:6.3f}")
        r_sj_sock = (p50["json"] - p50["ort"]) / (p50["sjfloor"] + p50["sfloorjs"])
        print(f"  the same over simdjson floor + socket floor (a bare uvloop protocol moving the JSON body) "
              f"{r_sj_sock:6.3f}; a perfect server: {(p50['sjfloor'] + p50['sfloorjs']) / p50['sjfloor']:.3f} "
              "of the simdjson floor")
        if "ml" in p50:
            r_ml = p50["json"] / p50["ml"]
            print(f"JSON p50 / MLServer JSON p50                             {r_ml:6.3f}  <= 0.55  {r_ml <= 0.55}")
        else:
            print("JSON p50 / MLServer JSON p50                                n/a  (run with --mlserver VENV)")
        print(f"throughput at concurrency 16 / ORT-defaults sequential   {r_thr_def:6.3f}  >= 1.10  "
              f"{r_thr_def >= 1.10}")
        print(f"  the same with shared memory (no image over the socket)  {thr_shm / seq_def:6.3f}")
        print(f"same-settings ratio: binary p50 / in-process p50 (server's session options) {r_bin:.3f}; ORT "
              f"defaults / server's options in-process: {p50['ort'] / p50['in']:.3f}")
        print(f"(binary overhead p50: {(p50['bin'] - p50['in']) * 1000:.2f} ms; JSON overhead p50: "
              f"{(p50['json'] - p50['in']) * 1000:.2f} ms; medians of {len(inproc)} samples; "
              f"stdev in-process {statistics.pstdev(inproc) * 1000:.2f} ms)")
        print(f"(gRPC p50 {p50['grpc'] * 1000:.2f} ms vs REST binary {p50['bin'] * 1000:.2f} ms and JSON "
              f"{p50['json'] * 1000:.2f} ms; gRPC overhead over ORT defaults {(p50['grpc'] - p50['ort']) * 1000:.2f} "
              f"ms, over the server's own session options {(p50['grpc'] - p50['in']) * 1000:.2f} ms; floor "
              f"{p50['gfloor'] * 1000:.2f} ms)")
    finally:
        if shm_pair is not None:
            shm_pair.close()
        for proc in (server, other, floor_proc, rest_floor_proc, socket_floor_proc, kept_floor_proc, mlserver):
            if proc is not None and proc.poll() is None:
                proc.terminate()
            if proc is not None:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--grpc-floor":
        grpc_floor_server(int(sys.argv[2]))
    elif len(sys.argv) == 3 and sys.argv[1] == "--rest-floor":
        rest_floor_server(int(sys.argv[2]))
    elif len(sys.argv) == 3 and sys.argv[1] == "--socket-floor":
        socket_floor_server(int(sys.argv[2]))
    else:
        main()
