"""Scale-out without Docker: three `sepconv serve` processes behind a real nginx running the repo's config.

REST goes through the config's HTTP server block, gRPC (Triton's GRPCInferenceService, grpc.health.v1, a
ModelStreamInfer stream) through its HTTP/2 server block (`grpc_pass`), with the unmodified tritonclient.grpc.

nginx (Debian package) runs deploy/nginx/nginx.conf with only the upstream server lines, the listen
address and the log/temp paths substituted (tests/deploy_helpers.render_nginx_conf). The test checks
that requests spread over all three replicas (each replica's own /v2/models/{m}/stats), and that
killing one replica in the middle of a concurrent run (SIGSTOP, so that requests pile up on it in flight,
then SIGKILL) loses no request: nginx retries what the dead replica dropped (connection errors,
including POST infer requests already sent: `non_idempotent`) on the others, and every answer still
equals ONNX Runtime's on the same model file. Without `non_idempotent` in the config this test fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.deploy_helpers import ROOT, nginx_binary, nginx_command, nginx_prefix, render_nginx_conf, stop, wait_http
from tests.serving import free_port

pytestmark = pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed (apt-get install nginx-light)")

MODEL = "tiny"
REPLICAS = 3


@dataclass
class Replica:
    port: int
    grpc_port: int
    process: subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def model_repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    subprocess.run(
        [sys.executable, "-m", "sepconv", "export", "mobilenet_v1", "--alpha", "0.25", "--resolution", "32",
         "--classes", "10", "--name", MODEL, "--repo", str(repo)],
        check=True, cwd=ROOT, capture_output=True, timeout=300)
    assert (repo / MODEL / "1" / "model.onnx").is_file()
    return repo


@pytest.fixture(scope="module")
def cluster(model_repo: Path, tmp_path_factory) -> Iterator[tuple[str, list[Replica], Path, str]]:
    """Three replicas and nginx in front of them; yields (nginx URL, replicas, nginx access log, nginx gRPC address)."""
    logs = tmp_path_factory.mktemp("logs")
    # one trace folder for all replicas, as the compose `scale` profile shares the `traces` volume
    env = {**os.environ, "SEPCONV_INTRA_OP_THREADS": "1", "SEPCONV_INTER_OP_THREADS": "1",
           "SEPCONV_PROVIDERS": "cpu", "SEPCONV_TRACE_DIR": str(tmp_path_factory.mktemp("traces"))}
    replicas: list[Replica] = []
    prefix = nginx_prefix()
    nginx: subprocess.Popen | None = None
    try:
        for i in range(REPLICAS):
            port, grpc_port = free_port(), free_port()
            log = logs / f"replica{i}.log"
            process = subprocess.Popen(
                [sys.executable, "-m", "sepconv", "serve", "--repo", str(model_repo), "--host", "127.0.0.1",
                 "--port", str(port), "--grpc-port", str(grpc_port), "--log-level", "warning"],
                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"))
            replicas.append(Replica(port, grpc_port, process))
        for i, r in enumerate(replicas):
            wait_http(f"{r.url}/v2/health/ready", r.process, logs / f"replica{i}.log")

        lb_port, lb_grpc_port = free_port(), free_port()
        conf = prefix / "nginx.conf"
        conf.write_text(render_nginx_conf([f"127.0.0.1:{r.port}" for r in replicas], f"127.0.0.1:{lb_port}",
                                          prefix, grpc_upstreams=[f"127.0.0.1:{r.grpc_port}" for r in replicas],
                                          grpc_listen=f"127.0.0.1:{lb_grpc_port}"))
        nginx = subprocess.Popen(nginx_command(conf, prefix), stdout=subprocess.DEVNULL,
                                 stderr=(prefix / "stderr.log").open("w"))
        wait_http(f"http://127.0.0.1:{lb_port}/nginx-health", nginx, prefix / "error.log", timeout=30)
        yield f"http://127.0.0.1:{lb_port}", replicas, prefix / "access.log", f"127.0.0.1:{lb_grpc_port}"
    finally:
        if nginx is not None:
            stop(nginx)
        for r in replicas:
            stop(r.process)
        shutil.rmtree(prefix, ignore_errors=True)


@pytest.fixture(scope="module")
def reference(model_repo: Path):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(model_repo / MODEL / "1" / "model.onnx"), providers=["CPUExecutionProvider"])

    def run(x: np.ndarray) -> np.ndarray:
        return session.run(["logits"], {"input": x})[0]

    return run


def request_input(i: int) -> np.ndarray:
    return np.random.default_rng(i).standard_normal((1, 3, 32, 32)).astype(np.float32)


def infer(client: httpx.Client, url: str, i: int) -> tuple[int, np.ndarray | None, str]:
    x = request_input(i)
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    try:
        response = client.post(f"{url}/v2/models/{MODEL}/infer", json=body, timeout=60.0)
    except httpx.HTTPError as exc:
        return -1, None, f"{type(exc).__name__}: {exc}"
    if response.status_code != 200:
        return response.status_code, None, response.text[:300]
    (out,) = response.json()["outputs"]
    return 200, np.asarray(out["data"], dtype=np.float32).reshape(out["shape"]), ""


def inference_count(replica: Replica) -> int:
    stats = httpx.get(f"{replica.url}/v2/models/{MODEL}/stats", timeout=10.0).json()
    return sum(int(m["inference_count"]) for m in stats["model_stats"])


def test_requests_spread_over_all_replicas(cluster, reference):
    url, replicas, _, _ = cluster
    before = [inference_count(r) for r in replicas]
    n = 30
    with httpx.Client() as client:
        for i in range(n):
            status, y, error = infer(client, url, i)
            assert status == 200, error
            np.testing.assert_allclose(y, reference(request_input(i)), rtol=1e-5, atol=1e-5)
    served = [inference_count(r) - b for r, b in zip(replicas, before, strict=True)]
    assert sum(served) == n
    assert all(s > 0 for s in served), f"some replica got no request: {served}"


def test_smoke_test_script_through_nginx(cluster, model_repo):
    """deploy/smoke_test.py (what scripts/container-test and the docs use) passes through the balancer."""
    url, _, _, _ = cluster
    result = subprocess.run([sys.executable, str(ROOT / "deploy" / "smoke_test.py"), url, "--models-dir",
                             str(model_repo)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert '"compared_with_onnxruntime": true' in result.stdout and f'"model": "{MODEL}"' in result.stdout


def test_profile_trace_url_through_nginx(cluster):
    """A profile asked through the balancer names the balancer (Host keeps its port) in ``trace_url``, and the
    trace downloads whichever replica answers the download (the replicas share their trace folder)."""
    url, _, access_log, _ = cluster
    with httpx.Client(timeout=120.0) as client:
        response = client.post(f"{url}/v1/models/{MODEL}/profile", json={"runs": 1, "warmup": 0})
        assert response.status_code == 200, response.text
        trace_url = response.json()["trace_url"]
        assert trace_url.startswith(f"{url}/v1/profile/traces/"), trace_url
        for _ in range(2 * REPLICAS):  # least_conn on idle replicas: the downloads reach every replica
            trace = client.get(trace_url)
            assert trace.status_code == 200, trace.text
            assert trace.json()["traceEvents"]
    time.sleep(0.2)
    served_by = {line.split("upstream=")[1].split()[0] for line in access_log.read_text().splitlines()
                 if "/v1/profile/traces/" in line}
    assert len(served_by) > 1, served_by


def test_grpc_through_nginx_spreads_and_matches_onnxruntime(cluster, reference):
    """The balancer's gRPC block (``listen ... http2`` + ``grpc_pass``): grpc.health.v1 and unary ModelInfer reach
    every replica, and each answer equals ONNX Runtime's."""
    grpc = pytest.importorskip("grpc")
    grpcclient = pytest.importorskip("tritonclient.grpc")
    from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: PLC0415

    _, replicas, _, target = cluster
    replicas = [r for r in replicas if r.process.poll() is None]  # (run before the replica-killing test)
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", MODEL):
            answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as unknown:  # the replica's NOT_FOUND comes through the balancer
            stub.Check(health_pb2.HealthCheckRequest(service="absent"), timeout=10)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    before = [inference_count(r) for r in replicas]
    n = 30
    # a new client (new HTTP/2 connection) per request: nginx balances connections' requests with least_conn
    for i in range(n):
        client = grpcclient.InferenceServerClient(target)
        try:
            x = request_input(i)
            inp = grpcclient.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            y = client.infer(MODEL, [inp]).as_numpy("logits")
        finally:
            client.close()
        np.testing.assert_allclose(y, reference(x), rtol=1e-5, atol=1e-5)
    served = [inference_count(r) - b for r, b in zip(replicas, before, strict=True)]
    assert sum(served) == n
    assert sum(s > 0 for s in served) >= 2, f"gRPC requests were not balanced: {served}"


