"""The in-process ceiling of the CPU execution policy under concurrency (service/runtime/serving.py), in one run.

    .venv/bin/python bench/policy.py [--model models/mobilenet_v2_1.0_224/1/model.onnx] [--rounds 3] [--seconds 1.5]

Images per second, in short slices taken in turn (medians per kind), for:
* ``default sequential``: one ``ort.InferenceSession(path)`` with ORT's defaults, one run after another (the baseline
  of issue 13's throughput goal);
* ``N single-threaded side by side``: one session with ``intra_op_num_threads=1`` run by N threads at once (N = cores;
  what the server's concurrent path does), at batch 1, 2 and 4;
* ``N default-threaded side by side``: the same with all cores per run and spinning off (the previous policy);
* ``default batch 4``: the default session at batch 4, run after run.
No transport: the figures are the ceiling any server policy can reach on this machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _options(threads: int) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def _sequential(session: ort.InferenceSession, x: np.ndarray, seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        session.run(None, {"input": x})
        n += len(x)
    return n / (time.perf_counter() - t0)


def _side_by_side(session: ort.InferenceSession, x: np.ndarray, seconds: float, runners: int) -> float:
    counts = [0] * runners
    stop = time.perf_counter() + seconds

    def run(i: int) -> None:
        while time.perf_counter() < stop:
            session.run(None, {"input": x})
            counts[i] += len(x)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(runners)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="an ONNX file (default: export mobilenet_v2_1.0_224)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=1.5)
    args = ap.parse_args()
    tmp = None
    path = args.model
    if path is None:
        from sepconv.export.repository.catalog import ExportRequest, export  # noqa: PLC0415

        tmp = tempfile.TemporaryDirectory()
        path = export(ExportRequest("mobilenet_v2", alpha=1.0, resolution=224), Path(tmp.name), force=True).path
    cores = os.cpu_count() or 2
    default = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    single = ort.InferenceSession(str(path), _options(1), providers=["CPUExecutionProvider"])
    threaded = ort.InferenceSession(str(path), _options(0), providers=["CPUExecutionProvider"])
    shape = [d if isinstance(d, int) else 1 for d in default.get_inputs()[0].shape[1:]]
    x1 = np.random.default_rng(0).uniform(-1, 1, [1, *shape]).astype(np.float32)
    batches = {b: np.repeat(x1, b, 0) for b in (1, 2, 4)}
    kinds = {
        "default sequential": lambda: _sequential(default, x1, args.seconds),
        **{f"{cores} single-threaded side by side, batch {b}":
           (lambda b=b: _side_by_side(single, batches[b], args.seconds, cores)) for b in (1, 2, 4)},
        f"{cores} default-threaded side by side (spinning off)": lambda: _side_by_side(threaded, x1, args.seconds,
                                                                                        cores),
        "default batch 4, sequential": lambda: _sequential(default, batches[4], args.seconds),
    }
    for s in (default, single, threaded):
        for _ in range(5):
            s.run(None, {"input": x1})
    rates: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(args.rounds):
        for k, f in kinds.items():
            rates[k].append(f())
            time.sleep(0.1)  # ORT's default threads spin after a run: not into the next kind
    base = statistics.median(rates["default sequential"])
    print(f"{path.name if tmp is None else 'mobilenet_v2_1.0_224'}, {cores} cores, onnxruntime {ort.__version__}, "
          f"load average {os.getloadavg()[0]:.2f}; medians of {args.rounds} slices of {args.seconds} s")
    for k, v in rates.items():
        print(f"  {k:52s} {statistics.median(v):7.1f} img/s  {statistics.median(v) / base:.2f}x")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
