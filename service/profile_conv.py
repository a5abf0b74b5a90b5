"""``/v1/profile/conv``: standard vs depthwise vs pointwise vs separable for one configuration.

Each variant is a one-layer graph built with :mod:`sepconv.export.layers` (so padding, strides, dilations and
the params/MAC accounting are the exporter's own), run in its own session with inputs bound on the
device. The four are timed interleaved (one run of each per round) so that load changes on the
machine hit all of them alike; ``measured_ratio`` = separable p50 / standard p50, next to
``theoretical_ratio`` = ``1/N + 1/Dk²`` (N = filters, Dk² = kernel height × width). On a loaded machine
the p50s wander; ``measured_ratio_min`` (best run of each) is the steadier figure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from pydantic import BaseModel, ConfigDict, Field

from sepconv.export import layers as L
from sepconv.export.errors import ExportError
from sepconv.export.graph import GraphBuilder
from sepconv.export.padding import conv_output_hw, resolve_padding, spatial_pair
from sepconv.service.errors import ApiError
from sepconv.service.profile_timing import BoundRun, random_feeds
from sepconv.service.profile_trace import summarize
from sepconv.service.profiler import _session, check_compute, check_provider, check_runs, with_threads
from sepconv.service.settings import Settings

VARIANTS = ("standard", "depthwise", "pointwise", "separable")


class ConvProfileRequest(BaseModel):
    """The body of ``POST /v1/profile/conv`` (strict types, unknown fields refused)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    input_shape: list[int] = Field(..., description="[N, H, W, C]")
    filters: int = Field(..., description="output channels N of the standard and pointwise convs")
    kernel_size: int | list[int] = 3
    strides: int | list[int] = 1
    padding: str | list[list[int]] | list[int] = "SAME"
    dilations: int | list[int] = 1
    depth_multiplier: int = 1
    runs: int = 20
    warmup: int = 5
    provider: str = "cpu"
    threads: int | None = None


def _kernel(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, bool):
        raise ApiError(400, "kernel_size must be an int or [kh, kw]")
    if isinstance(size, int):
        kh = kw = size
    else:
        vals = list(size)
        if len(vals) == 1:
            kh = kw = int(vals[0])
        elif len(vals) == 2:
            kh, kw = int(vals[0]), int(vals[1])
        else:
            raise ApiError(400, f"kernel_size must be an int or [kh, kw], got {list(size)}")
    if kh < 1 or kw < 1:
        raise ApiError(400, f"kernel_size must be >= 1, got {[kh, kw]}")
    return kh, kw


def _graph(variant: str, shape: list[int], kh: int, kw: int, req: ConvProfileRequest,
           rng: np.random.Generator) -> tuple[onnx.ModelProto, list[Any]]:
    """One variant as a checked model (NCHW input, no layout change in the graph) and its layers."""
    _, h, w, c = shape
    mult, filters = req.depth_multiplier, req.filters
    b = GraphBuilder(f"profile_{variant}")
    geometry = {"strides": req.strides, "padding": req.padding, "dilations": req.dilations, "data_format": "NHWC"}
    if variant == "pointwise":
        # the separable conv's second half: its input is the depthwise output
        probe = GraphBuilder("probe")
        t = L.network_input(probe, "input", "NCHW", c, h, w)
        t = L.depthwise_conv2d(probe, t, np.zeros((kh, kw, c, mult), np.float32), name="dw", **geometry)
        c, (h, w) = t.channels, t.hw
    x = L.network_input(b, "input", "NCHW", c, h, w)
    if variant == "standard":
        y = L.conv2d(b, x, rng.standard_normal((kh, kw, c, filters)).astype(np.float32), name="standard",
                     kind="standard", **geometry)
    elif variant == "depthwise":
        y = L.depthwise_conv2d(b, x, rng.standard_normal((kh, kw, c, mult)).astype(np.float32), name="depthwise",
                               **geometry)
    elif variant == "pointwise":
        y = L.conv2d(b, x, rng.standard_normal((1, 1, c, filters)).astype(np.float32), name="pointwise",
                     kind="pointwise")
    else:
        y = L.separable_conv2d(b, x, rng.standard_normal((kh, kw, c, mult)).astype(np.float32),
                               rng.standard_normal((1, 1, c * mult, filters)).astype(np.float32), name="separable",
                               **geometry)
    L.network_output(b, y, "output", "NCHW")
    return b.to_model(), b.layers


