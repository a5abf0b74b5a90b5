"""``POST /v1/profile/sweep``: build every variant of an architecture in process and measure its latency.

:func:`run_sweep` takes a validated :class:`~sepconv.service.profiling.request.SweepPlan`. Each variant
(alpha x resolution x precision) is built by the exporter (``build_network``, then ``to_fp16`` / ``to_int8`` for
the precision variants, INT8 calibrated on the exporter's synthetic pictures) into memory only — never into the
served repository — and kept in a small LRU (:class:`VariantCache`, ``sweep_cache_size``) so a second sweep over
the same variants skips the build. Each is timed like a profile's end-to-end latency: a fresh session on the
provider asked (``ORT_ENABLE_ALL``, as served), inputs bound on the device, ``warmup`` untimed then ``runs``
synchronised runs at ``batch_size``; ``latency_ms`` p50/p90, ``images_per_s`` = batch / p50.

``pareto``: the rows no other row dominates on (lower-or-equal p50 latency, higher-or-equal MACs, one strictly) —
the cheapest way to buy each amount of compute; ``best_under_budget``: the largest-MACs row whose p50 fits
``budget_ms`` (ties: the faster), ``None`` when none fits or no budget was given.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from sepconv.service.profiling.request import SweepPlan, Variant
from sepconv.service.profiling.sessions import random_feeds
from sepconv.service.profiling.timing import BoundRun, summarize

Progress = Callable[[int, int, str], None]


class VariantCache:
    """Serialized variant models by ``(arch, alpha, resolution, precision)``, newest ``size`` kept."""

    def __init__(self, size: int) -> None:
        self.size = max(1, int(size))
        self._items: OrderedDict[tuple[str, float, int, str], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, arch: str, v: Variant) -> bytes:
        key = (arch, v.alpha, v.resolution, v.precision)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        data = build_variant(arch, v)
        with self._lock:
            self._items[key] = data
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return data

    def __contains__(self, key: tuple[str, float, int, str]) -> bool:
        with self._lock:
            return key in self._items


def build_variant(arch: str, v: Variant) -> bytes:
    """The exporter's model of one variant (seeded random weights: latency does not depend on their values)."""
    from sepconv.export.networks import build_network  # noqa: PLC0415 - the exporter, only for a sweep
    from sepconv.export.precision.calibration import InputSpec, synthetic_inputs  # noqa: PLC0415
    from sepconv.export.precision.convert import to_fp16, to_int8  # noqa: PLC0415

    model = build_network(arch, alpha=v.alpha, resolution=v.resolution).model
    if v.precision == "fp16":
        model = to_fp16(model)
    elif v.precision == "int8":
        meta = {p.key: p.value for p in model.metadata_props}
        model = to_int8(model, synthetic_inputs(InputSpec.of(meta)), "minmax")
    return model.SerializeToString()


def pareto_front(rows: list[dict[str, Any]]) -> list[int]:
    """Indices of the rows no other row dominates (p50 <= and macs >=, one strictly), by latency."""
    front = []
    for i, r in enumerate(rows):
        lat, macs = r["latency_ms"]["p50"], r["macs"]
        dominated = any(o["latency_ms"]["p50"] <= lat and o["macs"] >= macs
                        and (o["latency_ms"]["p50"] < lat or o["macs"] > macs)
                        for j, o in enumerate(rows) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (rows[i]["latency_ms"]["p50"], -rows[i]["macs"]))


def best_under_budget(rows: list[dict[str, Any]], budget_ms: float | None) -> int | None:
    """The largest-MACs row whose p50 fits ``budget_ms`` (ties: the faster one)."""
    if budget_ms is None:
        return None
    fits = [i for i, r in enumerate(rows) if r["latency_ms"]["p50"] <= budget_ms]
    if not fits:
        return None
    return max(fits, key=lambda i: (rows[i]["macs"], -rows[i]["latency_ms"]["p50"]))


def _time_variant(data: bytes, plan: SweepPlan) -> list[float]:
    session = plan.session.open(data)
    run = BoundRun.create(session, random_feeds(session, plan.batch_size))
    samples = run.time(plan.runs, plan.warmup)
    del run, session
    return samples


def run_sweep(plan: SweepPlan, cache: VariantCache, progress: Progress | None = None) -> dict[str, Any]:
    """Measure every variant of ``plan``; the response body of ``POST /v1/profile/sweep``."""
    total = 2 * len(plan.variants)
    rows: list[dict[str, Any]] = []
    execution_provider = None
    for i, v in enumerate(plan.variants):
        label = f"{plan.arch} alpha {v.alpha} {v.resolution} px {v.precision}"
        if progress:
            progress(2 * i, total, f"building {label}")
        data = cache.get(plan.arch, v)
        if progress:
            progress(2 * i + 1, total, f"timing {label}")
        samples = _time_variant(data, plan)
        lat = {k: round(t / 1000.0, 4) for k, t in summarize(samples).items()}
        rows.append({"alpha": v.alpha, "resolution": v.resolution, "precision": v.precision, "params": v.params,
                     "macs": v.macs, "latency_ms": lat,
                     "images_per_s": round(plan.batch_size * 1000.0 / lat["p50"], 2) if lat["p50"] > 0 else None})
        execution_provider = execution_provider or plan.session.providers[0]
    if progress:
        progress(total, total, "done")
    return {
        "arch": plan.arch,
        "provider": plan.provider,
        "execution_provider": execution_provider,
        "batch_size": plan.batch_size,
        "runs": plan.runs,
        "warmup": plan.warmup,
        "budget_ms": plan.budget_ms,
        "rows": rows,
        "pareto": pareto_front(rows),
        "best_under_budget": best_under_budget(rows, plan.budget_ms),
        "method": ("each variant built in process by the exporter (seeded random weights; int8: QDQ calibrated on "
                   "synthetic pictures), a fresh session (ORT_ENABLE_ALL), inputs bound on the device, "
                   "warm-up then synchronised timed runs; latency_ms p50/p90, images_per_s = batch / p50"),
    }
