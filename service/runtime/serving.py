"""What a loaded model needs to be served: a scheduler on the shared run executor, and its readiness gauge.

* :func:`make_executor` — the one thread pool that runs ``session.run`` for every model
  (``settings.run_threads``, or 2 per core between 4 and 32).
* :class:`ServingHook` — a :class:`~sepconv.service.registry.registry.ModelRegistryHook`: when a version loads
  it gets a :class:`~sepconv.service.runtime.scheduler.Scheduler` built from its config (``max_batch_size``,
  the ``dynamic_batching`` block, ``instance_group`` count or ``settings.batch_workers`` as concurrent runs,
  ``settings.adaptive_batching``), whose every ``session.run`` is recorded in the model's statistics and
  batch-size / compute-time metrics; ``sepconv_model_ready`` follows load and unload.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from sepconv.service.registry.model import LoadedModel
from sepconv.service.registry.registry import ModelRegistryHook
from sepconv.service.runtime.scheduler import Scheduler
from sepconv.service.settings import Settings


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
            adaptive=self.settings.adaptive_batching,
        )
        metrics.ready.set(1)

    def on_unload(self, model: LoadedModel) -> None:
        model.metrics.ready.set(0)
