"""Per-layer profiling of a loaded model (``POST /v1/models/{m}/profile``) and the convolution comparison
(``POST /v1/profile/conv``), measured in sessions of their own, never the serving one.

A request goes route -> :mod:`.request` (the body validated ONCE into a plan) -> an engine. Dependencies point
one way:

* :mod:`.request` — the pydantic bodies and their plans (:class:`~.request.ProfilePlan`,
  :class:`~.request.ConvProfilePlan`), every bound and budget checked there;
* :mod:`.sessions` — the one place profiling sessions are made (provider, threads, graph optimisation);
* :mod:`.timing` — device-bound synchronised runs and the p50/p90 summary of samples;
* :mod:`.layers` — the layer table a profile reports against (exporter summary or graph);
* :mod:`.trace` — ORT's Chrome trace -> per-layer times (``method: trace``);
* :mod:`.isolated` — each layer as its own graph (``method: isolated``);
* :mod:`.engine` — a model profile: sessions, per-layer method, end-to-end timing, the report;
* :mod:`.conv` — the four single-layer variants of ``/v1/profile/conv``;
* :mod:`.gate` — one profile at a time per server, and the kept traces.

The HTTP routes are :mod:`sepconv.service.rest.profiling`.
"""
