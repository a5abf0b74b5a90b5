"""Smoke test of a running sepconv server (a container, a compose stack, a Kubernetes Service).

    python deploy/smoke_test.py http://127.0.0.1:8000 [--model NAME] [--models-dir DIR]

Waits for nothing: the server must already be ready. Checks /v2/health/ready, picks a model from the
repository index (the one with the smallest model file when --models-dir is given), asks for its V2
metadata, sends one KServe V2 inference request (JSON tensors, batch 1, seeded random input) and checks
the answer: the declared output shape, finite values and — with --models-dir holding the same repository
the server loaded and onnxruntime importable here — equality (within float rounding) to an in-process
ONNX Runtime run of the same model file. Exit status 0 when all checks pass. Standard library + numpy.
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


def run(url: str, model: str | None, models_dir: Path | None, seed: int) -> dict[str, Any]:
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
    args = parser.parse_args(argv)
    try:
        report = run(args.url, args.model, args.models_dir, args.seed)
    except (SmokeError, OSError, KeyError, ValueError) as exc:
        print(f"smoke test FAILED: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
