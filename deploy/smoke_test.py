"""Smoke test of a running sepconv server (a container, a compose stack, a Kubernetes Service).

    python deploy/smoke_test.py http://127.0.0.1:8000 [--model NAME] [--models-dir DIR] [--grpc 127.0.0.1:8001]

Waits for nothing: the server must already be ready. Checks /v2/health/ready, picks a model from the
repository index (the one with the smallest model file when --models-dir is given), asks for its V2
metadata, sends one KServe V2 inference request (JSON tensors, batch 1, seeded random input) and checks
the answer: the declared output shape, finite values and — with --models-dir holding the same repository
the server loaded and onnxruntime importable here — equality (within float rounding) to an in-process
ONNX Runtime run of the same model file. With --grpc HOST:PORT it then checks the gRPC side of the same server:
``grpc.health.v1.Health/Check`` for the server (service "") and for the model, and the same request through
Triton's ``GRPCInferenceService/ModelInfer`` (the unmodified ``tritonclient.grpc`` client), whose answer must equal
the REST one. Exit status 0 when all checks pass. Standard library + numpy (+ tritonclient[grpc] for --grpc).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

V2_TO_NUMPY = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32}


class SmokeError(RuntimeError):
    pass


def http(method: str, url: str, body: Any = None, timeout: float = 60.0) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw) if raw else None
    except json.JSONDecodeError:
        return status, raw.decode(errors="replace")


def model_file(models_dir: Path, name: str, version: str | None) -> Path | None:
    root = models_dir / name
    if version and (root / version / "model.onnx").is_file():
        return root / version / "model.onnx"
    versions = sorted((p for p in root.glob("*/model.onnx")), key=lambda p: int(p.parent.name)
                      if p.parent.name.isdigit() else -1)
    return versions[-1] if versions else None


def choose_model(url: str, models_dir: Path | None) -> tuple[str, str | None]:
    status, index = http("POST", f"{url}/v2/repository/index", {})
    names: list[tuple[str, str | None]] = []
    if status == 200 and isinstance(index, list):
        for entry in index:
            if str(entry.get("state", "READY")).upper() == "READY":
                version = entry.get("version")
                names.append((entry["name"], str(version) if version not in (None, "") else None))
    elif models_dir is not None:
        names = [(p.name, None) for p in sorted(models_dir.iterdir()) if p.is_dir()]
    if not names:
        raise SmokeError(f"no ready model on {url} (repository index: HTTP {status} {index!r})")
    if models_dir is not None:
        sized = [(f.stat().st_size, n, v) for n, v in names if (f := model_file(models_dir, n, v)) is not None]
        if sized:
            _, name, version = min(sized)
            return name, version
    return names[0]


def concrete(shape: list[int]) -> list[int]:
    return [1 if int(d) < 0 else int(d) for d in shape]


def grpc_check(target: str, model: str, x: np.ndarray, rest_y: np.ndarray, input_name: str, output_name: str,
               datatype: str) -> dict[str, Any]:
    """grpc.health.v1 Check (server and model) and one ModelInfer whose answer must equal the REST one."""
    import grpc  # noqa: PLC0415
    import tritonclient.grpc as grpcclient  # noqa: PLC0415
    from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: PLC0415

    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", model):
            status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
            if status != health_pb2.HealthCheckResponse.SERVING:
                raise SmokeError(f"grpc.health.v1 Check({service!r}) on {target}: {status}")
    client = grpcclient.InferenceServerClient(target)
    try:
        if not client.is_server_ready() or not client.is_model_ready(model):
            raise SmokeError(f"gRPC {target}: server or model {model} not ready")
        inp = grpcclient.InferInput(input_name, list(x.shape), datatype)
        inp.set_data_from_numpy(x)
        started = time.perf_counter()
        result = client.infer(model, [inp], outputs=[grpcclient.InferRequestedOutput(output_name)])
        elapsed_ms = (time.perf_counter() - started) * 1000
        y = result.as_numpy(output_name)
    finally:
        client.close()
    if y is None or y.shape != rest_y.shape:
        raise SmokeError(f"gRPC output shape {None if y is None else y.shape}, REST gave {rest_y.shape}")
    err = float(np.max(np.abs(y.astype(np.float64) - rest_y.astype(np.float64))))
    if err > 1e-5 * max(1.0, float(np.max(np.abs(rest_y)))):
        raise SmokeError(f"gRPC and REST answers differ: max abs err {err:g}")
    return {"grpc": target, "grpc_health": "SERVING", "grpc_infer_ms": round(elapsed_ms, 1),
            "grpc_max_abs_err_vs_rest": err}


def run(url: str, model: str | None, models_dir: Path | None, seed: int,
        grpc_target: str | None = None) -> dict[str, Any]:
    url = url.rstrip("/")
    status, _ = http("GET", f"{url}/v2/health/ready")
    if status != 200:
        raise SmokeError(f"/v2/health/ready answered {status}")
    version: str | None = None
    if model is None:
        model, version = choose_model(url, models_dir)
    status, meta = http("GET", f"{url}/v2/models/{model}")
    if status != 200 or not isinstance(meta, dict):
        raise SmokeError(f"model metadata for {model}: HTTP {status} {meta!r}")
    (inp,) = meta["inputs"]
    out_meta = meta["outputs"][0]
    dtype = V2_TO_NUMPY[inp["datatype"]]
    shape = concrete(inp["shape"])
    x = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    body = {"inputs": [{"name": inp["name"], "shape": shape, "datatype": inp["datatype"],
                        "data": x.ravel().tolist()}],
            "outputs": [{"name": out_meta["name"]}]}
    started = time.perf_counter()
    status, answer = http("POST", f"{url}/v2/models/{model}/infer", body)
    elapsed_ms = (time.perf_counter() - started) * 1000
    if status != 200 or not isinstance(answer, dict):
        raise SmokeError(f"infer {model}: HTTP {status} {str(answer)[:300]}")
    (out,) = [o for o in answer["outputs"] if o["name"] == out_meta["name"]]
    y = np.asarray(out["data"], dtype=V2_TO_NUMPY[out["datatype"]]).reshape(out["shape"])
    expected_shape = concrete(out_meta["shape"])
    if list(y.shape) != expected_shape:
        raise SmokeError(f"output shape {list(y.shape)}, metadata says {expected_shape}")
    if not np.all(np.isfinite(y)):
        raise SmokeError("output has non-finite values")
    report: dict[str, Any] = {"model": model, "input_shape": shape, "output_shape": list(y.shape),
                              "infer_ms": round(elapsed_ms, 1), "compared_with_onnxruntime": False}
    providers = (meta.get("parameters") or {}).get("execution_providers")
    if providers:
        report["execution_providers"] = providers
    if grpc_target is not None:
        report.update(grpc_check(grpc_target, model, x, y, inp["name"], out_meta["name"], inp["datatype"]))
    if models_dir is not None:
        path = model_file(models_dir, model, version or (meta.get("versions") or [None])[-1])
        if path is None:
            raise SmokeError(f"{model}: no model.onnx under {models_dir}")
        try:
            import onnxruntime as ort  # noqa: PLC0415
        except ImportError:
            report["note"] = "onnxruntime not importable here: output compared for shape and finiteness only"
            return report
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (reference,) = session.run([out_meta["name"]], {inp["name"]: x})
        err = float(np.max(np.abs(reference - y)))
        scale = max(1.0, float(np.max(np.abs(reference))))
        report.update(compared_with_onnxruntime=True, model_file=str(path), max_abs_err=err)
        if err > 1e-4 * scale:
            raise SmokeError(f"server output differs from onnxruntime on {path}: max abs err {err:g}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="server base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--model", help="model to query (default: from the repository index)")
    parser.add_argument("--models-dir", type=Path, help="the repository the server loaded, to compare outputs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grpc", metavar="HOST:PORT", help="also check the gRPC side (health, one ModelInfer)")
    args = parser.parse_args(argv)
    try:
        report = run(args.url, args.model, args.models_dir, args.seed, args.grpc)
    except Exception as exc:  # noqa: BLE001 - any failure (HTTP, gRPC, a missing key) fails the smoke test
        print(f"smoke test FAILED: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
