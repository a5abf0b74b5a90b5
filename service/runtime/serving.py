"""What a loaded model needs to be served: a scheduler on the shared run executor, and its readiness gauge.

* :func:`make_executor` — the one thread pool that runs ``session.run`` for every model
  (``settings.run_threads``, or 2 per core between 4 and 32).
* :class:`ServingHook` — a :class:`~sepconv.service.registry.registry.ModelRegistryHook`: when a version loads
  it gets a :class:`~sepconv.service.runtime.scheduler.Scheduler` built from its config (``max_batch_size``,
  the ``dynamic_batching`` block, ``instance_group`` count or ``settings.batch_workers`` as concurrent runs,
  ``settings.adaptive_batching``; lone requests on a second session with ORT's spinning on when
  ``settings.inline_spinning``, see below), whose every ``session.run`` is recorded in the model's statistics and
  batch-size / compute-time metrics; ``sepconv_model_ready`` follows load and unload.

Spinning policy (CPU sessions): ORT's intra-op threads busy-wait between parallel sections by default; that makes
one ``session.run`` fastest (~2 ms of MobileNet's ~4-7 ms on a small CPU) but burns the cores other work needs
(the event loop reading the next request, concurrent runs). The main session is made with spinning off
(``settings.allow_spinning``); with ``settings.inline_spinning`` (default) a second session of the same model, with
spinning on, serves the scheduler's inline path only — a request the server handles alone, with no run in
progress anywhere — so a lone client gets ORT-default speed while concurrent requests (queued, batched, in the
pool) run on the non-spinning session. Adaptive to load, per request: what decides is the scheduler's ``alone``.
Cost: a second session per model (its weights and arena: ~2x the model's memory).
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sepconv.service.registry.model import LoadedModel
from sepconv.service.registry.registry import ModelRegistryHook
from sepconv.service.runtime.scheduler import Scheduler
from sepconv.service.runtime.sessions import make_session, wants_gpu
from sepconv.service.settings import Settings

log = logging.getLogger("sepconv.runtime")


def make_executor(settings: Settings) -> ThreadPoolExecutor:
    threads = settings.run_threads or max(4, min(32, (os.cpu_count() or 2) * 2))
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ort-run")


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

        model.scheduler = Scheduler(
            model.session, [o.name for o in model.outputs], self.executor,
            max_batch_size=model.max_batch_size, batching=model.config.dynamic_batching,
            workers=self.settings.batch_workers or model.config.instance_count,
            on_execution=on_execution, label=f"{model.name}/{model.version}",
            adaptive=self.settings.adaptive_batching, inline_session=self._spinning_session(model),
        )
        metrics.ready.set(1)

    def _spinning_session(self, model: LoadedModel) -> Any:
        """The session lone requests run on (``settings.inline_spinning``): the model's own with ORT's default
        spinning on, for CPU sessions made with spinning off; ``None`` (the main session) otherwise."""
        s = self.settings
        if s.allow_spinning or not s.inline_spinning or wants_gpu(model.session.get_providers()):
            return None
        try:
            # the same graph as the main session: its bytes as loaded (the path only where the registry built from it)
            source = model.serialized() if model.sha256 else model.path
            return make_session(source, s.model_copy(update={"allow_spinning": True}),
                                providers=model.session.get_providers())
        except Exception:  # noqa: BLE001 - an optimisation only: the main session serves lone requests too
            log.warning("model %s/%s: no spinning session for lone requests", model.name, model.version,
                        exc_info=True)
            return None

    def on_unload(self, model: LoadedModel) -> None:
        model.metrics.ready.set(0)
