"""The profiling engine: per-layer times of one model, measured away from the serving session.

Every profile makes its own ONNX Runtime sessions (profiling is a per-session switch in ORT, so
the serving session is never traced and its requests never land in a profile), and one profile at a
time runs per server (:class:`ProfileGate`; a second one gets 429 with ``Retry-After``).

Methods (the response's ``method`` says which one produced the numbers):

* ``trace`` (CPU default): a session with ``enable_profiling``; ``warmup + runs`` runs; ORT's
  Chrome trace gives each runtime node's kernel time per run; nodes map back to exporter layers
  (:mod:`sepconv.service.profile_trace`); per layer p50/p90 over the runs (warm-up runs dropped).
* ``isolated`` (CUDA default, where trace times are launch times): each layer as its own graph, timed
  with I/O binding and device synchronisation (:mod:`sepconv.service.profile_isolated`).

End-to-end latency always comes from a separate session without profiling (inputs bound on the
device), run after the per-layer measurement.
``gap_percent`` = (e2e p50 - summed layer p50s) / e2e p50: positive = time outside the kernels
(executor, allocation) or, on a loaded machine, preemptions (per-layer medians drop them, the e2e median
does not; ``kernel_sum_ms`` and ``traced_run_ms`` show them); negative = tracing overhead.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import onnx
import onnxruntime as ort
from pydantic import BaseModel, ConfigDict, Field

from sepconv.service import profile_trace as pt
from sepconv.service.errors import ApiError
from sepconv.service.profile_isolated import layer_graphs, time_layers
from sepconv.service.profile_layers import KINDS, layer_table
from sepconv.service.profile_timing import CUDA, BoundRun, random_feeds
from sepconv.service.runtime import ProviderError, available_providers, make_session, session_options
from sepconv.service.settings import Settings

PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": [CUDA, "CPUExecutionProvider"]}
METHODS = ("auto", "trace", "isolated")

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


class ProfileRequest(BaseModel):
    """The body of ``POST /v1/models/{m}/profile`` (strict: ``"runs": true`` or ``"fused": "yes"`` are 422s)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    batch_size: int = Field(1, description="images per run (at most the model's max batch and profile_max_batch)")
    runs: int = Field(20, description="timed runs (1..profile_max_runs)")
    warmup: int = Field(5, description="untimed runs first (0..profile_max_warmup)")
    provider: str = Field("cpu", description="cpu | cuda")
    fused: bool = Field(True, description="true: ORT_ENABLE_ALL; false: ORT_DISABLE_ALL (one node per op)")
    method: Literal["auto", "trace", "isolated"] = Field(
        "auto", description="auto = trace on CPU, isolated (device-synchronised per-layer runs) on CUDA")
    threads: int | None = Field(None, description="intra-op threads of the profiling sessions (default: the "
                                                  "server's)")


