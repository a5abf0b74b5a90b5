"""``/v1/profile/conv``: standard vs depthwise vs pointwise vs separable for one configuration.

Each variant is a one-layer graph from :mod:`sepconv.export.single_op` (so padding, strides, dilations and the
params/MAC accounting are the exporter's own; NCHW input, no layout change in the graph; seeded constant weights,
as in a deployed model, so that ONNX Runtime can pre-pack them), run in its own session with inputs bound on the
device:

* ``standard``: ``conv2d`` with an ``[kh, kw, C, filters]`` filter (accounting kind ``standard``);
* ``depthwise``: ``depthwise_conv2d`` with ``[kh, kw, C, depth_multiplier]``;
* ``pointwise``: the separable conv's second half, a 1x1 ``conv2d`` on the depthwise output (kind ``pointwise``);
* ``separable``: ``separable_conv2d``, depthwise then pointwise.

The four are timed interleaved (one run of each per round) so that load changes on the machine hit all of them
alike; ``measured_ratio`` = separable p50 / standard p50, next to ``theoretical_ratio`` = ``1/N + 1/Dk²``
(N = filters, Dk² = kernel height × width). On a loaded machine the p50s wander; ``measured_ratio_min`` (best run
of each) is the steadier figure.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sepconv.export import single_op
from sepconv.export.errors import ExportError
from sepconv.export.padding import ConvGeometry
from sepconv.export.single_op import ConvGraph, ConvKey
from sepconv.service.errors import InvalidInput
from sepconv.service.profiling.request import ConvProfilePlan
from sepconv.service.profiling.sessions import random_feeds
from sepconv.service.profiling.timing import BoundRun, summarize

VARIANTS = ("standard", "depthwise", "pointwise", "separable")
METHOD = ("each variant a one-layer graph in its own session (graph optimisation on), inputs and outputs "
          "bound on the device, synchronised runs; the four variants timed interleaved, p50/p90 over runs")


def _key(variant: str, plan: ConvProfilePlan) -> ConvKey:
    """The single-op graph of ``variant`` (the only place this package builds a ConvKey)."""
    _, h, w, c = plan.input_shape
    kh, kw = plan.kernel
    mult, filters = plan.depth_multiplier, plan.filters
    op, kind, chw = {"standard": ("conv2d", "standard", (c, h, w)),
                     "depthwise": ("depthwise_conv2d", None, (c, h, w)),
                     "pointwise": ("conv2d", "pointwise", (c * mult, *plan.out_hw)),
                     "separable": ("separable_conv2d", None, (c, h, w))}[variant]
    shapes = {"standard": ((kh, kw, c, filters),),
              "depthwise": ((kh, kw, c, mult),),
              "pointwise": ((1, 1, c * mult, filters),),
              "separable": ((kh, kw, c, mult), (1, 1, c * mult, filters))}[variant]
    g = plan.geometry
    # NCHW graphs (no layout change inside); the pointwise input is the depthwise output: its geometry is applied
    geometry = (ConvGeometry(1, "VALID", 1, "NCHW") if variant == "pointwise"
                else ConvGeometry(g.strides, g.padding, g.dilations, "NCHW"))
    return ConvKey(op=op, chw=chw, filter_shapes=shapes, geometry=geometry, activation=None, bias=False,
                   providers=tuple(plan.session.providers), kind=kind)


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 4) if b else None


def profile_conv(plan: ConvProfilePlan) -> dict[str, Any]:
    """Build, time and compare the four variants; the response body of ``POST /v1/profile/conv``."""
    rng = np.random.default_rng(0)
    try:
        graphs: dict[str, ConvGraph] = {v: single_op.build(_key(v, plan), weights=rng) for v in VARIANTS}
    except ExportError as exc:
        raise InvalidInput(str(exc)) from exc
    batch = plan.input_shape[0]
    accounting = {v: {"params": g.params, "macs": g.macs, "output_shape": g.builder.layers[-1].output_shape}
                  for v, g in graphs.items()}

    bound: dict[str, BoundRun] = {}
    for v in VARIANTS:
        session = plan.session.open(graphs[v].to_onnx().SerializeToString())
        bound[v] = BoundRun.create(session, random_feeds(session, batch))
    samples: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(max(plan.warmup, 1)):  # a fresh session's first run is never representative
        for v in VARIANTS:
            bound[v].run_once()
    for _ in range(plan.runs):
        for v in VARIANTS:
            samples[v].append(bound[v].run_once())
    execution_provider = bound["standard"].session.get_providers()[0]
    del bound

    out: dict[str, Any] = {}
    for v in VARIANTS:
        out[v] = {**accounting[v], "time_us": {**summarize(samples[v]), "min": round(min(samples[v]), 3)}}
    std, sep = out["standard"], out["separable"]
    kh, kw = plan.kernel
    return {
        "input_shape": plan.input_shape,
        "kernel_size": [kh, kw],
        "filters": plan.filters,
        "depth_multiplier": plan.depth_multiplier,
        "provider": plan.provider,
        "execution_provider": execution_provider,
        "runs": plan.runs,
        "threads": plan.session.settings.intra_op_threads or "auto",
        **out,
        "theoretical_ratio": 1.0 / plan.filters + 1.0 / (kh * kw),
        "macs_ratio": sep["macs"] / std["macs"] if std["macs"] else None,
        "measured_ratio": _ratio(sep["time_us"]["p50"], std["time_us"]["p50"]),
        "measured_ratio_min": _ratio(sep["time_us"]["min"], std["time_us"]["min"]),
        "method": METHOD,
    }
