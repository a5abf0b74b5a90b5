"""The data plane: everything the KServe V2 protocol and Triton's extensions do, for every transport.

A transport (REST today: :mod:`sepconv.service.rest.v2`) turns its wire format into these calls and their
results back into its wire format; status codes and headers are its business, never this module's. Errors are
the typed ones of :mod:`sepconv.service.errors`.

* health and metadata: :meth:`DataPlane.live`, :meth:`~DataPlane.ready`, :meth:`~DataPlane.server_metadata`,
  :meth:`~DataPlane.model_metadata`, :meth:`~DataPlane.model_ready`, :meth:`~DataPlane.model_config`,
  :meth:`~DataPlane.statistics`;
* :meth:`~DataPlane.infer` — one request: model lookup, decode (the transport's), input checks
  (:mod:`.inputs`), the model's scheduler (which calls ``session.run``), Triton's classification extension on the
  outputs that ask for it (:mod:`.classification`), encode (the transport's). Its time,
  Triton's statistics and the Prometheus series are recorded once, in :meth:`~DataPlane._accounting`
  (failures labelled by the error's type name);
* the repository extension: :meth:`~DataPlane.repository_index`, :meth:`~DataPlane.load`,
  :meth:`~DataPlane.unload`; these and log-setting changes are guarded by :meth:`~DataPlane.authorize` (model
  control as Triton's ``--model-control-mode``: ``none`` refuses them, ``explicit`` wants the admin token when
  one is set; cross-origin browser requests are refused either way). Config overrides are bounded
  (:meth:`~DataPlane._check_override`);
* Triton's logging extension (:meth:`~DataPlane.log_settings`, :meth:`~DataPlane.set_log_settings`) and the
  answers for the extensions this server does not offer (trace, CUDA shared memory), so that unmodified clients
  work;
* Triton's system shared-memory extension: the registry of regions (:attr:`DataPlane.shm`,
  :mod:`.shm`) both transports decode inputs from; :meth:`~DataPlane.infer` writes the outputs asked for in a
  region (:meth:`~DataPlane.register_shared_memory`, :meth:`~DataPlane.unregister_shared_memory`,
  :meth:`~DataPlane.shared_memory_status`; ``settings.shared_memory`` says who may register). :meth:`close`
  unregisters every region (server shutdown).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from sepconv import __version__
from sepconv.export.repository.layout import is_internal_key
from sepconv.service.dataplane.classification import classify
from sepconv.service.dataplane.inputs import feed_for, wanted_outputs
from sepconv.service.dataplane.shm import SharedMemoryRegistry
from sepconv.service.dataplane.tensors import tensor_bytes
from sepconv.service.dataplane.types import InferCall, InferRequest, InferResponse, OutputTensor
from sepconv.service.errors import (
    InvalidInput,
    ModelNotReady,
    NotFound,
    NotSupported,
    PermissionDenied,
    ServiceError,
    Unauthenticated,
)
from sepconv.service.registry.model import LoadedModel
from sepconv.service.registry.model_config import ConfigError, config_from_json
from sepconv.service.registry.registry import ModelRegistry
from sepconv.service.registry.scan import check_name
from sepconv.service.runtime.scheduler import Job
from sepconv.service.settings import Settings

R = TypeVar("R")

EXTENSIONS = ["classification", "binary_tensor_data", "model_configuration", "model_repository",
              "model_repository(unload_dependents)", "statistics", "logging", "system_shared_memory"]

_LOG_KEYS = frozenset({"log_file", "log_info", "log_warning", "log_error", "log_verbose_level", "log_format"})

TRACE_OFF = {"trace_level": ["OFF"], "trace_rate": "1000", "trace_count": "-1", "log_frequency": "0",
             "trace_file": "", "trace_mode": "triton"}


@dataclass
class ModelReadiness:
    name: str
    version: str | None
    ready: bool
    reason: str = ""


class _Timing:
    """What :meth:`DataPlane.infer` tells its accounting: the finished job, and when encoding began."""

    __slots__ = ("encode_ns", "job")

    def __init__(self) -> None:
        self.job: Job | None = None
        self.encode_ns = 0


def _classified(model: LoadedModel, request: InferRequest, outputs: list[OutputTensor]) -> list[OutputTensor]:
    """The outputs requested with ``classification: K`` replaced by their top-K strings (always BYTES)."""
    counts = {o.name: o.classification for o in request.outputs or () if o.classification}
    batched = model.max_batch_size > 0
    return [OutputTensor(o.name, "BYTES", classify(o.array, o.datatype, counts[o.name], model.labels.get(o.name),
                                                   batched), o.binary)
            if o.name in counts else o for o in outputs]


class DataPlane:
    def __init__(self, settings: Settings, registry: ModelRegistry) -> None:
        self.settings = settings
        self.registry = registry
        self.started = False  # start-up (loading the repository) is done
        self.stopping = False  # shutdown began: not ready any more
        self.shm = SharedMemoryRegistry()

    # -- health and server metadata --------------------------------------------------------------
    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        """Start-up done and not shutting down; with ``strict_readiness`` also every model loaded."""
        ok = self.started and not self.stopping
        if ok and self.settings.strict_readiness:
            ok = self.registry.all_ready()
        return ok

    def server_metadata(self) -> dict[str, Any]:
        return {"name": "sepconv", "version": __version__, "extensions": EXTENSIONS}

    # -- models ------------------------------------------------------------------------------------
    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        model = self.registry.get(name, version)
        return {
            "name": model.name,
            "versions": self.registry.ready_versions(model.name) or [model.version],
            "platform": model.config.platform,
            "inputs": [{"name": t.name, "datatype": t.datatype, "shape": t.shape} for t in model.inputs],
            "outputs": [{"name": t.name, "datatype": t.datatype, "shape": t.shape} for t in model.outputs],
            "parameters": {
                "version": model.version,
                "max_batch_size": model.max_batch_size,
                "execution_providers": model.providers,
                "requested_providers": model.requested_providers,
                # the exporter's bulky keys (per-layer summary, export key) stay out: /v1/models/{m}/summary serves them
                "onnx_metadata": {k: v for k, v in model.metadata.items() if not is_internal_key(k)},
            },
        }

    def model_ready(self, name: str, version: str | None = None) -> ModelReadiness:
        """Whether the model (version) is READY; an unknown one raises ``ModelNotFound`` / ``NotFound``."""
        try:
            model = self.registry.get(name, version)
        except ModelNotReady as exc:
            return ModelReadiness(name, version, False, exc.message)
        return ModelReadiness(name, model.version, True)

    def model_config(self, name: str, version: str | None = None) -> dict[str, Any]:
        model = self.registry.get(name, version)
        return model.config.to_json(model.providers)

    def statistics(self, name: str | None = None, version: str | None = None) -> dict[str, Any]:
        """Triton's statistics of every loaded version, of one model's, or of one version."""
        if name is None:
            models = self.registry.loaded()
        elif version is None:
            self.registry.get(name)  # unknown / not ready raise as for any model route
            models = [m for m in self.registry.loaded() if m.name == name]
        else:
            models = [self.registry.get(name, version)]
        return {"model_stats": [m.stats.as_dict(m.name, m.version) for m in models]}

    # -- inference ---------------------------------------------------------------------------------
    async def infer(self, name: str, version: str | None, call: InferCall[R], *, alone: bool = False) -> R:
        """One inference: ``call.decode()`` -> input checks -> the model's scheduler (``session.run``) ->
        ``call.encode(response)``. ``alone`` = the transport handles no other request now (the scheduler may
        then run it inline, see :mod:`sepconv.service.runtime.scheduler`)."""
        start = time.perf_counter_ns()
        model = self.registry.get(name, version)  # an unknown model is refused before its body is read
        with self._accounting(model, start) as timing:
            request = await call.decode()
            # the body may have taken a while to arrive: a reload meanwhile retired ``model``, so ask again
            model = self.registry.get(name, version)
            feed, batch = feed_for(model, request)
            wanted = wanted_outputs(model, request)
            if model.scheduler is None:
                raise ModelNotReady(f"model {model.name!r} version {model.version} has no scheduler")
            job = await model.scheduler.submit(feed, [spec.name for spec, _ in wanted], batch, alone=alone)
            timing.job = job
            timing.encode_ns = time.perf_counter_ns()
            result = job.result or {}
            outputs = [OutputTensor(spec.name, spec.datatype, result[spec.name], binary) for spec, binary in wanted]
            if request.outputs:
                if any(o.classification for o in request.outputs):
                    outputs = _classified(model, request, outputs)
                if any(o.shm is not None for o in request.outputs):
                    outputs = self._to_shared_memory(request, outputs)
            return call.encode(InferResponse(model.name, model.version, request.id, outputs))

    def _to_shared_memory(self, request: InferRequest, outputs: list[OutputTensor]) -> list[OutputTensor]:
        """Write the outputs asked for in shared memory into their regions; those carry no data onwards."""
        refs = {o.name: o.shm for o in request.outputs or () if o.shm is not None}
        for out in outputs:
            ref = refs.get(out.name)
            if ref is not None:
                self.shm.write(ref, tensor_bytes(out.array, out.datatype), f"output {out.name!r}")
                out.shm = ref
        return outputs

    @contextmanager
    def _accounting(self, model: LoadedModel, start: int) -> Iterator[_Timing]:
        """Records one request of ``model`` (started at ``start``, ``perf_counter_ns``), whatever it ends in:
        success -> Triton's durations (queue, compute; encoding counts as output time) and the latency and
        queue histograms; a typed error -> a failure, labelled by the error's type name."""
        timing = _Timing()
        try:
            yield timing
        except ServiceError as exc:
            model.stats.record_request(False, time.perf_counter_ns() - start)
            model.metrics.failed(type(exc).__name__)
            raise
        end = time.perf_counter_ns()
        job = timing.job
        if job is None:
            return
        model.stats.record_request(True, end - start, job.queue_ns, job.input_ns, job.infer_ns,
                                   job.output_ns + (end - timing.encode_ns))
        metrics = model.metrics
        metrics.requests.inc()
        metrics.latency.observe((end - start) / 1e9)
        metrics.queue.observe(job.queue_ns / 1e9)

    # -- repository ----------------------------------------------------------------------------------
    def authorize(self, token: str | None, *, loopback_host: bool = True) -> None:
        """The admin check for state-changing calls (repository load/unload, log settings): refused with model
        control ``none``; with ``explicit``, ``token`` (the bearer token the client sent, ``None`` when it sent
        none) must match ``settings.admin_token`` when one is set. Without one the server listens on loopback only
        (:func:`~sepconv.service.settings.admin_problem`), and the request must name this machine
        (``loopback_host``, the transport's judgement of the ``Host`` it was sent to): a web page that rebinds its
        own DNS name to 127.0.0.1 names its own host. (Cross-origin browser requests never get here: the REST
        middleware refuses every state-changing one.)"""
        if self.settings.model_control != "explicit":
            raise PermissionDenied("model control is 'none': repository load/unload and log changes are off; "
                                   "start the server with --model-control explicit (SEPCONV_MODEL_CONTROL) "
                                   "and SEPCONV_ADMIN_TOKEN to allow them")
        expected = self.settings.admin_token
        if not expected:
            if not loopback_host:
                raise PermissionDenied("without SEPCONV_ADMIN_TOKEN, repository and log changes must be sent to this "
                                       "machine by a loopback name (127.0.0.1, localhost, [::1])")
            return
        if token is None:
            raise Unauthenticated("this repository operation needs an 'Authorization: Bearer <token>' header")
        if not hmac.compare_digest(token.encode(), expected.encode()):
            raise PermissionDenied("the bearer token is not valid")

    def repository_index(self, ready: Any = False) -> list[dict[str, Any]]:
        if not isinstance(ready, bool):
            raise InvalidInput("'ready' must be true or false")
        return self.registry.index(ready_only=ready)

    async def load(self, name: str, parameters: Any = None) -> None:
        """(Re)load ``name``; ``parameters`` as Triton's load request has them (``config``: a JSON config
        that overrides config.pbtxt; ``file:*`` uploads are not supported). Loading runs in a thread."""
        check_name(name)
        params = parameters or {}
        if not isinstance(params, dict):
            raise InvalidInput("'parameters' must be an object")
        if any(k.startswith("file:") for k in params):
            raise NotSupported("loading a model from uploaded files is not supported; put it in the repository")
        override = None
        if "config" in params:
            raw = params["config"]
            try:
                obj = orjson.loads(raw) if isinstance(raw, str | bytes) else raw
                override = config_from_json(obj, name)
            except (orjson.JSONDecodeError, ConfigError) as exc:
                raise InvalidInput(f"invalid 'config' parameter: {exc}") from exc
            self._check_override(override)
        await asyncio.to_thread(self.registry.load, name, override)

    def _check_override(self, config: Any) -> None:
        """A load request's config override may not set what would stall or exhaust the server."""
        s = self.settings
        batching = config.dynamic_batching
        delay = batching.max_queue_delay_microseconds if batching is not None else 0
        if delay > s.max_override_queue_delay_us:
            raise InvalidInput(f"invalid 'config' parameter: max_queue_delay_microseconds {delay} is over "
                               f"{s.max_override_queue_delay_us} (SEPCONV_MAX_OVERRIDE_QUEUE_DELAY_US)")
        count = sum(g.count for g in config.instance_groups)
        if count > s.max_override_instances:
            raise InvalidInput(f"invalid 'config' parameter: {count} instances is over "
                               f"{s.max_override_instances} (SEPCONV_MAX_OVERRIDE_INSTANCES)")
        if (config.max_batch_size or 0) > s.max_override_batch_size:
            raise InvalidInput(f"invalid 'config' parameter: max_batch_size {config.max_batch_size} is over "
                               f"{s.max_override_batch_size} (SEPCONV_MAX_OVERRIDE_BATCH_SIZE)")

    async def unload(self, name: str) -> None:
        check_name(name)
        await asyncio.to_thread(self.registry.unload, name)

    # -- logging, trace, shared memory -------------------------------------------------------------------
    def log_settings(self) -> dict[str, Any]:
        level = logging.getLogger("sepconv").getEffectiveLevel()
        return {
            "log_file": "",
            "log_info": level <= logging.INFO,
            "log_warning": level <= logging.WARNING,
            "log_error": level <= logging.ERROR,
            "log_verbose_level": 1 if level <= logging.DEBUG else 0,
            "log_format": "default",
        }

    def set_log_settings(self, changes: dict[str, Any]) -> dict[str, Any]:
        unknown = set(changes) - _LOG_KEYS
        if unknown:
            raise InvalidInput(f"unknown log setting(s): {', '.join(sorted(unknown))}")
        if changes.get("log_file"):
            raise InvalidInput("log_file cannot be changed at run time")
        for key in ("log_info", "log_warning", "log_error"):
            if key in changes and not isinstance(changes[key], bool):
                raise InvalidInput(f"{key} must be true or false")
        verbose = changes.get("log_verbose_level", 0)
        if not isinstance(verbose, int) or isinstance(verbose, bool) or verbose < 0:
            raise InvalidInput("log_verbose_level must be a non-negative integer")
        if verbose > 0:
            level = logging.DEBUG
        elif changes.get("log_info", True):
            level = logging.INFO
        elif changes.get("log_warning", True):
            level = logging.WARNING
        else:
            level = logging.ERROR
        logging.getLogger("sepconv").setLevel(level)
        return self.log_settings()

    def trace_settings(self, name: str | None = None) -> dict[str, Any]:
        """Tracing is not offered: the settings always say OFF (a model's must exist)."""
        if name is not None:
            self.registry.get(name)
        return TRACE_OFF

    def set_trace_settings(self, changes: dict[str, Any], name: str | None = None) -> dict[str, Any]:
        if name is not None:
            self.registry.get(name)
        if changes.get("trace_level") not in (None, ["OFF"], "OFF", []):
            raise NotSupported("tracing is not supported by this server (trace_level can only be OFF); "
                               "use POST /v1/models/{m}/profile for per-layer timings")
        return TRACE_OFF

    # -- shared memory ---------------------------------------------------------------------------------
    def shared_memory_status(self, region: str | None = None, *, cuda: bool = False) -> list[dict[str, Any]]:
        """The registered system regions (all, or one: an unknown name is ``NotFound``); CUDA: none."""
        if cuda:
            if region:
                raise NotFound(f"Unable to find cuda shared memory region: {region!r} (CUDA shared memory is not "
                               "supported by this server)")
            return []
        return self.shm.status(region or None)

    def register_shared_memory(self, name: Any, key: Any, offset: Any, byte_size: Any, *, local: bool,
                               cuda: bool = False) -> None:
        """Register a system region (``local``: the client is on this host, the transport's judgement)."""
        if cuda:
            raise NotSupported("CUDA shared memory is not supported by this server; use system shared memory")
        mode = self.settings.shared_memory
        if mode == "off":
            raise NotSupported("system shared memory is turned off on this server (SEPCONV_SHARED_MEMORY=off)")
        if mode == "local" and not local:
            raise PermissionDenied("only clients on this server's host may register shared memory "
                                   "(SEPCONV_SHARED_MEMORY=local)")
        self.shm.register(name, key, offset, byte_size)

    def unregister_shared_memory(self, name: str | None = None, *, cuda: bool = False) -> None:
        """Unregister one region, or all with ``None`` (an unknown name is no error, as in Triton)."""
        if not cuda:
            self.shm.unregister(name or None)

    def close(self) -> None:
        """Server shutdown: every shared-memory region is unregistered."""
        self.shm.close()