# --------------------------------------------------------------------------------------------
# one profile at a time
# --------------------------------------------------------------------------------------------
class ProfileGate:
    """A non-blocking lock: a second profile while one runs gets 429 with a ``Retry-After`` estimate."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started = 0.0
        self._last_duration = 5.0
        self.running: str | None = None

    def retry_after(self) -> int:
        elapsed = time.monotonic() - self._started
        return max(1, int(round(self._last_duration - elapsed + 0.5)))

    @contextmanager
    def hold(self, what: str) -> Iterator[None]:
        if not self._lock.acquire(blocking=False):
            seconds = self.retry_after()
            raise ApiError(429, f"a profile is already running on this server ({self.running}); "
                                f"retry in about {seconds} s", headers={"Retry-After": str(seconds)})
        self._started = time.monotonic()
        self.running = what
        try:
            yield
        finally:
            self._last_duration = max(1.0, time.monotonic() - self._started)
            self.running = None
            self._lock.release()


# --------------------------------------------------------------------------------------------
# kept traces
# --------------------------------------------------------------------------------------------
_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")


class TraceStore:
    """Chrome-trace files in ``directory`` named ``<32 hex>.json``; only the newest ``keep`` are kept."""

    def __init__(self, directory: Path, keep: int) -> None:
        self.directory = Path(directory)
        self.keep = max(1, int(keep))
        self._lock = threading.Lock()

    def save(self, events: list[dict[str, Any]], metadata: dict[str, Any]) -> str:
        trace_id = uuid.uuid4().hex
        self.directory.mkdir(parents=True, exist_ok=True)
        doc = {"traceEvents": events, "displayTimeUnit": "ms", "otherData": metadata}
        tmp = self.directory / f".{trace_id}.tmp"
        tmp.write_text(json.dumps(doc, separators=(",", ":")), encoding="utf-8")
        tmp.replace(self.directory / f"{trace_id}.json")
        self._prune()
        return trace_id

    def _prune(self) -> None:
        with self._lock:
            files = sorted((p for p in self.directory.glob("*.json") if _TRACE_ID.match(p.stem)),
                           key=lambda p: p.stat().st_mtime_ns, reverse=True)
            for old in files[self.keep:]:
                old.unlink(missing_ok=True)

    def path(self, trace_id: str) -> Path:
        """The file of ``trace_id`` (``<32 hex>`` with or without ``.json``); 404 if unknown."""
        stem = trace_id[:-5] if trace_id.endswith(".json") else trace_id
        if not _TRACE_ID.match(stem):
            raise ApiError(404, f"no trace {trace_id!r} (trace ids are 32 hex digits)")
        path = self.directory / f"{stem}.json"
        if not path.is_file():
            raise ApiError(404, f"no trace {stem!r}: it never existed or was replaced by newer ones "
                                f"(the server keeps the newest {self.keep})")
        return path


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------
def check_runs(runs: int, warmup: int, settings: Settings) -> None:
    if runs < 1 or runs > settings.profile_max_runs:
        raise ApiError(400, f"runs must be between 1 and {settings.profile_max_runs}, got {runs}")
    if warmup < 0 or warmup > settings.profile_max_warmup:
        raise ApiError(400, f"warmup must be between 0 and {settings.profile_max_warmup}, got {warmup}")


def check_provider(provider: str, threads: int | None) -> str:
    """The provider key (``cpu`` / ``cuda``), 400 when unknown or when this server has no CUDA."""
    check_threads(threads)
    key = provider.strip().lower()
    if key not in PROVIDERS:
        raise ApiError(400, f"unknown provider {provider!r}; use 'cpu' or 'cuda'")
    if key == "cuda" and CUDA not in available_providers():
        raise ApiError(400, "provider 'cuda' requested but this server has no CUDA execution provider "
                            f"(available: {', '.join(available_providers())}); use provider 'cpu'")
    return key


def check_compute(macs_per_image: int | None, batch: int, runs: int, warmup: int, settings: Settings) -> None:
    """Refuse (413) a profile whose runs would cost more than ``profile_max_gmacs``: the route is open to
    any client, and 500 runs of batch 64 of a 224-px MobileNet would hold the server's cores for minutes.
    Counted: warm-up and timed runs, twice (traced runs, then the untraced end-to-end runs)."""
    if not macs_per_image:
        return
    gmacs = macs_per_image * batch * (runs + warmup) * 2 / 1e9
    if gmacs > settings.profile_max_gmacs:
        raise ApiError(413, f"this profile would cost {gmacs:,.0f} G multiply-adds ({macs_per_image / 1e6:,.1f} M "
                            f"per image x batch {batch} x {runs + warmup} runs x 2 passes); this server allows "
                            f"{settings.profile_max_gmacs:,.0f} G: ask for fewer runs or a smaller batch")


def check_request(req: ProfileRequest, settings: Settings, model_max_batch: int | None,
                  macs_per_image: int | None = None) -> str:
    """Validate bounds (400 with a message, 413 over the compute budget); returns the method to use."""
    check_runs(req.runs, req.warmup, settings)
    limit = settings.profile_max_batch
    why = "the server's profile_max_batch"
    if model_max_batch and model_max_batch > 0 and model_max_batch < limit:
        limit, why = model_max_batch, "the model's max_batch_size"
    if req.batch_size < 1 or req.batch_size > limit:
        raise ApiError(400, f"batch_size must be between 1 and {limit} ({why}), got {req.batch_size}")
    check_compute(macs_per_image, req.batch_size, req.runs, req.warmup, settings)
    provider = check_provider(req.provider, req.threads)
    method = req.method.strip().lower()
    if method not in METHODS:
        raise ApiError(400, f"unknown method {req.method!r}; use one of {', '.join(METHODS)}")
    if method == "auto":
        method = "isolated" if provider == "cuda" else "trace"
    if method == "trace" and provider == "cuda":
        raise ApiError(400, "method 'trace' on CUDA would report kernel launch times, not GPU execution times; "
                            "use method 'isolated' (the default for cuda)")
    return method


def check_threads(threads: int | None) -> None:
    cores = os.cpu_count() or 1
    if threads is not None and not 1 <= threads <= cores:
        raise ApiError(400, f"threads must be between 1 and {cores} (this server's cores), got {threads}")


def with_threads(settings: Settings, threads: int | None) -> Settings:
    """``settings`` with the profiling sessions' intra-op thread count (``None``: unchanged)."""
    return settings if threads is None else settings.model_copy(update={"intra_op_threads": int(threads)})


