"""Server settings: one pydantic-settings class, read from ``SEPCONV_*`` environment variables.

Each feature owns a block of fields below; add fields to your block rather than making another
settings class.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SEPCONV_", env_file=None, extra="ignore")

    # -- server / repository ----------------------------------------------------------------
    repo: Path = Field(Path("models"), description="model repository (Triton layout)")
    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int = Field(8001, ge=0, le=65535, description="port of the gRPC transport (Triton's "
                                                             "GRPCInferenceService) on the same host; 0 = no gRPC")
    grpc_max_concurrent_rpcs: int = Field(256, ge=1, description="gRPC calls (unary or open streams) handled at "
                                                                  "once; past it RESOURCE_EXHAUSTED (bounds the "
                                                                  "memory of messages held: this x max_request_bytes; "
                                                                  "a stream holds at most max_request_bytes)")
    grpc_max_streams_per_connection: int = Field(64, ge=1, description="concurrent HTTP/2 streams one gRPC "
                                                                       "connection may open")
    grpc_max_idle_s: float = Field(300.0, gt=0, description="a gRPC connection with no call for this long is closed "
                                                            "(GOAWAY)")
    admin_token: str | None = Field(None, description="bearer token required by repository load/unload and log "
                                                      "changes (model control 'explicit')")
    max_request_bytes: int = Field(64 * 1024 * 1024, description="largest request body accepted (413 above)")
    max_inflight_bytes: int = Field(256 * 1024 * 1024, description="request bodies handled at once, in bytes "
                                                                   "(503 + Retry-After above; a lone request always "
                                                                   "passes; 0 = no budget)")
    default_max_batch_size: int = Field(8, description="max_batch_size given to models whose config does not say "
                                                       "(auto-completed from a batch-dynamic ONNX model)")
    default_queue_delay_us: int = Field(0, description="dynamic batching queue delay for auto-completed configs")
    batch_workers: int = Field(0, description="concurrent session.run calls per model (0 = the config's "
                                              "instance_group count; without one, one per core for CPU models "
                                              "with single-threaded concurrent runs, else 2)")
    adaptive_batching: bool = Field(True, description="pick the batch size with the best measured time per "
                                                      "image (max_batch_size stays the ceiling)")
    run_threads: int = Field(0, description="threads running session.run for all models (0 = automatic)")
    load_at_startup: bool = Field(True, description="load every model of the repository at start-up")
    shared_memory: Literal["local", "any", "off"] = Field(
        "local", description="Triton's system shared-memory extension: 'local' = only clients on this host "
                             "(loopback peers) may register regions, 'any' = every client, 'off' = refused")
    strict_readiness: bool = Field(False, description="/v2/health/ready only when every model loaded (Triton's "
                                                       "--strict-readiness); otherwise once start-up is done")
    access_log: bool = Field(True, description="one structured (JSON) log line per request")
    shutdown_grace_s: float = Field(30.0, description="how long shutdown waits for in-flight requests")

    # -- hardening: model control, transport limits and timeouts ------------------------------
    model_control: Literal["none", "explicit"] = Field(
        "none", description="as Triton's --model-control-mode: 'none' refuses repository load/unload and log "
                            "changes (4xx); 'explicit' allows them with the admin token (a server listening "
                            "beyond loopback refuses to start in explicit mode without one)")
    max_override_queue_delay_us: int = Field(1_000_000, description="largest max_queue_delay_microseconds a load "
                                                                    "request's config override may set")
    max_override_instances: int = Field(16, description="largest instance_group count a config override may set")
    max_override_batch_size: int = Field(256, description="largest max_batch_size a config override may set")
    header_timeout_s: float = Field(10.0, description="a connection must complete a request's headers within this "
                                                     "(closed otherwise)")
    body_timeout_s: float = Field(30.0, description="a request body may take this long, plus the time its bytes "
                                                   "need at body_min_rate (408 and closed otherwise)")
    body_min_rate: int = Field(16 * 1024, description="bytes per second a request body must keep up, past "
                                                      "body_timeout_s")
    keep_alive_timeout_s: float = Field(5.0, description="an idle keep-alive connection is closed after this")
    max_connections: int = Field(0, description="open connections at most (0 = the file-descriptor limit less a "
                                                "reserve); at the cap the oldest idle connection is closed for a "
                                                "new one, or the new one gets 503")
    drain_max_bytes: int = Field(16 * 1024 * 1024, description="request body bytes still read (and discarded) "
                                                              "after an early answer (413/503), so that the "
                                                              "client reads it instead of a reset")
    drain_timeout_s: float = Field(5.0, description="how long an early answer keeps reading the rest of the body")
    json_max_elements: int = Field(4 * 1024 * 1024, description="JSON values + containers one body may hold, "
                                                                "counted before parsing (413 above)")
    json_max_containers: int = Field(512 * 1024, description="JSON lists + objects one body may hold, counted "
                                                             "before parsing (413 above)")

    # -- runtime (ONNX Runtime sessions) ----------------------------------------------------
    providers: str = Field("auto", description="'auto' (CUDA if it really starts, else CPU), 'cpu', 'cuda', "
                                               "or a comma-separated list of ONNX Runtime provider names")
    strict_providers: bool = Field(False, description="fail a load whose session fell back to another provider")
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    graph_optimization: str = Field("all", description="disable | basic | extended | all")
    enable_cpu_mem_arena: bool = True
    enable_mem_pattern: bool = True
    allow_spinning: bool = Field(False, description="ORT intra-op threads busy-wait for work between ops; off by "
                                                    "default: a server shares its cores with the event loop")
    inline_spinning: bool = Field(True, description="a second session per CPU model, with ORT's spinning on, runs "
                                                   "the requests the server handles alone (ORT-default speed for "
                                                   "a lone client; concurrent runs keep the non-spinning session)")
    concurrent_intra_op_threads: int = Field(1, description="intra-op threads of the CPU session that runs queued "
                                                           "and batched requests (under concurrency): 1 = each run "
                                                           "on one core, as many runs at once as cores; 0 = "
                                                           "intra_op_threads (ORT's default: all cores per run)")
    arena_extend_strategy: str = Field("kNextPowerOfTwo", description="CUDA arena: kNextPowerOfTwo | kSameAsRequested")
    cuda_device_id: int = 0
    cuda_use_tf32: bool = Field(False, description="let cuDNN/cuBLAS use TF32 tensor cores for FP32 convolutions "
                                                   "(faster on Ampere+, but not FP32-exact: /v1/conv would no "
                                                   "longer match TensorFlow's FP32 numbers)")
    cudnn_conv_algo_search: Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"] = Field(
        "EXHAUSTIVE", description="cuDNN convolution algorithm choice: EXHAUSTIVE (benchmark all, once per shape) "
                                  "| HEURISTIC | DEFAULT")

    # -- /v1/conv endpoints -----------------------------------------------------------------
    conv_max_elements: int = Field(16 * 1024 * 1024, description="largest input/filter/output tensor (elements)")
    conv_max_macs: int = Field(20_000_000_000, description="largest multiply-add count one request may cost")
    conv_max_list_elements: int = Field(
        1024 * 1024, description="most numbers a request may send, or get back, as nested JSON lists (a Python "
                                 "object each: far costlier than base64); larger tensors must use {shape, b64}")
    conv_max_output_elements: int = Field(4 * 1024 * 1024, description="largest /v1/conv output (elements, "
                                                                       "batch included), from declared shapes")
    conv_max_filter_elements: int = Field(4 * 1024 * 1024, description="largest filter of /v1/conv and "
                                                                       "/v1/profile/conv (elements)")
    conv_cache_size: int = Field(64, description="compiled single-op graphs kept (LRU)")

    # -- profiling --------------------------------------------------------------------------
    profile_max_runs: int = 500
    profile_max_batch: int = 64
    trace_dir: Path = Field(Path("traces"), description="where profile traces are kept for trace_url")
    profile_keep_traces: int = Field(20, description="newest traces kept in trace_dir (older ones deleted)")
    profile_max_warmup: int = Field(100, description="largest warm-up run count one profile may ask for")
    profile_max_gmacs: float = Field(2000.0, description="largest compute one profile may cost, in billions of "
                                                         "multiply-adds (per image x batch x all runs); 413 above")
    sweep_max_variants: int = Field(24, description="most variants one POST /v1/profile/sweep may measure (413 above)")
    sweep_cache_size: int = Field(16, description="built sweep variants kept in memory (LRU; never written into "
                                                  "the served repository)")
    job_keep_seconds: float = Field(600.0, description="how long a finished profile/sweep job's result is kept")

    # -- classification (/v1/models/{m}/classify) ----------------------------------------------
    classify_max_bytes: int = Field(20 * 1024 * 1024, description="largest image file accepted (413 above)")
    classify_max_pixels: int = Field(40_000_000, description="largest image, width x height, that is decoded; "
                                                             "checked on the file's header, before any pixel (413)")


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address, ``localhost``, or a ``Host`` header's name, brackets allowed) is this machine:
    127.0.0.0/8, ::1, or IPv4-mapped 127.x. The one check both transports and the start-up rule use."""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def host_of(header: str) -> str:
    """The name in a ``Host`` header, without its port (``[::1]:8000`` -> ``::1``)."""
    header = header.strip()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


def admin_problem(settings: Settings) -> str | None:
    """Why ``settings`` must not start a server (model control 'explicit' beyond loopback without a token)."""
    if settings.model_control == "explicit" and not settings.admin_token and not is_loopback(settings.host):
        return (f"--model-control explicit on {settings.host} (beyond loopback) needs SEPCONV_ADMIN_TOKEN: anyone "
                "who can reach the port could load and unload models")
    return None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
