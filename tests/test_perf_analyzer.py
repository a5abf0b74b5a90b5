"""Triton's own load generator, unmodified, against a real `sepconv serve`: `perf_analyzer -i http` and `-i grpc`.

perf_analyzer comes from the `perf-analyzer` wheel on PyPI and runs in a Debian trixie chroot (its glibc is newer
than this machine's): ``scripts/perf-analyzer-setup`` makes it (once; cached) and the module skips with the
script's reason where it cannot (no root, no network to the Debian mirror or PyPI). The server is the real CLI in
its own process, REST and gRPC on free loopback ports, over a tiny model (``tests.conftest.build_cnn``).

Each run must exit 0, print no error, report a throughput above zero and the server-side statistics perf_analyzer
reads from our statistics extension, and the server's own ``/v2/models/{m}/stats`` must have counted at least
the requests perf_analyzer says it sent. gRPC cases skip when this checkout has no gRPC transport
(``sepconv.service.grpc``), shared-memory cases when the server does not register system shared memory.

Measurement settings: count windows of 50 requests and a stability band wide enough that a busy machine never
turns a correct run into "failed to obtain stable measurement" — this is a protocol test, not a benchmark.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import build_cnn
from tests.deploy_helpers import ROOT, stop, wait_http
from tests.serving import free_port

MODEL = "tiny"
SETUP = ROOT / "scripts" / "perf-analyzer-setup"
HAS_GRPC = importlib.util.find_spec("sepconv.service.grpc") is not None
NO_GRPC = "this checkout has no gRPC transport (sepconv.service.grpc): perf_analyzer -i grpc has nothing to talk to"
MEASURE = ["--measurement-mode", "count_windows", "--measurement-request-count", "50",
           "--stability-percentage", "1000", "--max-trials", "5"]
THROUGHPUT = re.compile(r"^\s*Throughput:\s*([0-9.]+)\s*infer/sec", re.M)
CLIENT_REQUESTS = re.compile(r"Client:\s*\n\s*Request count:\s*(\d+)")
SERVER_INFERENCES = re.compile(r"Server:\s*\n\s*Inference count:\s*(\d+)")
ERROR_WORDS = re.compile(r"\berror\b|\bfailed\b|unable to|exception", re.I)

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def perf_analyzer() -> Path:
    """The wrapper made by scripts/perf-analyzer-setup (idempotent: a few ms once set up, ~1 min the first time)."""
    if os.geteuid() != 0:
        pytest.skip("perf_analyzer runs in a chroot made by debootstrap: needs root")
    try:
        result = subprocess.run([str(SETUP)], capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        pytest.skip("scripts/perf-analyzer-setup did not finish within 15 min (slow network?)")
    if result.returncode == 77:
        pytest.skip(result.stdout.strip().splitlines()[-1])
    assert result.returncode == 0, f"scripts/perf-analyzer-setup failed:\n{result.stdout}\n{result.stderr}"
    wrapper = Path(result.stdout.strip().splitlines()[-1])
    assert wrapper.is_file(), result.stdout
    return wrapper


@dataclass
class Served:
    rest: str  # host:port
    grpc: str | None

    def inference_count(self) -> int:
        stats = httpx.get(f"http://{self.rest}/v2/models/{MODEL}/stats", timeout=10.0).json()
        return sum(int(m["inference_count"]) for m in stats["model_stats"])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`sepconv serve` (the CLI, its own process) over a one-model repository; REST and, when present, gRPC."""
    repo = tmp_path_factory.mktemp("repo")
    build_cnn(repo / MODEL / "1" / "model.onnx", seed=1)
    log = tmp_path_factory.mktemp("logs") / "server.log"
    port = free_port()
    grpc_port = free_port() if HAS_GRPC else None
    args = [sys.executable, "-m", "sepconv", "serve", "--repo", str(repo), "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "warning"]
    if grpc_port is not None:
        args += ["--grpc-port", str(grpc_port)]
    env = {**os.environ, "SEPCONV_PROVIDERS": "cpu", "SEPCONV_INTRA_OP_THREADS": "1",
           "SEPCONV_INTER_OP_THREADS": "1", "SEPCONV_ACCESS_LOG": "false"}
    process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    try:
        wait_http(f"http://127.0.0.1:{port}/v2/health/ready", process, log)
        yield Served(rest=f"127.0.0.1:{port}", grpc=None if grpc_port is None else f"127.0.0.1:{grpc_port}")
    finally:
        stop(process)


def run_perf_analyzer(wrapper: Path, served: Served, protocol: str, *extra: str) -> str:
    """One perf_analyzer run; asserts it worked and returns its output."""
    url = served.rest if protocol == "http" else served.grpc
    assert url is not None
    before = served.inference_count()
    args = [str(wrapper), "-m", MODEL, "-u", url, "-i", protocol, *MEASURE, *extra]
    result = subprocess.run(args, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"perf_analyzer exited {result.returncode}:\n{output}"
    errors = [line for line in output.splitlines() if ERROR_WORDS.search(line)]
    assert errors == [], f"perf_analyzer reported errors:\n{output}"
    throughputs = [float(x) for x in THROUGHPUT.findall(output)]
    assert throughputs and all(t > 0 for t in throughputs), f"no throughput figure:\n{output}"
    # perf_analyzer read our statistics extension for its "Server:" section, and our counters agree with it
    sent = sum(int(n) for n in CLIENT_REQUESTS.findall(output))
    seen_by_server = [int(n) for n in SERVER_INFERENCES.findall(output)]
    assert sent > 0 and seen_by_server and all(n > 0 for n in seen_by_server), output
    batch = int(extra[extra.index("-b") + 1]) if "-b" in extra else 1
    assert served.inference_count() - before >= sent * batch, output
    return output


def test_perf_analyzer_http(perf_analyzer: Path, served: Served):
    output = run_perf_analyzer(perf_analyzer, served, "http")
    assert "Using synchronous calls for inference" in output


def test_perf_analyzer_http_async_concurrency_and_batch(perf_analyzer: Path, served: Served):
    output = run_perf_analyzer(perf_analyzer, served, "http", "--async", "--concurrency-range", "4", "-b", "2")
    assert "Concurrency: 4, throughput:" in output and "Batch size: 2" in output


@pytest.mark.skipif(not HAS_GRPC, reason=NO_GRPC)
def test_perf_analyzer_grpc_sync(perf_analyzer: Path, served: Served):
    output = run_perf_analyzer(perf_analyzer, served, "grpc")
    assert "Using synchronous calls for inference" in output


@pytest.mark.skipif(not HAS_GRPC, reason=NO_GRPC)
def test_perf_analyzer_grpc_streaming(perf_analyzer: Path, served: Served):
    """``--streaming``: every request on one ModelStreamInfer stream (perf_analyzer requires async for it)."""
    output = run_perf_analyzer(perf_analyzer, served, "grpc", "--streaming")
    assert "Using asynchronous calls for inference" in output


@pytest.mark.skipif(not HAS_GRPC, reason=NO_GRPC)
def test_perf_analyzer_grpc_streaming_concurrency_and_batch(perf_analyzer: Path, served: Served):
    output = run_perf_analyzer(perf_analyzer, served, "grpc", "--streaming", "--concurrency-range", "4", "-b", "2")
    assert "Concurrency: 4, throughput:" in output and "Batch size: 2" in output


def shared_memory_support(served: Served, protocol: str) -> str | None:
    """None when the server registers a real system shared-memory region over ``protocol``, else why not."""
    import tritonclient.utils.shared_memory as shm  # noqa: PLC0415
    from tritonclient.utils import InferenceServerException  # noqa: PLC0415

    if protocol == "http":
        import tritonclient.http as client_module  # noqa: PLC0415
    else:
        import tritonclient.grpc as client_module  # noqa: PLC0415
    key = f"/sepconv-pa-probe-{os.getpid()}"
    handle = shm.create_shared_memory_region("sepconv_pa_probe", key, 64)
    client = client_module.InferenceServerClient(served.rest if protocol == "http" else served.grpc)
    try:
        client.register_system_shared_memory("sepconv_pa_probe", key, 64)
        client.unregister_system_shared_memory("sepconv_pa_probe")
        return None
    except InferenceServerException as exc:
        return f"the server does not register system shared memory over {protocol}: {exc.message()}"
    finally:
        client.close()
        shm.destroy_shared_memory_region(handle)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perf_analyzer_system_shared_memory(perf_analyzer: Path, served: Served, protocol: str):
    """``--shared-memory system``: inputs and outputs in /dev/shm regions registered with the server."""
    if protocol == "grpc" and not HAS_GRPC:
        pytest.skip(NO_GRPC)
    reason = shared_memory_support(served, protocol)
    if reason is not None:
        pytest.skip(reason)
    run_perf_analyzer(perf_analyzer, served, protocol, "--shared-memory", "system")