def _session(model: str | bytes, settings: Settings, provider: str, optimization: str,
             **kwargs: Any) -> ort.InferenceSession:
    try:
        session = make_session(model, settings, providers=list(PROVIDERS[provider]), optimization=optimization,
                               **kwargs)
    except ProviderError as exc:
        raise ApiError(400, f"provider {provider!r} cannot be used: {exc.message}") from exc
    if provider == "cuda" and session.get_providers()[0] != CUDA:
        raise ApiError(400, "provider 'cuda' requested but CUDA did not start on this server "
                            f"(the session runs on {', '.join(session.get_providers())}); use provider 'cpu'")
    return session


def _optimized_graph(path: str, settings: Settings, provider: str, optimization: str,
                     workdir: Path) -> onnx.ModelProto | None:
    """The graph ORT really runs (node names after fusion), written by ORT itself."""
    opts = session_options(settings, optimization=optimization)
    target = workdir / "optimized.onnx"
    opts.optimized_model_filepath = str(target)
    try:
        ort.InferenceSession(path, sess_options=opts, providers=list(PROVIDERS[provider]))
        return onnx.load(str(target), load_external_data=False)
    except Exception:  # noqa: BLE001 - mapping then falls back to node names
        return None


def _e2e_run(path: str, settings: Settings, provider: str, optimization: str, batch: int,
             shapes: dict[str, list[int]]) -> BoundRun:
    """The untraced session end-to-end latency is measured on (inputs bound on the device)."""
    session = _session(path, settings, provider, optimization)
    return BoundRun.create(session, random_feeds(session, batch, shapes=shapes))


