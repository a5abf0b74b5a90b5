"""What a loaded model needs to be served: a scheduler on the shared run executor, and its readiness gauge.

* :func:`make_executor` — the one thread pool that runs ``session.run`` for every model
  (``settings.run_threads``, or 2 per core between 4 and 32).
* :class:`ServingHook` — a :class:`~sepconv.service.registry.registry.ModelRegistryHook`: when a version loads
  it gets a :class:`~sepconv.service.runtime.scheduler.Scheduler` built from its config (``max_batch_size``,
  the ``dynamic_batching`` block, ``instance_group`` count or ``settings.batch_workers`` as concurrent runs,
  ``settings.adaptive_batching``; lone requests on a second session with ORT's spinning on when
  ``settings.inline_spinning``, see below), whose every ``session.run`` is recorded in the model's statistics and
  batch-size / compute-time metrics; ``sepconv_model_ready`` follows load and unload.

Execution policy (CPU sessions), adaptive to load per request — what decides is the scheduler's ``alone``:

* a request the server handles alone (no other request, no run in progress anywhere) runs on the *lone* session:
  ORT's defaults, all cores per run and the intra-op threads spinning between parallel sections (with
  ``settings.inline_spinning``, the default; the main session when it is off). A lone client gets ORT-default
  latency.
* queued and batched requests (under concurrency) run on the *concurrent* session: with
  ``settings.concurrent_intra_op_threads`` = 1 (the default) each run is single-threaded and the model gets one
  concurrent run per core (:func:`~sepconv.service.runtime.sessions.default_instance_count`, when the config has no
  ``instance_group``): N runs side by side on N cores do more per second than N-threaded runs one after another
  (no barrier between an operator's parallel sections, no core idle in the serial ones), and with spinning
  off no thread burns a core the event loop needs. With 0 it is the main session (``intra_op_threads``, spinning
  off: ``settings.allow_spinning``).

GPU models, and CPU models whose ``intra_op_threads`` the operator set, keep one session for both. Cost: up to two
sessions per CPU model (weights and arena: ~2x the model's memory); where both exist the registry makes the lone
one itself (:meth:`ServingHook.session_settings`), so a load builds two sessions, not three. Measurements: README,
"Performance" (``bench/serve.py``).
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sepconv.service.registry.model import LoadedModel
from sepconv.service.registry.registry import ModelRegistryHook
from sepconv.service.runtime.scheduler import Scheduler
from sepconv.service.runtime.sessions import concurrent_threads, make_session, wants_gpu
from sepconv.service.settings import Settings

log = logging.getLogger("sepconv.runtime")


def make_executor(settings: Settings) -> ThreadPoolExecutor:
    threads = settings.run_threads or max(4, min(32, (os.cpu_count() or 2) * 2))
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ort-run")


def _spinning(session: Any) -> bool:
    """Whether ``session``'s intra-op threads spin (ORT's default; sessions set it explicitly)."""
    try:
        return session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") != "0"
    except Exception:  # noqa: BLE001 - the entry is not set: ORT's default, spinning
        return True


class ServingHook(ModelRegistryHook):
    def __init__(self, executor: ThreadPoolExecutor, settings: Settings) -> None:
        self.executor = executor
        self.settings = settings

    def on_load(self, model: LoadedModel) -> None:
        stats, metrics = model.stats, model.metrics
        batch_hist, compute_hist = metrics.batch_size, metrics.compute

        def on_execution(batch: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
            stats.record_execution(batch, input_ns, infer_ns, output_ns)
            batch_hist.observe(batch)
            compute_hist.observe(infer_ns / 1e9)

        lone, concurrent = self._extra_sessions(model)
        if lone is not None and concurrent is not None:
            model.session = lone  # the registry's session would serve nothing: free it
        model.scheduler = Scheduler(
            concurrent or model.session, [o.name for o in model.outputs], self.executor,
            max_batch_size=model.max_batch_size, batching=model.config.dynamic_batching,
            workers=self.settings.batch_workers or model.config.instance_count,
            on_execution=on_execution, label=f"{model.name}/{model.version}",
            adaptive=self.settings.adaptive_batching, inline_session=lone or model.session,
        )
        metrics.ready.set(1)

    def session_settings(self, settings: Settings, providers: list[str]) -> Settings:
        """A model that can only run on the CPU and gets a concurrent session (:meth:`_extra_sessions`) has the
        registry make its lone session (ORT's spinning, :meth:`_lone_settings`): the registry's session would
        serve nothing else, so this is one session build fewer per load."""
        if wants_gpu(providers) or not concurrent_threads(settings, False):
            return settings
        return self._lone_settings(settings) or settings

    @staticmethod
    def _lone_settings(settings: Settings) -> Settings | None:
        """The lone session's settings where they differ from ``settings`` (spinning on), else ``None``."""
        if settings.inline_spinning and not settings.allow_spinning:
            return settings.model_copy(update={"allow_spinning": True})
        return None

    def _extra_sessions(self, model: LoadedModel) -> tuple[Any, Any]:
        """(lone, concurrent): the sessions lone requests and queued/batched runs use where they differ from the
        registry's (CPU models, see the module docstring); ``None`` = the registry's session serves them. Made from
        the model's bytes as loaded, read once (the path only where the registry built from it). An optimisation
        only: a session that cannot be made leaves the registry's serving its requests, with a warning."""
        s = self.settings
        providers = model.session.get_providers()
        gpu = wants_gpu(providers)
        wanted: dict[str, tuple[Settings, int | None]] = {}
        lone = self._lone_settings(s)
        if lone is not None and not gpu and not _spinning(model.session):  # not already the registry's
            wanted["lone"] = (lone, None)
        threads = concurrent_threads(s, gpu)
        if threads:
            wanted["concurrent"] = (s, threads)
        made: dict[str, Any] = {}
        source: Any = None
        for role, (settings, intra_op_threads) in wanted.items():
            try:
                if source is None:
                    source = model.serialized() if model.sha256 else model.path
                made[role] = make_session(source, settings, providers=providers, intra_op_threads=intra_op_threads)
            except Exception:  # noqa: BLE001 - see the docstring
                log.warning("model %s/%s: no %s session; the main session serves those requests", model.name,
                            model.version, role, exc_info=True)
        return made.get("lone"), made.get("concurrent")

    def on_unload(self, model: LoadedModel) -> None:
        model.metrics.ready.set(0)
