"""`sepconv serve` as a user runs it: a subprocess on a free loopback port, settings from flags and SEPCONV_*
environment variables, JSON access-log lines, and a clean exit on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import tritonclient.http as httpclient

from tests.serving import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[1]


def test_sepconv_serve_flags_env_access_log_and_sigterm(model_repo: Path) -> None:
    port = free_port()
    env = {**os.environ, "SEPCONV_ADMIN_TOKEN": "tok", "SEPCONV_PROVIDERS": "cpu"}
    proc = subprocess.Popen([sys.executable, "-m", "sepconv", "serve", "--repo", str(model_repo), "--port", str(port),
                             "--model-control", "explicit"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url)
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        assert client.is_model_ready("tiny")
        assert httpx.post(url + "/v2/repository/models/tiny/unload").status_code == 401  # token from the env
        assert httpx.get(url + "/").status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    # uvicorn shuts down gracefully, then re-raises the signal: exit status 0 or -SIGTERM
    assert proc.returncode in (0, -signal.SIGTERM), err.decode()
    assert b"Application shutdown complete" in err and b"model tiny unloaded" in err
    lines = [orjson.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    ready = [r for r in lines if r["path"] == "/v2/models/tiny/ready"]
    assert ready and ready[0]["status"] == 200 and ready[0]["route"] == "/v2/models/{model_name}/ready"
    assert any(r["status"] == 401 for r in lines)
    assert b"serving" in err  # the start-up log line


def test_bad_settings_are_one_line_errors_not_tracebacks(model_repo: Path) -> None:
    """A flag or a SEPCONV_* variable out of range: exit 2 with the field named, and no Python traceback."""
    cases = [(["--model-control", "bogus"], {}, "model_control"),
             ([], {"SEPCONV_GRPC_PORT": "99999"}, "grpc_port")]
    for args, env, field in cases:
        r = subprocess.run([sys.executable, "-m", "sepconv", "serve", "--repo", str(model_repo),
                            "--port", str(free_port()), *args], cwd=ROOT, env={**os.environ, **env},
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, r.stderr
        assert f"error: {field}:" in r.stderr and "Traceback" not in r.stderr