def test_grpc_stream_through_nginx(cluster, reference):
    """ModelStreamInfer through the balancer: one HTTP/2 stream, every response in order and correct."""
    grpcclient = pytest.importorskip("tritonclient.grpc")
    import queue  # noqa: PLC0415

    _, _, _, target = cluster
    answers: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(target)
    try:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        n = 8
        for i in range(n):
            x = request_input(100 + i)
            inp = grpcclient.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            client.async_stream_infer(MODEL, [inp], request_id=str(i))
        got = [answers.get(timeout=60) for _ in range(n)]
        client.stop_stream()
    finally:
        client.close()
    for i, (result, error) in enumerate(got):
        assert error is None, error
        assert result.get_response().id == str(i)
        np.testing.assert_allclose(result.as_numpy("logits"), reference(request_input(100 + i)), rtol=1e-5, atol=1e-5)


@pytest.mark.reliability
def test_killing_a_replica_mid_run_loses_no_request(cluster, reference):
    url, replicas, access_log, _ = cluster
    victim = replicas[0]
    survivors = replicas[1:]
    before = [inference_count(r) for r in survivors]
    n, workers, kill_after = 150, 6, 40
    done = 0
    lock = threading.Lock()
    killed = threading.Event()

    def one(i: int) -> tuple[int, int, np.ndarray | None, str]:
        nonlocal done
        result = infer(client, url, i)
        with lock:
            done += 1
            if done == kill_after:
                # Freeze the victim first: the kernel still accepts connections and requests for it, so
                # nginx keeps routing some requests there, which hang in flight; then kill it outright.
                # Those requests (POSTs) were sent and got no answer: only a retry can save them.
                victim.process.send_signal(signal.SIGSTOP)
                threading.Timer(0.5, kill_victim).start()
        return (i, *result)

    def kill_victim() -> None:
        victim.process.send_signal(signal.SIGKILL)
        killed.set()

    with httpx.Client(limits=httpx.Limits(max_connections=workers)) as client, \
            ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(one, range(n)))
    victim.process.wait(timeout=10)
    assert killed.is_set() and victim.process.returncode == -signal.SIGKILL

    failures = [(i, status, error) for i, status, _, error in results if status != 200]
    assert failures == [], f"{len(failures)} of {n} requests lost: {failures[:5]}"
    for i, _, y, _ in results:
        np.testing.assert_allclose(y, reference(request_input(i)), rtol=1e-5, atol=1e-5)

    # The survivors answered everything the victim did not; nginx really retried on them: the access log
    # shows attempts on the dead replica's address followed by a survivor (upstream="A, B").
    served_by_survivors = sum(inference_count(r) - b for r, b in zip(survivors, before, strict=True))
    served_by_victim = n - served_by_survivors  # before it died
    assert 0 < served_by_victim <= kill_after + workers
    time.sleep(0.2)  # let nginx flush its access log line
    victim_addr = f"127.0.0.1:{victim.port}"
    retried = [line for line in access_log.read_text().splitlines()
               if f"upstream={victim_addr}, " in line and " 200 " in line]
    assert retried, "no request was retried away from the killed replica"


