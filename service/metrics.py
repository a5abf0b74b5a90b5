"""Prometheus metrics (``GET /metrics``): HTTP requests, per-model inference counts, latency, queue time,
batch sizes and model states. Registered once per process in the default registry.

Who records what: the REST middleware the ``sepconv_http_*`` series; the data plane every
``sepconv_inference_*`` series of a request (once per request, failures labelled by the error's type name,
e.g. ``InvalidInput``); the scheduler's execution callback the compute time and batch size per
``session.run``; the serving hook ``sepconv_model_ready``. :class:`ModelMetrics` holds one model version's
children, made once when it loads, so the hot path does no label lookups.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

_LAT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
_QUEUE_BUCKETS = (0.00001, 0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

HTTP_REQUESTS = Counter("sepconv_http_requests_total", "HTTP requests by route and status",
                        ["method", "route", "status"])
HTTP_LATENCY = Histogram("sepconv_http_request_duration_seconds", "HTTP request latency", ["method", "route"],
                         buckets=_LAT_BUCKETS)
INFER_REQUESTS = Counter("sepconv_inference_requests_total", "Inference requests", ["model", "version"])
INFER_FAILURES = Counter("sepconv_inference_failures_total", "Failed inference requests",
                         ["model", "version", "reason"])
INFER_LATENCY = Histogram("sepconv_inference_request_duration_seconds",
                          "Inference request time in the server (decode to encode)", ["model", "version"],
                          buckets=_LAT_BUCKETS)
INFER_QUEUE = Histogram("sepconv_inference_queue_duration_seconds", "Time a request waited in the batch queue",
                        ["model", "version"], buckets=_QUEUE_BUCKETS)
INFER_COMPUTE = Histogram("sepconv_inference_compute_duration_seconds", "session.run time per execution",
                          ["model", "version"], buckets=_LAT_BUCKETS)
BATCH_SIZE = Histogram("sepconv_inference_batch_size", "Batch size per session.run (after dynamic batching)",
                       ["model", "version"], buckets=_BATCH_BUCKETS)
MODEL_READY = Gauge("sepconv_model_ready", "1 when the model version is READY", ["model", "version"])


@dataclass(frozen=True)
class ModelMetrics:
    """The per-version children of the inference series (labels ``model``, ``version``)."""

    model: str
    version: str
    requests: Counter
    latency: Histogram
    queue: Histogram
    compute: Histogram
    batch_size: Histogram
    ready: Gauge

    @classmethod
    def of(cls, model: str, version: str) -> ModelMetrics:
        return cls(model, version, INFER_REQUESTS.labels(model, version), INFER_LATENCY.labels(model, version),
                   INFER_QUEUE.labels(model, version), INFER_COMPUTE.labels(model, version),
                   BATCH_SIZE.labels(model, version), MODEL_READY.labels(model, version))

    def failed(self, reason: str) -> None:
        """One failed request (it counts in ``sepconv_inference_requests_total`` too)."""
        self.requests.inc()
        INFER_FAILURES.labels(self.model, self.version, reason).inc()


def render() -> tuple[bytes, str]:
    return generate_latest(), CONTENT_TYPE_LATEST
