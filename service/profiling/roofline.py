"""The serving device's roofline, measured on it, and each profiled layer's place under it.

:func:`ceilings` runs three microbenchmarks in ONNX Runtime sessions made like a profile's (same provider,
same intra-op thread count), once per ``(provider, threads)`` and cached for the server's life
(``remeasure=True``, i.e. ``POST /v1/profile/roofline``, runs them again):

* compute ceiling (``peak_gmacs_per_s``): the best of dense 3x3 and 1x1 convolutions big enough to keep every
  core busy and small enough to stay in cache (128 -> 128 channels at 28x28, 256 -> 256 at 28x28); the fastest
  of the timed runs (a ceiling is what the device *can* do, so the least disturbed run);
* memory bandwidth (``bandwidth_gb_per_s``): an element-wise ``Add`` of two 4 MiB and of two 16 MiB tensors
  (12 and 48 MiB read and written per run, beyond the L2 caches), fastest run of the better size;
* ORT's tracing cost per node (``tracing_cost_us_per_node``, CPU only): a chain of 64 tiny 1x1 convolutions, run
  with and without ``enable_profiling``; the median ``_kernel_time`` event minus the untraced time per node is
  what the tracer adds inside every node event (used by :mod:`sepconv.service.profiling.engine` to correct
  traced layer times).

Per layer (:func:`layer_bytes`, :func:`roofline_fields`): ``bytes`` = weights (the initializers its ONNX nodes
read, at their stored type) + activations read from outside the layer + activations written and read outside
it (or graph outputs), at the batch profiled; ``arithmetic_intensity`` = MACs / bytes; the layer's roof is
``min(peak, bandwidth x intensity)``; ``bound`` is ``memory`` below the ridge point (peak / bandwidth) and
``compute`` at or above it; ``roof_percent`` = attained GMAC/s / the roof x 100 (``None`` for a layer without
multiply-adds). A layer's attained rate uses its reported (corrected) p50.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sepconv.export.graph import supported_ir_version
from sepconv.service.profiling.sessions import SessionSpec
from sepconv.service.profiling.timing import BoundRun

# the layer kinds a roofline plots (layers with multiply-adds)
ROOFLINE_KINDS = frozenset({"standard", "depthwise", "pointwise", "dense"})

# element-wise Add sizes the bandwidth is measured at (the best of them): 12 MiB and 48 MiB moved per run, the
# working sets of MobileNet layers at batch 1-8 (a DRAM-only figure would put cache-resident layers above 100 %)
BANDWIDTH_ELEMENTS = (1024 * 1024, 4 * 1024 * 1024)

_ELEM_BYTES = {TensorProto.FLOAT: 4, TensorProto.FLOAT16: 2, TensorProto.DOUBLE: 8, TensorProto.INT8: 1,
               TensorProto.UINT8: 1, TensorProto.INT32: 4, TensorProto.INT64: 8, TensorProto.BOOL: 1,
               TensorProto.BFLOAT16: 2}


@dataclass(frozen=True)
class Ceilings:
    """What one device can do, measured on it."""

    provider: str
    threads: int | str
    peak_gmacs_per_s: float
    bandwidth_gb_per_s: float
    tracing_cost_us_per_node: float
    measured_at: float  # unix time
    seconds: float  # how long the microbenchmarks took

    @property
    def ridge(self) -> float:
        """MACs per byte where the memory roof meets the compute roof."""
        return self.peak_gmacs_per_s / self.bandwidth_gb_per_s

    def public(self) -> dict[str, Any]:
        out = asdict(self)
        out["ridge_macs_per_byte"] = round(self.ridge, 3)
        return out


_cache: dict[tuple[str, int | str], Ceilings] = {}
_lock = threading.Lock()


def _model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
           inits: list[onnx.TensorProto]) -> bytes:
    graph = helper.make_graph(nodes, "roofline", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="sepconv-roofline")
    model.ir_version = supported_ir_version()
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _conv_model(cin: int, cout: int, k: int, hw: int) -> tuple[bytes, int]:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((cout, cin, k, k)) * 0.05).astype(np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[k // 2] * 4)
    f = TensorProto.FLOAT
    data = _model([node], [helper.make_tensor_value_info("x", f, [1, cin, hw, hw])],
                  [helper.make_tensor_value_info("y", f, [1, cout, hw, hw])], [w])
    return data, hw * hw * k * k * cin * cout


def _add_model(elements: int) -> tuple[bytes, int]:
    f = TensorProto.FLOAT
    node = helper.make_node("Add", ["a", "b"], ["y"])
    data = _model([node], [helper.make_tensor_value_info("a", f, [elements]),
                           helper.make_tensor_value_info("b", f, [elements])],
                  [helper.make_tensor_value_info("y", f, [elements])], [])
    return data, 3 * elements * 4


def _chain_model(count: int) -> bytes:
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(count):
        inits.append(numpy_helper.from_array((rng.standard_normal((8, 8, 1, 1)) * 0.1).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"y{i}"], name=f"chain_{i}"))
        x = f"y{i}"
    f = TensorProto.FLOAT
    return _model(nodes, [helper.make_tensor_value_info("x", f, [1, 8, 8, 8])],
                  [helper.make_tensor_value_info(x, f, [1, 8, 8, 8])], inits)


def _feeds(session: Any) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {i.name: rng.standard_normal(i.shape).astype(np.float32) for i in session.get_inputs()}


def _fastest_us(spec: SessionSpec, data: bytes, runs: int) -> float:
    session = spec.open(data)
    return min(BoundRun.create(session, _feeds(session)).time(runs, warmup=3))


def _tracing_cost_us(spec: SessionSpec, count: int = 64, runs: int = 60) -> float:
    data = _chain_model(count)
    plain = spec.open(data)
    untraced = BoundRun.create(plain, _feeds(plain))
    per_node = statistics.median(untraced.time(runs, warmup=5)) / count
    with tempfile.TemporaryDirectory(prefix="sepconv-roofline-") as tmp:
        session = spec.open(data, enable_profiling=True, profile_prefix=f"{tmp}/chain")
        feeds = _feeds(session)
        for _ in range(runs + 5):
            session.run(None, feeds)
        with open(session.end_profiling(), encoding="utf-8") as fh:
            events = json.load(fh)
    durations = [float(e["dur"]) for e in events
                 if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")]
    if not durations:
        return 0.0
    return round(max(0.0, statistics.median(durations) - per_node), 3)


def measure(spec: SessionSpec) -> Ceilings:
    """Run the microbenchmarks on ``spec``'s device (seconds); see the module docstring."""
    started = time.perf_counter()
    peak = 0.0
    for cin, cout, k, hw in ((128, 128, 3, 28), (256, 256, 1, 28)):
        data, macs = _conv_model(cin, cout, k, hw)
        peak = max(peak, macs / (_fastest_us(spec, data, 15) * 1e3))
    bandwidth = 0.0
    for elements in BANDWIDTH_ELEMENTS:
        data, moved = _add_model(elements)
        bandwidth = max(bandwidth, moved / (_fastest_us(spec, data, 15) * 1e3))
    cost = _tracing_cost_us(spec) if spec.provider == "cpu" else 0.0
    return Ceilings(spec.provider, spec.settings.intra_op_threads or "auto", round(peak, 3), round(bandwidth, 3),
                    cost, round(time.time(), 3), round(time.perf_counter() - started, 3))