def check_conv_request(req: ConvProfileRequest, settings: Settings) -> tuple[list[int], int, int]:
    shape = [int(v) for v in req.input_shape]
    if len(shape) != 4 or min(shape) < 1:
        raise ApiError(400, f"input_shape must be [N, H, W, C] with positive entries, got {req.input_shape}")
    kh, kw = _kernel(req.kernel_size)
    if req.filters < 1:
        raise ApiError(400, f"filters must be >= 1, got {req.filters}")
    if req.depth_multiplier < 1:
        raise ApiError(400, f"depth_multiplier must be >= 1, got {req.depth_multiplier}")
    check_runs(req.runs, req.warmup, settings)
    if shape[0] > settings.profile_max_batch:
        raise ApiError(400, f"batch (input_shape[0]) must be at most {settings.profile_max_batch}, got {shape[0]}")
    check_provider(req.provider, req.threads)
    elements = int(np.prod(shape))
    if elements > settings.conv_max_elements:
        raise ApiError(413, f"input has {elements} elements; this server allows {settings.conv_max_elements}")
    n, h, w, c = shape
    try:
        strides = spatial_pair(req.strides, "strides", "NHWC")
        dilations = spatial_pair(req.dilations, "dilations", "NHWC")
        pads = resolve_padding(req.padding, (h, w), (kh, kw), strides, dilations, "NHWC")
        ho, wo = conv_output_hw((h, w), (kh, kw), strides, dilations, pads)
    except ExportError as exc:
        raise ApiError(400, str(exc)) from exc
    work = n * ho * wo * kh * kw * c * req.filters
    if work > settings.conv_max_macs:
        raise ApiError(413, f"the standard convolution costs {work} multiply-adds per run; "
                            f"this server allows {settings.conv_max_macs}")
    check_compute(work // n, n, req.runs, req.warmup, settings)  # the standard conv dominates the four variants
    out_elements = n * ho * wo * max(req.filters, c * req.depth_multiplier)
    if out_elements > settings.conv_max_elements:
        raise ApiError(413, f"an output has {out_elements} elements; this server allows {settings.conv_max_elements}")
    return shape, kh, kw


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 4) if b else None


def profile_conv(req: ConvProfileRequest, settings: Settings) -> dict[str, Any]:
    shape, kh, kw = check_conv_request(req, settings)
    settings = with_threads(settings, req.threads)
    provider = check_provider(req.provider, req.threads)
    rng = np.random.default_rng(0)
    built: dict[str, tuple[onnx.ModelProto, list[Any]]] = {}
    try:
        for variant in VARIANTS:
            built[variant] = _graph(variant, shape, kh, kw, req, rng)
    except ExportError as exc:
        raise ApiError(400, str(exc)) from exc
    batch = shape[0]
    accounting = {v: {"params": sum(la.params for la in built[v][1]), "macs": sum(la.macs for la in built[v][1]),
                      "output_shape": built[v][1][-1].output_shape} for v in VARIANTS}

    bound: dict[str, BoundRun] = {}
    for v in VARIANTS:
        session = _session(built[v][0].SerializeToString(), settings, provider, "all")
        bound[v] = BoundRun.create(session, random_feeds(session, batch))
    samples: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(max(req.warmup, 1)):  # a fresh session's first run is never representative
        for v in VARIANTS:
            bound[v].run_once()
    for _ in range(req.runs):
        for v in VARIANTS:
            samples[v].append(bound[v].run_once())
    execution_provider = bound["standard"].session.get_providers()[0]
    del bound

    out: dict[str, Any] = {}
    for v in VARIANTS:
        out[v] = {**accounting[v], "time_us": {**summarize(samples[v]), "min": round(min(samples[v]), 3)}}
    std, sep = out["standard"], out["separable"]
    return {
        "input_shape": shape,
        "kernel_size": [kh, kw],
        "filters": req.filters,
        "depth_multiplier": req.depth_multiplier,
        "provider": provider,
        "execution_provider": execution_provider,
        "runs": req.runs,
        "threads": settings.intra_op_threads or "auto",
        **out,
        "theoretical_ratio": 1.0 / req.filters + 1.0 / (kh * kw),
        "macs_ratio": sep["macs"] / std["macs"] if std["macs"] else None,
        "measured_ratio": _ratio(sep["time_us"]["p50"], std["time_us"]["p50"]),
        "measured_ratio_min": _ratio(sep["time_us"]["min"], std["time_us"]["min"]),
        "method": ("each variant a one-layer graph in its own session (graph optimisation on), inputs and outputs "
                   "bound on the device, synchronised runs; the four variants timed interleaved, p50/p90 over runs"),
    }
