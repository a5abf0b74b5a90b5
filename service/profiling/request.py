"""The bodies of ``POST /v1/models/{m}/profile`` and ``POST /v1/profile/conv``, validated ONCE into plans.

:class:`ProfileRequest` / :class:`ConvProfileRequest` are the strict pydantic bodies (types only: ``"runs": true``
or ``"fused": "yes"`` are 422s, unknown fields are refused). :func:`plan_profile` / :func:`plan_conv_profile`
check every bound, cheapest first, and return the plan the engines run — nothing downstream validates again:

* bounds (400): runs 1..``profile_max_runs``, warmup 0..``profile_max_warmup``, batch 1..the smaller of the
  model's ``max_batch_size`` and ``profile_max_batch``, threads 1..cores, provider ``cpu`` / ``cuda`` (and CUDA
  offered by this build), method (``auto`` = ``trace`` on CPU, ``isolated`` on CUDA; ``trace`` on CUDA refused);
* budgets (413): the compute of all the runs against ``profile_max_gmacs`` (the route is open to any client, and
  500 runs of batch 64 of a 224-px MobileNet would hold the server's cores for minutes); for the conv profile also
  tensor sizes against ``conv_max_elements`` and the standard conv's multiply-adds against ``conv_max_macs``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from sepconv.export.errors import ExportError
from sepconv.export.padding import ConvGeometry
from sepconv.export.repository.layout import MetaKey
from sepconv.service.conv.request import check_filter_size
from sepconv.service.errors import InvalidInput, TooLarge, Unprocessable
from sepconv.service.profiling.sessions import CUDA, PROVIDERS, SessionSpec, with_threads
from sepconv.service.runtime.sessions import available_providers
from sepconv.service.settings import Settings


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


@dataclass(frozen=True)
class ProfilePlan:
    """A validated model profile: what to run, how often, and how its sessions are made."""

    batch_size: int
    runs: int
    warmup: int
    fused: bool
    method: str  # "trace" | "isolated" (auto resolved)
    session: SessionSpec  # provider key, graph optimisation ("all" if fused else "disable"), threads

    @property
    def provider(self) -> str:
        return self.session.provider


@dataclass(frozen=True)
class ConvProfilePlan:
    """A validated ``/v1/profile/conv`` request, its geometry resolved (TF's NHWC reading of the fields)."""

    input_shape: list[int]  # [N, H, W, C]
    kernel: tuple[int, int]
    filters: int
    depth_multiplier: int
    geometry: ConvGeometry  # strides, dilations and the resolved pads (NHWC, as the request gave them)
    out_hw: tuple[int, int]  # of the standard / depthwise conv
    runs: int
    warmup: int
    session: SessionSpec  # graph optimisation "all"

    @property
    def provider(self) -> str:
        return self.session.provider


# --------------------------------------------------------------------------------------------
# the checks both plans share
# --------------------------------------------------------------------------------------------
def check_runs(runs: int, warmup: int, settings: Settings) -> None:
    if runs < 1 or runs > settings.profile_max_runs:
        raise InvalidInput(f"runs must be between 1 and {settings.profile_max_runs}, got {runs}")
    if warmup < 0 or warmup > settings.profile_max_warmup:
        raise InvalidInput(f"warmup must be between 0 and {settings.profile_max_warmup}, got {warmup}")


def check_threads(threads: int | None) -> None:
    cores = os.cpu_count() or 1
    if threads is not None and not 1 <= threads <= cores:
        raise InvalidInput(f"threads must be between 1 and {cores} (this server's cores), got {threads}")


def check_provider(provider: str, threads: int | None) -> str:
    """The provider key (``cpu`` / ``cuda``), 400 when unknown or when this server has no CUDA."""
    check_threads(threads)
    key = provider.strip().lower()
    if key not in PROVIDERS:
        raise InvalidInput(f"unknown provider {provider!r}; use 'cpu' or 'cuda'")
    if key == "cuda" and CUDA not in available_providers():
        raise InvalidInput("provider 'cuda' requested but this server has no CUDA execution provider "
                           f"(available: {', '.join(available_providers())}); use provider 'cpu'")
    return key


def check_compute(macs_per_image: int | None, batch: int, runs: int, warmup: int, settings: Settings) -> None:
    """Refuse (413) a profile whose runs would cost more than ``profile_max_gmacs``.
    Counted: warm-up and timed runs, twice (traced runs, then the untraced end-to-end runs)."""
    if not macs_per_image:
        return
    gmacs = macs_per_image * batch * (runs + warmup) * 2 / 1e9
    if gmacs > settings.profile_max_gmacs:
        raise TooLarge(f"this profile would cost {gmacs:,.0f} G multiply-adds ({macs_per_image / 1e6:,.1f} M "
                       f"per image x batch {batch} x {runs + warmup} runs x 2 passes); this server allows "
                       f"{settings.profile_max_gmacs:,.0f} G: ask for fewer runs or a smaller batch")


# --------------------------------------------------------------------------------------------
# POST /v1/models/{m}/profile
# --------------------------------------------------------------------------------------------
def model_macs(metadata: dict[str, str] | None) -> int | None:
    """Multiply-adds per image from the exporter's metadata (None for a model from elsewhere)."""
    try:
        return int((metadata or {})[MetaKey.MACS])
    except (KeyError, ValueError):
        return None


PROFILED_DATATYPES = frozenset({"FP32", "FP16", "FP64", "INT64", "INT32", "INT8", "UINT8", "BOOL"})


def plan_profile(req: ProfileRequest, settings: Settings, *, model_max_batch: int | None = None,
                 metadata: dict[str, str] | None = None, inputs: dict[str, str] | None = None) -> ProfilePlan:
    """Validate ``req`` for a model (its ``max_batch_size``, its metadata: the compute budget uses the exporter's
    multiply-adds when it has them, and its inputs' V2 datatypes: a profile feeds random numbers); 400 for a
    bound, 413 over the compute budget, 422 for a model a profile cannot feed."""
    for name, datatype in (inputs or {}).items():
        if datatype not in PROFILED_DATATYPES:
            raise Unprocessable(f"a profile feeds random numbers; input {name!r} is {datatype}")
    check_runs(req.runs, req.warmup, settings)
    limit = settings.profile_max_batch
    why = "the server's profile_max_batch"
    if model_max_batch and model_max_batch > 0 and model_max_batch < limit:
        limit, why = model_max_batch, "the model's max_batch_size"
    if req.batch_size < 1 or req.batch_size > limit:
        raise InvalidInput(f"batch_size must be between 1 and {limit} ({why}), got {req.batch_size}")
    check_compute(model_macs(metadata), req.batch_size, req.runs, req.warmup, settings)
    provider = check_provider(req.provider, req.threads)
    method = req.method  # a Literal of METHODS (pydantic refuses anything else)
    if method == "auto":
        method = "isolated" if provider == "cuda" else "trace"
    if method == "trace" and provider == "cuda":
        raise InvalidInput("method 'trace' on CUDA would report kernel launch times, not GPU execution times; "
                           "use method 'isolated' (the default for cuda)")
    spec = SessionSpec(with_threads(settings, req.threads), provider, "all" if req.fused else "disable")
    return ProfilePlan(batch_size=req.batch_size, runs=req.runs, warmup=req.warmup, fused=req.fused, method=method,
                       session=spec)


# --------------------------------------------------------------------------------------------
# POST /v1/profile/conv
# --------------------------------------------------------------------------------------------
def _kernel(size: int | list[int]) -> tuple[int, int]:
    if isinstance(size, bool):
        raise InvalidInput("kernel_size must be an int or [kh, kw]")
    if isinstance(size, int):
        kh = kw = size
    else:
        vals = list(size)
        if len(vals) == 1:
            kh = kw = int(vals[0])
        elif len(vals) == 2:
            kh, kw = int(vals[0]), int(vals[1])
        else:
            raise InvalidInput(f"kernel_size must be an int or [kh, kw], got {list(size)}")
    if kh < 1 or kw < 1:
        raise InvalidInput(f"kernel_size must be >= 1, got {[kh, kw]}")
    return kh, kw


def plan_conv_profile(req: ConvProfileRequest, settings: Settings) -> ConvProfilePlan:
    """Validate ``req``: 400 for a bound or a geometry TF refuses, 413 over a size or compute limit."""
    shape = [int(v) for v in req.input_shape]
    if len(shape) != 4 or min(shape) < 1:
        raise InvalidInput(f"input_shape must be [N, H, W, C] with positive entries, got {req.input_shape}")
    kh, kw = _kernel(req.kernel_size)
    if req.filters < 1:
        raise InvalidInput(f"filters must be >= 1, got {req.filters}")
    if req.depth_multiplier < 1:
        raise InvalidInput(f"depth_multiplier must be >= 1, got {req.depth_multiplier}")
    check_runs(req.runs, req.warmup, settings)
    if shape[0] > settings.profile_max_batch:
        raise InvalidInput(f"batch (input_shape[0]) must be at most {settings.profile_max_batch}, got {shape[0]}")
    provider = check_provider(req.provider, req.threads)
    elements = shape[0] * shape[1] * shape[2] * shape[3]
    if elements > settings.conv_max_elements:
        raise TooLarge(f"input has {elements} elements; this server allows {settings.conv_max_elements}")
    n, h, w, c = shape
    try:
        geometry = ConvGeometry(req.strides, req.padding, req.dilations, "NHWC").resolved((h, w), (kh, kw))
        _, (ho, wo) = geometry.resolve((h, w), (kh, kw))
    except ExportError as exc:
        raise InvalidInput(str(exc)) from exc
    work = n * ho * wo * kh * kw * c * req.filters
    if work > settings.conv_max_macs:
        raise TooLarge(f"the standard convolution costs {work} multiply-adds per run; "
                       f"this server allows {settings.conv_max_macs}")
    check_compute(work // n, n, req.runs, req.warmup, settings)  # the standard conv dominates the four variants
    out_elements = n * ho * wo * max(req.filters, c * req.depth_multiplier)
    if out_elements > settings.conv_max_elements:
        raise TooLarge(f"an output has {out_elements} elements; this server allows {settings.conv_max_elements}")
    # the filters the four variants hold (standard, depthwise, pointwise): 1x1x500x100000 would be 200 MB each
    for field, size, fshape in (("standard filter", kh * kw * c * req.filters, [kh, kw, c, req.filters]),
                                ("depthwise filter", kh * kw * c * req.depth_multiplier,
                                 [kh, kw, c, req.depth_multiplier]),
                                ("pointwise filter", c * req.depth_multiplier * req.filters,
                                 [1, 1, c * req.depth_multiplier, req.filters])):
        check_filter_size(field, size, fshape, settings)
    return ConvProfilePlan(input_shape=shape, kernel=(kh, kw), filters=req.filters,
                           depth_multiplier=req.depth_multiplier, geometry=geometry, out_hw=(ho, wo), runs=req.runs,
                           warmup=req.warmup, session=SessionSpec(with_threads(settings, req.threads), provider, "all"))


# --------------------------------------------------------------------------------------------
# POST /v1/profile/sweep
# --------------------------------------------------------------------------------------------
class SweepRequest(BaseModel):
    """The body of ``POST /v1/profile/sweep`` (strict types, unknown fields refused)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    arch: str = Field(..., description="an architecture of the exporter's registry (e.g. mobilenet_v2)")
    alphas: list[float] = Field(..., description="width multipliers to build")
    resolutions: list[int] = Field(..., description="input resolutions to build")
    precisions: list[str] = Field(["fp32"], description="fp32 | fp16 | int8 (int8: calibrated on synthetic images)")
    batch_size: int = Field(1, description="images per run")
    runs: int = Field(20, description="timed runs per variant")
    warmup: int = Field(5, description="untimed runs first, per variant")
    provider: str = Field("cpu", description="cpu | cuda")
    threads: int | None = Field(None, description="intra-op threads (default: the server's)")
    budget_ms: float | None = Field(None, description="latency budget: best_under_budget is the largest-MACs "
                                                      "variant whose p50 fits it")


@dataclass(frozen=True)
class Variant:
    """One point of a sweep, with the exporter's accounting (``sepconv summary``'s total_params and macs)."""

    alpha: float
    resolution: int
    precision: str
    params: int
    macs: int


@dataclass(frozen=True)
class SweepPlan:
    """A validated sweep: the variants in request order (precision, then alpha, then resolution)."""

    arch: str
    variants: tuple[Variant, ...]
    batch_size: int
    runs: int
    warmup: int
    budget_ms: float | None
    session: SessionSpec  # graph optimisation "all", as served

    @property
    def provider(self) -> str:
        return self.session.provider


def plan_sweep(req: SweepRequest, settings: Settings) -> SweepPlan:
    """Validate ``req``: 400 for an unknown arch / alpha / resolution / precision or a bound, 413 over the variant
    count (``sweep_max_variants``) or the compute budget (``profile_max_gmacs``, all variants' runs summed)."""
    from sepconv.export.graph import layer_totals  # noqa: PLC0415
    from sepconv.export.networks import network_layers  # noqa: PLC0415 - the exporter, only for a sweep
    from sepconv.export.precision import check_precision  # noqa: PLC0415

    check_runs(req.runs, req.warmup, settings)
    if req.batch_size < 1 or req.batch_size > settings.profile_max_batch:
        raise InvalidInput(f"batch_size must be between 1 and {settings.profile_max_batch}, got {req.batch_size}")
    if not req.alphas or not req.resolutions or not req.precisions:
        raise InvalidInput("alphas, resolutions and precisions must each name at least one value")
    if req.budget_ms is not None and not (req.budget_ms > 0 and math.isfinite(req.budget_ms)):
        raise InvalidInput(f"budget_ms must be a positive number of milliseconds, got {req.budget_ms}")
    count = len(set(req.alphas)) * len(set(req.resolutions)) * len(set(req.precisions))
    if count > settings.sweep_max_variants:
        raise TooLarge(f"this sweep has {count} variants; this server measures at most {settings.sweep_max_variants} "
                       "per sweep")
    provider = check_provider(req.provider, req.threads)
    precisions = []
    for p in dict.fromkeys(req.precisions):
        try:
            precisions.append(check_precision(p))
        except ExportError as exc:
            raise InvalidInput(str(exc)) from None
    variants = []
    for precision in precisions:
        for alpha in dict.fromkeys(req.alphas):
            for resolution in dict.fromkeys(req.resolutions):
                try:
                    config, layers = network_layers(req.arch, alpha=alpha, resolution=resolution)
                except ExportError as exc:
                    raise InvalidInput(str(exc)) from None
                totals = layer_totals(layers)
                variants.append(Variant(config.alpha, config.resolution, precision, int(totals["total_params"]),
                                        int(totals["macs"])))
    gmacs = sum(v.macs for v in variants) * req.batch_size * (req.runs + req.warmup) / 1e9
    if gmacs > settings.profile_max_gmacs:
        raise TooLarge(f"this sweep would cost {gmacs:,.0f} G multiply-adds ({len(variants)} variants x batch "
                       f"{req.batch_size} x {req.runs + req.warmup} runs); this server allows "
                       f"{settings.profile_max_gmacs:,.0f} G: ask for fewer variants, runs or a smaller batch")
    spec = SessionSpec(with_threads(settings, req.threads), provider, "all")
    return SweepPlan(arch=req.arch, variants=tuple(variants), batch_size=req.batch_size, runs=req.runs,
                     warmup=req.warmup, budget_ms=req.budget_ms, session=spec)