def ceilings(spec: SessionSpec, *, remeasure: bool = False) -> Ceilings:
    """The cached ceilings of ``spec``'s device and thread count, measured on first use (or ``remeasure``)."""
    key = (spec.provider, spec.settings.intra_op_threads or "auto")
    with _lock:
        if remeasure or key not in _cache:
            _cache[key] = measure(spec)
        return _cache[key]


def cached(provider: str, threads: int | str) -> Ceilings | None:
    with _lock:
        return _cache.get((provider, threads))


# --------------------------------------------------------------------------------------------
# per layer
# --------------------------------------------------------------------------------------------
def _tensor_bytes(vi: onnx.ValueInfoProto, batch: int) -> int:
    t = vi.type.tensor_type
    size = _ELEM_BYTES.get(t.elem_type, 4)
    for i, d in enumerate(t.shape.dim):
        if d.HasField("dim_value") and d.dim_value > 0:
            size *= d.dim_value
        elif i == 0:
            size *= batch
        else:
            return 0  # unknown extent: not counted
    return size


def layer_bytes(model: onnx.ModelProto, layers: list[dict[str, Any]], batch: int) -> dict[str, int]:
    """Bytes each layer moves at ``batch`` (weights + activations in from and out to other layers)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - without shapes only the weights count
        inferred = model
    g = inferred.graph
    infos = {v.name: v for v in (*g.input, *g.output, *g.value_info)}
    inits = {t.name: t for t in g.initializer}
    node_of = {n.name: n for n in g.node if n.name}
    consumers: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    for la in layers:
        for nn in la.get("onnx_nodes", []) or []:
            owner[nn] = la["name"]
    for n in g.node:
        for x in n.input:
            consumers.setdefault(x, []).append(owner.get(n.name, n.name))
    outputs = {o.name for o in g.output}
    result: dict[str, int] = {}
    for la in layers:
        nodes = [node_of[nn] for nn in la.get("onnx_nodes", []) or [] if nn in node_of]
        produced = {o for n in nodes for o in n.output}
        total, seen = 0, set()
        for n in nodes:
            for x in n.input:
                if not x or x in produced or x in seen:
                    continue
                seen.add(x)
                if x in inits:
                    t = inits[x]
                    total += int(np.prod(t.dims, dtype=np.int64)) * _ELEM_BYTES.get(t.data_type, 4)
                elif x in infos:
                    total += _tensor_bytes(infos[x], batch)
        for o in produced:
            leaves = o in outputs or any(c != la["name"] for c in consumers.get(o, []))
            if leaves and o in infos:
                total += _tensor_bytes(infos[o], batch)
        result[la["name"]] = int(total)
    return result


def roofline_fields(row: dict[str, Any], nbytes: int, ceil: Ceilings, batch: int) -> dict[str, Any]:
    """The roofline columns of one profile row (its ``macs`` per image, its reported ``time_us``)."""
    macs = int(row.get("macs", 0)) * batch
    intensity = macs / nbytes if nbytes else 0.0
    roof = min(ceil.peak_gmacs_per_s, ceil.bandwidth_gb_per_s * intensity)
    p50 = float(row["time_us"]["p50"])
    attained = macs / (p50 * 1e3) if p50 > 0 and macs else None
    return {
        "bytes": nbytes,
        "arithmetic_intensity": round(intensity, 4),
        "bound": "compute" if intensity >= ceil.ridge else "memory",
        "roof_gmacs_per_s": round(roof, 3),
        "roof_percent": round(100.0 * attained / roof, 2) if attained is not None and roof > 0 else None,
    }
