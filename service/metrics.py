"""Prometheus metrics (``GET /metrics``): HTTP requests, per-model inference counts, latency, queue time,
batch sizes and model states. Registered once per process in the default registry."""

from __future__ import annotations

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


def render() -> tuple[bytes, str]:
    return generate_latest(), CONTENT_TYPE_LATEST
