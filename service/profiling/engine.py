"""The profiling engine: per-layer times of one model, measured away from the serving session.

:func:`profile_model` runs a validated :class:`~sepconv.service.profiling.request.ProfilePlan` on a model file.
Every profile makes its own ONNX Runtime sessions (:mod:`sepconv.service.profiling.sessions`: profiling is a
per-session switch in ORT, so the serving session is never traced and its requests never land in a profile), and
one profile at a time runs per server (:class:`~sepconv.service.profiling.gate.ProfileGate`, held by the route;
a second one gets 429 with ``Retry-After``).

Methods (the response's ``method`` says which one produced the numbers):

* ``trace`` (CPU default): a session with ``enable_profiling``; ``warmup + runs`` runs; ORT's
  Chrome trace gives each runtime node's kernel time per run; nodes map back to exporter layers
  (:mod:`sepconv.service.profiling.trace`); per layer p50/p90 over the runs (warm-up runs dropped).
* ``isolated`` (CUDA default, where trace times are launch times): each layer as its own graph, timed
  with I/O binding and device synchronisation (:mod:`sepconv.service.profiling.isolated`).

End-to-end latency always comes from a separate session without profiling (inputs bound on the
device), run after the per-layer measurement.
Layer times that add up (``method: trace``; the response's ``time_correction`` says what was done, with the
figures): ORT's tracer costs a few microseconds inside every node event (on a quiet 2-core machine
mobilenet_v2_1.0_224's raw layer p50s summed to +25-30 % of the untraced e2e p50), and on a loaded machine the
per-layer medians drop the preemptions the e2e median keeps. So the trace is used for what it measures well —
how a run's time divides among layers — and the untraced session for how long a run takes:

1. the tracing cost per node, measured on this device (:mod:`sepconv.service.profiling.roofline`, cached with the
   ceilings), is taken off every node event of every traced run, at most half of the event (an event shorter than
   twice the estimated cost keeps half its time: the estimate is a median, and no layer is ever timed at zero);
   small layers are not inflated;
2. each layer's samples are scaled by one factor, ``scale`` = e2e p50 / (sum of the corrected layer p50s), so
   the rows' p50s sum to the e2e p50 and each row keeps its share and its p50/p90 spread.

``time_correction`` reports the raw traced sum, the sum after step 1 and the scale; ``gap_percent`` =
(e2e p50 - summed layer p50s) / e2e p50 is then ~0 (rounding). ``method: isolated`` (CUDA) is not rescaled: its
layers run one graph each, minus an empty graph's launch overhead, and its ``gap_percent`` shows the difference.

Roofline (every profile): the device's ceilings (:func:`~sepconv.service.profiling.roofline.ceilings`) at the top
level, and per row ``bytes``, ``arithmetic_intensity``, ``bound``, ``roof_percent``.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort

from sepconv.export.graph import KINDS
from sepconv.service.errors import InvalidInput, ServiceError
from sepconv.service.profiling import roofline as rl
from sepconv.service.profiling import trace as pt
from sepconv.service.profiling.gate import TraceStore
from sepconv.service.profiling.isolated import layer_graphs, time_layers
from sepconv.service.profiling.layers import layer_table
from sepconv.service.profiling.request import ProfilePlan
from sepconv.service.profiling.sessions import SessionSpec, random_feeds
from sepconv.service.profiling.timing import BoundRun, summarize

METHOD_TEXT = {
    "trace": ("ONNX Runtime profiling trace of a dedicated session: each runtime node's kernel time per run, "
              "mapped to exporter layers (fused nodes charged to the layer owning their weights, layout "
              "reorders to the adjacent layer); p50/p90 over the timed runs, warm-up runs dropped"),
    "isolated": ("each layer run as its own graph with inputs/outputs bound on the device (I/O binding), every run "
                 "synchronised, minus the launch+sync overhead of an empty graph; p50/p90 over the timed runs "
                 "(no fusion across layers; on CPU each layer graph also pays its own NCHWc layout conversions)"),
}
E2E_TEXT = ("a separate session without profiling, inputs bound on the device, synchronised runs after warm-up, "
            "run after the per-layer measurement")


# --------------------------------------------------------------------------------------------
# sessions of one profile
# --------------------------------------------------------------------------------------------
def _traced_session(path: str | bytes, spec: SessionSpec, workdir: Path) -> tuple[Any, onnx.ModelProto | None]:
    """The profiling session, and the graph ORT really runs (node names after fusion), which ORT writes while it
    makes that session. Where it cannot write it (a provider's compiled nodes), the session is made without, and
    the mapping falls back to node names."""
    target = workdir / "optimized.onnx"
    try:
        session = spec.open(path, enable_profiling=True, profile_prefix=str(workdir / "trace"),
                            optimized_model_path=str(target))
        return session, onnx.load(str(target), load_external_data=False)
    except ServiceError:
        raise  # the provider cannot be used: the profile's own error
    except Exception:  # noqa: BLE001 - see the docstring
        return spec.open(path, enable_profiling=True, profile_prefix=str(workdir / "trace")), None


def _e2e_run(path: str | bytes, spec: SessionSpec, batch: int, shapes: dict[str, list[int]]) -> BoundRun:
    """The untraced session end-to-end latency is measured on (inputs bound on the device)."""
    session = spec.open(path)
    return BoundRun.create(session, random_feeds(session, batch, shapes=shapes))


def _input_shapes(session: ort.InferenceSession, batch: int) -> dict[str, list[int]]:
    shapes = {}
    for inp in session.get_inputs():
        dims = list(inp.shape)
        out = []
        for i, d in enumerate(dims):
            if isinstance(d, int) and d > 0:
                if i == 0 and d != batch:
                    raise InvalidInput(f"input {inp.name!r} has a fixed batch of {d}; use batch_size {d}")
                out.append(d)
            elif i == 0:
                out.append(batch)
            else:
                raise InvalidInput(f"input {inp.name!r} has a dynamic non-batch dimension {d!r}; "
                                   "only the batch axis may be dynamic for a profile")
        shapes[inp.name] = out
    return shapes


# --------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------
def build_report(layers: list[dict[str, Any]], samples: dict[str, list[float]], batch: int,
                 extra: dict[str, dict[str, Any]] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows (network order) and ``by_kind`` from per-layer time samples (us)."""
    p50 = {la["name"]: statistics.median(samples[la["name"]]) if samples[la["name"]] else 0.0 for la in layers}
    total_time = sum(p50.values()) or 1.0
    total_macs = sum(int(la.get("macs", 0)) for la in layers) or 1
    total_params = sum(int(la.get("params", 0)) for la in layers) or 1
    rows = []
    for la in layers:
        name = la["name"]
        t = summarize(samples[name])
        macs = int(la.get("macs", 0))
        row = {
            "name": name,
            "op_type": la.get("op_type", ""),
            "kind": la.get("kind", "other"),
            "output_shape": la.get("output_shape", []),
            "params": int(la.get("params", 0)),
            "macs": macs,
            "time_us": t,
            "percent": round(100.0 * p50[name] / total_time, 3),
            "gmacs_per_s": round(macs * batch / (p50[name] * 1e3), 3) if p50[name] > 0 and macs else None,
        }
        row.update((extra or {}).get(name, {}))
        rows.append(row)
    by_kind: dict[str, Any] = {}
    for kind in KINDS:
        members = [r for r in rows if r["kind"] == kind]
        if not members:
            continue
        by_kind[kind] = {
            "count": len(members),
            "time_percent": round(100.0 * sum(p50[r["name"]] for r in members) / total_time, 3),
            "macs_percent": round(100.0 * sum(r["macs"] for r in members) / total_macs, 3),
            "params_percent": round(100.0 * sum(r["params"] for r in members) / total_params, 3),
        }
    return rows, by_kind


@dataclass
class _Measured:
    """What one per-layer method measured (the report is built from it the same way for both)."""

    samples: dict[str, list[float]]  # layer -> time per timed run (us)
    e2e_us: list[float]
    execution_provider: str
    trace_events: list[dict[str, Any]]
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-row additions (nodes, fused_into)
    result: dict[str, Any] = field(default_factory=dict)  # top-level additions


Progress = Callable[[int, int, str], None]  # (done, total, what is running now)


def _no_progress(done: int, total: int, stage: str) -> None:
    return None


def correct_samples(samples: dict[str, list[float]], e2e_p50_us: float) -> tuple[dict[str, list[float]], float]:
    """Step 2 of the correction: every layer's samples times ``e2e p50 / sum of layer p50s``; (samples, scale)."""
    total = sum(statistics.median(v) for v in samples.values() if v)
    if total <= 0 or e2e_p50_us <= 0:
        return samples, 1.0
    scale = e2e_p50_us / total
    return {name: [t * scale for t in v] for name, v in samples.items()}, scale


def profile_model(path: str | Path | bytes, model_name: str, plan: ProfilePlan, store: TraceStore,
                  progress: Progress = _no_progress) -> dict[str, Any]:
    """Profile the model (its serialized bytes — the server passes those of the loaded version —, or a file
    path) as ``plan`` says; the response body of ``POST /v1/models/{m}/profile`` (``trace_url`` is left to the
    caller: it gets ``trace_id``). ``progress(done, total, stage)`` is called as it goes (4 steps)."""
    progress(0, 4, "measuring the device's ceilings (once per provider)")
    ceil = rl.ceilings(plan.session)
    if isinstance(path, bytes):
        original = onnx.load_model_from_string(path)
    else:
        path = str(path)
        original = onnx.load(path)
    table = layer_table(original)
    layers = table["layers"]
    names = [la["name"] for la in layers]
    progress(1, 4, f"{plan.method} runs: {plan.warmup} warm-up + {plan.runs} timed, then the untraced e2e runs")
    with tempfile.TemporaryDirectory(prefix="sepconv-profile-") as tmp:
        if plan.method == "trace":
            measured = _measure_traced(path, original, layers, plan, Path(tmp), ceil.tracing_cost_us_per_node)
        else:
            measured = _measure_isolated(path, original, layers, plan)
    progress(3, 4, "building the report")
    e2e_ms = {k: round(v / 1000.0, 4) for k, v in summarize(measured.e2e_us).items()}
    if plan.method == "trace":
        raw_sum = measured.result.pop("_raw_layer_sum_us")
        cost_removed = sum(statistics.median(measured.samples[n]) for n in names)
        measured.samples, scale = correct_samples(measured.samples, statistics.median(measured.e2e_us))
        measured.result["time_correction"] = {
            "method": "tracing cost per node removed, then scaled to the untraced e2e p50",
            "detail": ("ORT's tracing cost per node, measured on this device by a 64-node chain run traced and "
                       "untraced, is taken off every node event; then every layer's samples are multiplied by "
                       "scale = e2e p50 / (sum of layer p50s): the trace gives each layer's share of a run, the "
                       "untraced session the run's length"),
            "tracing_cost_us_per_node": ceil.tracing_cost_us_per_node,
            "traced_layer_sum_ms": round(raw_sum / 1000.0, 4),
            "cost_removed_layer_sum_ms": round(cost_removed / 1000.0, 4),
            "scale": round(scale, 4),
        }
    rows, by_kind = build_report(layers, measured.samples, plan.batch_size, measured.extra)
    nbytes = rl.layer_bytes(original, layers, plan.batch_size)
    for row in rows:
        row.update(rl.roofline_fields(row, nbytes.get(row["name"], 0), ceil, plan.batch_size))
    layer_sum_ms = sum(statistics.median(measured.samples[n]) for n in names) / 1000.0
    result = measured.result
    try:
        trace_id: str | None = store.save(measured.trace_events, {
            "model": model_name, "provider": plan.provider, "method": plan.method, "fused": plan.fused,
            "batch_size": plan.batch_size})
    except OSError as exc:  # the profile itself is still good; say why there is no trace
        trace_id = None
        result["trace_error"] = f"the trace could not be kept in {store.directory}: {exc.strerror or exc}"
    return {
        "model": model_name,
        "provider": plan.provider,
        "execution_provider": measured.execution_provider,
        "batch_size": plan.batch_size,
        "runs": plan.runs,
        "warmup": plan.warmup,
        "fused": plan.fused,
        "graph_optimization": plan.session.optimization,
        "threads": plan.session.settings.intra_op_threads or "auto",
        "method": plan.method,
        "method_detail": METHOD_TEXT[plan.method],
        "e2e_method": E2E_TEXT,
        "layer_source": table.get("source", "exporter"),
        "e2e_ms": e2e_ms,
        "layer_sum_ms": round(layer_sum_ms, 4),
        "gap_percent": round(100.0 * (e2e_ms["p50"] - layer_sum_ms) / e2e_ms["p50"], 2) if e2e_ms["p50"] else None,
        "layers": rows,
        "by_kind": by_kind,
        "total_macs": sum(r["macs"] for r in rows),
        "total_params": sum(r["params"] for r in rows),
        "roofline": {"peak_gmacs_per_s": ceil.peak_gmacs_per_s, "bandwidth_gb_per_s": ceil.bandwidth_gb_per_s,
                     "ridge_macs_per_byte": round(ceil.ridge, 3), "measured_at": ceil.measured_at,
                     "method": "microbenchmarks on this device: dense 3x3/1x1 convs (compute), element-wise Add "
                               "of 4 and 16 MiB tensors (bandwidth); fastest runs; POST /v1/profile/roofline "
                               "measures again"},
        **result,
        "trace_id": trace_id,
    }


def _measure_traced(path: str | bytes, original: onnx.ModelProto, layers: list[dict[str, Any]], plan: ProfilePlan,
                    workdir: Path, cost_per_node: float) -> _Measured:
    """``method: trace``: ORT's Chrome trace of a profiling session, its nodes mapped to ``layers``."""
    spec = plan.session
    session, runtime_graph = _traced_session(path, spec, workdir)
    shapes = _input_shapes(session, plan.batch_size)
    feeds = random_feeds(session, plan.batch_size, shapes=shapes)
    execution_provider = session.get_providers()[0]
    for _ in range(plan.warmup + plan.runs):
        session.run(None, feeds)
    events = pt.load_trace(session.end_profiling())
    del session
    # Not alternated with the traced runs: two idle ORT thread pools spinning next to each other
    # slow both down on a small machine. The untraced session runs right after, on its own.
    e2e = _e2e_run(path, spec, plan.batch_size, shapes)
    e2e_us = e2e.time(plan.runs, plan.warmup)
    del e2e
    runs = pt.runs_of(events)[plan.warmup:]
    seen = sorted({n for r in runs for n in r})
    mapping = pt.map_nodes(original, layers, runtime_graph, extra_nodes=seen)
    pt.attribute_by_order(mapping, pt.execution_order(events))
    raw, _ = pt.layer_samples(runs, mapping, [la["name"] for la in layers])
    corrected = [{node: dur - min(cost_per_node, 0.5 * dur) for node, dur in run.items()} for run in runs]
    samples, unattributed = pt.layer_samples(corrected, mapping, [la["name"] for la in layers])
    measured = _Measured(samples, e2e_us, execution_provider, pt.annotate(events, mapping, plan.warmup))
    for node, layer in mapping.node_layer.items():
        if node in seen:
            measured.extra.setdefault(layer, {}).setdefault("nodes", []).append(node)
    for layer, into in mapping.fused_into.items():
        measured.extra.setdefault(layer, {})["fused_into"] = into
    measured.result["unattributed_us"] = summarize(unattributed)
    measured.result["_raw_layer_sum_us"] = sum(statistics.median(v) for v in raw.values() if v)
    # Per run, all kernel time summed: unlike the sum of per-layer medians (layer_sum_ms), this keeps
    # the preemptions a loaded machine scatters over random layers; next to the traced runs' own wall
    # time it shows how much of a run the kernels cover.
    measured.result["kernel_sum_ms"] = {k: round(v / 1000.0, 4)
                                        for k, v in summarize([sum(r.values()) for r in runs]).items()}
    measured.result["traced_run_ms"] = {k: round(v / 1000.0, 4)
                                        for k, v in summarize(pt.run_walls(events)[plan.warmup:]).items()}
    measured.result["unattributed_nodes"] = sorted(n for n in mapping.unattributed if n in seen)
    return measured


def _measure_isolated(path: str | bytes, original: onnx.ModelProto, layers: list[dict[str, Any]],
                      plan: ProfilePlan) -> _Measured:
    """``method: isolated``: each layer as its own graph, device-synchronised runs."""
    spec = plan.session
    graphs = layer_graphs(original, layers)
    first_session = spec.open(path)
    shapes = _input_shapes(first_session, plan.batch_size)
    execution_provider = first_session.get_providers()[0]
    del first_session
    samples, overhead = time_layers(graphs, spec, plan.batch_size, plan.runs, plan.warmup)
    measured = _Measured(samples, [], execution_provider, _synthetic_trace(layers, samples))
    for lg in graphs:
        measured.extra.setdefault(lg.name, {})["nodes"] = lg.nodes
    measured.result["overhead_us"] = summarize(overhead)
    e2e = _e2e_run(path, spec, plan.batch_size, shapes)
    measured.e2e_us = e2e.time(plan.runs, plan.warmup)
    del e2e
    return measured


def _synthetic_trace(layers: list[dict[str, Any]], samples: dict[str, list[float]]) -> list[dict[str, Any]]:
    """A Chrome trace of isolated-layer timings: one track per run, layers laid end to end."""
    events: list[dict[str, Any]] = []
    ts = 0.0
    runs = max((len(v) for v in samples.values()), default=0)
    for i in range(runs):
        start = ts
        for la in layers:
            dur = samples[la["name"]][i] if i < len(samples[la["name"]]) else 0.0
            events.append({"cat": "Layer", "ph": "X", "pid": 1, "tid": 1, "ts": round(ts, 3), "dur": round(dur, 3),
                           "name": la["name"], "args": {"layer": la["name"], "kind": la.get("kind", "other"),
                                                        "macs": la.get("macs", 0)}})
            ts += dur
        events.append({"cat": "Session", "ph": "X", "pid": 1, "tid": 0, "ts": round(start, 3),
                       "dur": round(ts - start, 3), "name": f"run {i} (isolated layers, summed)", "args": {}})
        ts += 10.0
    return events
