"""How long exporting mobilenet_v2_1.0_224 takes (goal: well under a second). A benchmark, not a test.

    .venv/bin/python bench/export_time.py [--runs N] [--arch ARCH]

Prints the median and best of N full exports (build the graph with seeded Keras-initialiser weights,
onnx.checker(full_check) + strict shape inference, write model.onnx + config.pbtxt atomically), the
phases, and the ratio to a baseline measured in the same run: writing the same model bytes to disk.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sepconv.export.graph import check_and_infer  # noqa: E402
from sepconv.export.networks import NetworkConfig, _build_graph  # noqa: E402
from sepconv.export.repository.catalog import ExportRequest, export  # noqa: E402
from sepconv.export.repository.writer import atomic_write  # noqa: E402
from sepconv.export.weights import RandomWeights  # noqa: E402


def timed(fn, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--arch", default="mobilenet_v2")
    args = ap.parse_args()
    config = NetworkConfig(args.arch).validate()
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        total = timed(lambda: export(ExportRequest(args.arch), repo, force=True), args.runs)
        build = timed(lambda: _build_graph(config, RandomWeights(0)), args.runs)
        model = _build_graph(config, RandomWeights(0)).to_model(check=False)
        check = timed(lambda: check_and_infer(model), args.runs)
        data = model.SerializeToString()
        write = timed(lambda: atomic_write(repo / "baseline.onnx", data), args.runs)
    med = statistics.median
    print(f"export {config.default_name}: {len(data) / 1e6:.1f} MB, {args.runs} runs")
    print(f"  full export     median {med(total) * 1e3:7.1f} ms   best {min(total) * 1e3:7.1f} ms")
    print(f"  graph + weights median {med(build) * 1e3:7.1f} ms")
    print(f"  check + infer   median {med(check) * 1e3:7.1f} ms")
    print(f"  baseline: write median {med(write) * 1e3:7.1f} ms (the same bytes, atomically)")
    print(f"  export / baseline = {med(total) / med(write):.1f}x;  goal < 1 s: "
          f"{'met' if med(total) < 1.0 else 'NOT met'}")


if __name__ == "__main__":
    main()
