"""The ``/v1/conv/{op}`` engine: a validated :class:`~sepconv.service.conv.request.ConvCall` -> graph -> session ->
response bytes.

:meth:`ConvEngine.handle` runs after the body is read (in a worker thread):

1. :func:`sepconv.service.conv.request.read` — the body validated once, limits from declared shapes (404/400/413/422);
2. the graph for the call's :class:`~sepconv.export.single_op.ConvKey` (the cached one, else
   :func:`sepconv.export.single_op.build`; a shape the exporter refuses is a 422) and
   :func:`~sepconv.service.conv.request.check_work` on its accounting (413) — no session is built before it passes;
3. the tensors decoded (:mod:`sepconv.service.conv.codec`), the session taken from the cache or compiled
   (:func:`sepconv.service.runtime.make_session`), one ``session.run``;
   At most :data:`WORK_SLOTS` outputs of the largest size are computed at once (the elements of the calls
   running are counted); past that, 503 with ``Retry-After`` (a lone call always runs);
4. the response: ``output`` in the input's encoding, ``shape``, ``params``, ``macs``, ``standard_conv_macs``,
   ``cost_ratio``, ``provider``, ``elapsed_ms`` (DESIGN.md), plus ``op``, ``batch_macs`` and ``cached``.
   ``macs`` and ``standard_conv_macs`` are per image (``batch_macs`` for the whole batch).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import orjson

from sepconv.export import single_op
from sepconv.export.errors import ExportError
from sepconv.export.single_op import ConvGraph, ConvKey
from sepconv.service.conv import codec
from sepconv.service.conv.cache import CompiledConv, ConvCache
from sepconv.service.conv.request import ConvCall, check_work, read
from sepconv.service.errors import Overloaded, Unprocessable
from sepconv.service.runtime.sessions import make_session
from sepconv.service.settings import Settings

WORK_SLOTS = 4  # largest outputs (conv_max_output_elements) computed at once


class ConvEngine:
    """Runs ``/v1/conv`` calls for one server: its settings (limits, session options) and its session cache."""

    def __init__(self, settings: Settings, cache: ConvCache | None = None) -> None:
        self.settings = settings
        self.cache = cache if cache is not None else ConvCache(settings.conv_cache_size)
        self.work_budget = WORK_SLOTS * settings.conv_max_output_elements
        self.work_in_flight = 0
        self._work_lock = threading.Lock()

    def handle(self, op: str, body: bytes) -> bytes:
        """The JSON response for ``body`` (the request's bytes) sent to ``/v1/conv/{op}``."""
        call = read(op, body, self.settings)
        graph = self._graph_for(call.key)
        check_work(graph, call, self.settings)
        cost = graph.max_activation_elements * call.batch
        with self._work_lock:
            if self.work_in_flight and self.work_in_flight + cost > self.work_budget:
                raise Overloaded(f"/v1/conv is computing {self.work_in_flight} output elements already "
                                 f"(at most {self.work_budget} at once); retry shortly")
            self.work_in_flight += cost
        try:
            return orjson.dumps(self.run(call, graph))
        finally:
            with self._work_lock:
                self.work_in_flight -= cost

    def run(self, call: ConvCall, graph: ConvGraph) -> dict[str, Any]:
        """Decode, run ``graph``'s session (compiled on a cache miss) and build the response object."""
        feeds = {name: codec.decode(ref) for name, ref in call.tensors.items()}
        compiled, was_cached = self.cache.get_or_build(call.key, lambda: self._compile(graph))
        start = time.perf_counter()
        (output,) = compiled.session.run(["output"], feeds)
        elapsed_ms = (time.perf_counter() - start) * 1e3
        return {
            "output": codec.encode(output, call.output_encoding),
            "shape": list(output.shape),
            "params": graph.params,
            "macs": graph.macs,
            "standard_conv_macs": graph.standard_conv_macs,
            "cost_ratio": graph.cost_ratio,
            "provider": compiled.provider,
            "elapsed_ms": round(elapsed_ms, 4),
            "op": call.key.op,
            "batch_macs": graph.macs * call.batch,
            "cached": was_cached,
        }

    def _graph_for(self, key: ConvKey) -> ConvGraph:
        cached = self.cache.get(key)
        if cached is not None:
            return cached.graph
        try:
            return single_op.build(key)
        except ExportError as exc:
            raise Unprocessable(str(exc)) from None

    def _compile(self, graph: ConvGraph) -> CompiledConv:
        session = make_session(graph.to_onnx().SerializeToString(), self.settings,
                               providers=list(graph.key.providers))  # resolved once, by the request's plan
        return CompiledConv(graph=graph, session=session, provider=session.get_providers()[0])
