"""ONNX Runtime sessions, made one way for the whole service.

* :func:`available_providers` — what this onnxruntime build offers.
* :func:`resolve_providers` — turn ``"auto" | "cpu" | "cuda" | "A,B" | [names]`` into ORT provider names.
* :func:`concurrent_threads` / :func:`default_instance_count` — the execution policy under concurrency (CPU
  models: single-threaded runs, one per core; see :mod:`sepconv.service.runtime.serving`).
* :func:`make_session` — an ``InferenceSession`` with graph optimisation, threads and arena options from
  :class:`~sepconv.service.settings.Settings`; afterwards it checks ``get_providers()``: when CUDA was asked for
  and the session runs on CPU only, ``strict_providers`` raises :class:`ProviderError` (a clear load
  failure, ``Unavailable``), otherwise a warning is logged. An unknown provider name is
  :class:`UnknownProvider` (``InvalidInput``), an unknown optimisation level ``InvalidInput``.

Every session in the service (models, ``/v1/conv`` graphs, profiling runs) is made here. The logger stays
``sepconv.runtime``.
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from pathlib import Path

import onnxruntime as ort

from sepconv.service.errors import InvalidInput, Unavailable
from sepconv.service.settings import Settings

log = logging.getLogger("sepconv.runtime")

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
GPU_PROVIDERS = frozenset({CUDA, "TensorrtExecutionProvider", "ROCMExecutionProvider", "MIGraphXExecutionProvider",
                           "DmlExecutionProvider"})

_ALIASES = {
    "cpu": [CPU],
    "cuda": [CUDA, CPU],
    "gpu": [CUDA, CPU],
    "tensorrt": ["TensorrtExecutionProvider", CUDA, CPU],
    "trt": ["TensorrtExecutionProvider", CUDA, CPU],
}

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


class ProviderError(Unavailable):
    """The requested execution provider cannot be used: it fell back under ``strict_providers``
    (:class:`Unavailable`), or it is unknown (:class:`UnknownProvider`, the client's mistake)."""


class UnknownProvider(InvalidInput, ProviderError):
    """A provider name this onnxruntime build does not know (``InvalidInput`` first in the MRO, so over REST
    it answers 400 like any client mistake; still a ``ProviderError`` for code that catches those)."""


@lru_cache(maxsize=1)
def available_providers() -> list[str]:
    """Execution providers this onnxruntime build offers (CUDA listed does not mean it will start)."""
    return list(ort.get_available_providers())


def cuda_listed() -> bool:
    return CUDA in available_providers()


def _expand(name: str) -> list[str]:
    key = name.strip()
    if not key:
        return []
    if key.lower() in _ALIASES:
        return list(_ALIASES[key.lower()])
    if key.lower() == "auto":
        return [CUDA, CPU] if cuda_listed() else [CPU]
    lowered = {p.lower(): p for p in (*available_providers(), CPU, CUDA, *GPU_PROVIDERS)}
    canonical = lowered.get(key.lower()) or lowered.get(key.lower() + "executionprovider")
    if canonical is None:
        raise UnknownProvider(
            f"unknown execution provider {name!r}; use auto, cpu, cuda or one of {', '.join(available_providers())}")
    return [canonical]


def resolve_providers(requested: str | list[str] | tuple[str, ...] | None, settings: Settings) -> list[str]:
    """ORT provider names (in priority order) for ``requested`` (``None`` -> ``settings.providers``).

    ``auto`` = CUDA first when this build lists it, then CPU; ``cpu``; ``cuda`` (CUDA then CPU, so a
    fallback is detectable afterwards); or a comma-separated list / list of provider names. CPU is always
    appended last so a session can be made at all. Unknown names -> :class:`UnknownProvider` (``InvalidInput``).
    """
    if requested is None or (isinstance(requested, str) and not requested.strip()):
        requested = settings.providers
    names = requested.split(",") if isinstance(requested, str) else list(requested)
    out: list[str] = []
    for name in names:
        for provider in _expand(str(name)):
            if provider not in out:
                out.append(provider)
    if not out:
        out = [CPU]
    if CPU not in out:
        out.append(CPU)
    return out


def wants_gpu(providers: list[str]) -> bool:
    return any(p in GPU_PROVIDERS for p in providers)


def concurrent_threads(settings: Settings, gpu: bool) -> int:
    """Intra-op threads of the session that runs queued and batched requests: 0 = the main session's own
    (GPU models, or ``intra_op_threads`` set by the operator), else ``concurrent_intra_op_threads``."""
    if gpu or settings.intra_op_threads or settings.concurrent_intra_op_threads <= 0:
        return 0
    return settings.concurrent_intra_op_threads


def default_instance_count(settings: Settings, gpu: bool) -> int:
    """Concurrent ``session.run`` calls for a model whose config has no ``instance_group``: ``batch_workers``;
    else enough single-threaded runs to fill the cores (CPU models, :func:`concurrent_threads`), else 2 (ORT
    sessions are thread-safe, and two runs in flight fill a device better than one)."""
    if settings.batch_workers:
        return settings.batch_workers
    threads = concurrent_threads(settings, gpu)
    if threads:
        return max(2, (os.cpu_count() or 2) // threads)
    return 2


def _is_auto(requested: str | list[str] | tuple[str, ...] | None, settings: Settings) -> bool:
    value = settings.providers if requested is None else requested
    return isinstance(value, str) and value.strip().lower() == "auto"


def session_options(settings: Settings, *, enable_profiling: bool = False, profile_prefix: str | None = None,
                    optimization: str | None = None, intra_op_threads: int | None = None,
                    optimized_model_path: str | None = None) -> ort.SessionOptions:
    """``optimized_model_path``: ORT writes the graph it will run there (after fusion) when the session is made."""
    opts = ort.SessionOptions()
    level = (optimization or settings.graph_optimization).strip().lower()
    if level not in _OPT_LEVELS:
        raise InvalidInput(f"unknown graph optimisation level {level!r}; use one of {', '.join(_OPT_LEVELS)}")
    opts.graph_optimization_level = _OPT_LEVELS[level]
    threads = settings.intra_op_threads if intra_op_threads is None else intra_op_threads
    if threads and threads > 0:
        opts.intra_op_num_threads = int(threads)
    if settings.inter_op_threads and settings.inter_op_threads > 0:
        opts.inter_op_num_threads = int(settings.inter_op_threads)
    opts.enable_cpu_mem_arena = bool(settings.enable_cpu_mem_arena)
    opts.enable_mem_pattern = bool(settings.enable_mem_pattern)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if settings.allow_spinning else "0")
    opts.log_severity_level = 3  # errors only; fallbacks are reported by us
    if enable_profiling:
        opts.enable_profiling = True
        if profile_prefix:
            opts.profile_file_prefix = str(profile_prefix)
    if optimized_model_path:
        opts.optimized_model_filepath = str(optimized_model_path)
    return opts


def cuda_provider_options(settings: Settings) -> dict[str, str]:
    """CUDA execution provider options. FP32 stays FP32 (``use_tf32=0``): TF32 tensor cores round the
    inputs of every convolution to 10 mantissa bits, which breaks the TF-exact ``/v1/conv`` results
    and makes model outputs differ from the CPU's by ~1e-3; ``cudnn_conv_algo_search`` picks the
    fastest cuDNN algorithm per shape, and the workspace cap lets it consider all of them."""
    return {
        "device_id": str(settings.cuda_device_id),
        "arena_extend_strategy": settings.arena_extend_strategy,
        "cudnn_conv_algo_search": settings.cudnn_conv_algo_search,
        "cudnn_conv_use_max_workspace": "1",
        "use_tf32": "1" if settings.cuda_use_tf32 else "0",
    }


def _provider_options(providers: list[str], settings: Settings) -> list[dict[str, str]]:
    return [cuda_provider_options(settings) if p == CUDA else {} for p in providers]


def make_session(
    model: str | Path | bytes,
    settings: Settings,
    *,
    providers: str | list[str] | None = None,
    enable_profiling: bool = False,
    profile_prefix: str | None = None,
    optimization: str | None = None,
    intra_op_threads: int | None = None,
    optimized_model_path: str | None = None,
) -> ort.InferenceSession:
    """A session for ``model`` (path or serialized bytes) with the service's options.

    After creation the providers the session really got are compared with the request: GPU asked for
    but only CPU running -> :class:`ProviderError` when ``settings.strict_providers`` (and the request
    was explicit, not ``auto``), else a logged warning. ``session.get_providers()`` tells the truth.
    """
    wanted = resolve_providers(providers, settings)
    opts = session_options(settings, enable_profiling=enable_profiling, profile_prefix=profile_prefix,
                           optimization=optimization, intra_op_threads=intra_op_threads,
                           optimized_model_path=optimized_model_path)
    source = model if isinstance(model, bytes) else str(model)
    # Only ask ORT for providers this build has; a missing one is a fallback we report ourselves.
    usable = [p for p in wanted if p in available_providers() or p == CPU]
    session = ort.InferenceSession(source, sess_options=opts, providers=usable,
                                   provider_options=_provider_options(usable, settings))
    got = session.get_providers()
    if wants_gpu(wanted) and not wants_gpu(got):
        asked = [p for p in wanted if p in GPU_PROVIDERS]
        why = ("this onnxruntime build does not offer it" if not any(p in available_providers() for p in asked)
               else "it failed to start (no usable GPU or CUDA libraries)")
        message = f"{', '.join(asked)} was requested but the session runs on {', '.join(got)}: {why}"
        if settings.strict_providers and not _is_auto(providers, settings):
            raise ProviderError(message + " (strict providers: refusing the CPU fallback)")
        if not _is_auto(providers, settings):
            log.warning("%s; falling back to CPU", message)
        else:
            log.info("%s; using CPU (auto)", message)
    return session