def _input_shapes(session: ort.InferenceSession, batch: int) -> dict[str, list[int]]:
    shapes = {}
    for inp in session.get_inputs():
        dims = list(inp.shape)
        out = []
        for i, d in enumerate(dims):
            if isinstance(d, int) and d > 0:
                if i == 0 and d != batch:
                    raise ApiError(400, f"input {inp.name!r} has a fixed batch of {d}; use batch_size {d}")
                out.append(d)
            elif i == 0:
                out.append(batch)
            else:
                raise ApiError(400, f"input {inp.name!r} has a dynamic non-batch dimension {d!r}; "
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
        t = pt.summarize(samples[name])
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


def profile_model(path: str | Path, model_name: str, req: ProfileRequest, settings: Settings,
                  store: TraceStore, model_max_batch: int | None = None) -> dict[str, Any]:
    """Profile the model file at ``path``; the response body of ``POST /v1/models/{m}/profile``
    (``trace_url`` is left to the caller: it gets ``trace_id``)."""
    method = check_request(req, settings, model_max_batch)
    settings = with_threads(settings, req.threads)
    provider = req.provider.strip().lower()
    optimization = "all" if req.fused else "disable"
    path = str(path)
    original = onnx.load(path)
    table = layer_table(original)
    layers = table["layers"]
    names = [la["name"] for la in layers]
    extra: dict[str, dict[str, Any]] = {}
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="sepconv-profile-") as tmp:
        workdir = Path(tmp)
        if method == "trace":
            runtime_graph = _optimized_graph(path, settings, provider, optimization, workdir)
            session = _session(path, settings, provider, optimization, enable_profiling=True,
                               profile_prefix=str(workdir / "trace"))
            shapes = _input_shapes(session, req.batch_size)
            feeds = random_feeds(session, req.batch_size, shapes=shapes)
            execution_provider = session.get_providers()[0]
            for _ in range(req.warmup + req.runs):
                session.run(None, feeds)
            events = pt.load_trace(session.end_profiling())
            del session
            # Not alternated with the traced runs: two idle ORT thread pools spinning next to each other
            # slow both down on a small machine. The untraced session runs right after, on its own.
            e2e = _e2e_run(path, settings, provider, optimization, req.batch_size, shapes)
            e2e_us = e2e.time(req.runs, req.warmup)
            del e2e
            runs = pt.runs_of(events)[req.warmup:]
            seen = sorted({n for r in runs for n in r})
            mapping = pt.map_nodes(original, layers, runtime_graph, extra_nodes=seen)
            pt.attribute_by_order(mapping, pt.execution_order(events))
            samples, unattributed = pt.layer_samples(runs, mapping, names)
            for node, layer in mapping.node_layer.items():
                if node in seen:
                    extra.setdefault(layer, {}).setdefault("nodes", []).append(node)
            for layer, into in mapping.fused_into.items():
                extra.setdefault(layer, {})["fused_into"] = into
            trace_events = pt.annotate(events, mapping, req.warmup)
            result["unattributed_us"] = pt.summarize(unattributed)
            # Per run, all kernel time summed: unlike the sum of per-layer medians (layer_sum_ms), this keeps
            # the preemptions a loaded machine scatters over random layers; next to the traced runs' own wall
            # time it shows how much of a run the kernels cover.
            result["kernel_sum_ms"] = {k: round(v / 1000.0, 4)
                                       for k, v in pt.summarize([sum(r.values()) for r in runs]).items()}
            result["traced_run_ms"] = {k: round(v / 1000.0, 4)
                                       for k, v in pt.summarize(pt.run_walls(events)[req.warmup:]).items()}
            result["unattributed_nodes"] = sorted(n for n in mapping.unattributed if n in seen)
        else:
            graphs = layer_graphs(original, layers)
            first_session = _session(path, settings, provider, optimization)
            shapes = _input_shapes(first_session, req.batch_size)
            execution_provider = first_session.get_providers()[0]
            del first_session
            samples, overhead = time_layers(
                graphs, lambda model: _session(model, settings, provider, optimization),
                req.batch_size, req.runs, req.warmup)
            for lg in graphs:
                extra.setdefault(lg.name, {})["nodes"] = lg.nodes
            result["overhead_us"] = pt.summarize(overhead)
            trace_events = _synthetic_trace(layers, samples)
            e2e = _e2e_run(path, settings, provider, optimization, req.batch_size, shapes)
            e2e_us = e2e.time(req.runs, req.warmup)
            del e2e

    rows, by_kind = build_report(layers, samples, req.batch_size, extra)
    e2e_ms = {k: round(v / 1000.0, 4) for k, v in pt.summarize(e2e_us).items()}
    layer_sum_ms = sum(statistics.median(samples[n]) for n in names) / 1000.0
    try:
        trace_id: str | None = store.save(trace_events, {"model": model_name, "provider": provider,
                                                         "method": method, "fused": req.fused,
                                                         "batch_size": req.batch_size})
    except OSError as exc:  # the profile itself is still good; say why there is no trace
        trace_id = None
        result["trace_error"] = f"the trace could not be kept in {store.directory}: {exc.strerror or exc}"
    return {
        "model": model_name,
        "provider": provider,
        "execution_provider": execution_provider,
        "batch_size": req.batch_size,
        "runs": req.runs,
        "warmup": req.warmup,
        "fused": req.fused,
        "graph_optimization": optimization,
        "threads": settings.intra_op_threads or "auto",
        "method": method,
        "method_detail": METHOD_TEXT[method],
        "e2e_method": E2E_TEXT,
        "layer_source": table.get("source", "exporter"),
        "e2e_ms": e2e_ms,
        "layer_sum_ms": round(layer_sum_ms, 4),
        "gap_percent": round(100.0 * (e2e_ms["p50"] - layer_sum_ms) / e2e_ms["p50"], 2) if e2e_ms["p50"] else None,
        "layers": rows,
        "by_kind": by_kind,
        "total_macs": sum(r["macs"] for r in rows),
        "total_params": sum(r["params"] for r in rows),
        **result,
        "trace_id": trace_id,
    }


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
