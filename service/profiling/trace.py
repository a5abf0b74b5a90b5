"""ONNX Runtime's Chrome-trace profile -> per-layer times, with runtime nodes mapped to exporter layers.

What ONNX Runtime 1.31 does to our graphs on CPU at ``ORT_ENABLE_ALL`` (seen in its traces and in the
optimised model it can write out):

* ``Conv`` + ``Clip``/``Relu`` fuse into one node named after the *activation* node plus ``_nchwc``
  (``Conv1_relu6_nchwc``), domain ``com.microsoft.nchwc``; a linear conv keeps its name (``block_1_project_nchwc``).
* A residual ``Add`` is folded into the conv producing one of its inputs (that conv gets a 4th "Sum" input);
  the ``Add`` node disappears from the trace.
* Conv weights are re-laid out and renamed (``reorder``, ``reorder_token_N``); biases keep the exporter's
  ``{layer}_B`` names unless ORT de-duplicated identical ones (e.g. all-zero biases of equal size);
  ``ReorderInput`` / ``ReorderOutput`` nodes convert between NCHW and NCHWc (e.g. around layers whose
  channel count is not a multiple of the NCHWc block), and a ``ReorderOutput`` may write a tensor
  named after a layer that was fused away (``block_2_add``).
* Each node's time is one ``cat: "Node"`` event ``{node}_kernel_time`` (``args.op_name``, ``args.provider``);
  each run is one ``cat: "Session"`` event ``model_run``.

Mapping rules, applied to every node of the runtime graph (first rule that answers wins):

1. an initializer input that belongs to exactly one exporter layer (``{layer}_W`` / ``{layer}_B``) -> that layer;
2. the node name, with ORT's suffixes (``_nchwc``, ``_fused``...) stripped step by step, is one of a
   layer's ONNX nodes -> that layer;
3. an output tensor is one the exporter's graph has -> the layer that produced it;
4. the longest layer name that prefixes the node name;
5. layout nodes ORT inserts (``ReorderInput``/``ReorderOutput``; they skip rules 1-4) and anything else
   left: the layer that produced their input; at the graph input, the layer that consumes their output;
6. trace nodes the runtime graph cannot name (ORT inlines function ops such as ``HardSwish`` into
   ``HardSigmoid`` + ``Mul`` even at ``ORT_DISABLE_ALL``, and the trace calls those unnamed nodes
   ``{op}_{index}``): the layer of the node that ran just before them (else just after) in the run.

A layer whose nodes all vanished into another layer's node (a fused ``Add``) gets time 0 and
``fused_into`` = the layer whose node now does its work.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

KERNEL_SUFFIX = "_kernel_time"
LAYOUT_OPS = frozenset({"ReorderInput", "ReorderOutput"})
# kernel-event args kept in the served trace (ORT's memory and thread-scheduling stats are dropped)
_KEPT_ARGS = frozenset({"op_name", "provider", "node_index", "input_type_shape", "output_type_shape",
                        "activation_size", "parameter_size", "output_size"})
_ORT_SUFFIXES = ("_nchwc", "_fused", "_token", "_ConvFusion", "_Fusion")


@dataclass
class NodeMapping:
    """Runtime node name -> exporter layer name, plus what could not be attributed."""

    node_layer: dict[str, str] = field(default_factory=dict)
    fused_into: dict[str, str] = field(default_factory=dict)
    unattributed: set[str] = field(default_factory=set)
    rules: dict[str, str] = field(default_factory=dict)  # node -> which rule mapped it (for the trace args)

    def layer_of(self, node: str) -> str | None:
        return self.node_layer.get(node)


class _ExporterIndex:
    """Lookups built from the exporter's (unoptimised) model and its layer table."""

    def __init__(self, original: onnx.ModelProto, layers: list[dict[str, Any]]) -> None:
        self.layer_names = [la["name"] for la in layers]
        self.order = {name: i for i, name in enumerate(self.layer_names)}
        self.by_node: dict[str, str] = {}
        for la in layers:
            for n in la.get("onnx_nodes") or [la["name"]]:
                self.by_node.setdefault(n, la["name"])
        self.by_tensor: dict[str, str] = {}
        self.node_layer: dict[str, str] = {}
        init_names = {t.name for t in original.graph.initializer}
        init_users: dict[str, set[str]] = defaultdict(set)
        self.inputs_of_layer: dict[str, list[str]] = defaultdict(list)
        for node in original.graph.node:
            layer = self.by_node.get(node.name) or next((self.by_node[o] for o in node.output if o in self.by_node),
                                                        None)
            if layer is None:
                continue
            self.node_layer[node.name] = layer
            for out in node.output:
                self.by_tensor[out] = layer
            for inp in node.input:
                if inp in init_names:
                    init_users[inp].add(layer)
                elif inp:
                    self.inputs_of_layer[layer].append(inp)
        self.by_init = {name: next(iter(users)) for name, users in init_users.items() if len(users) == 1}

    def by_name(self, name: str) -> str | None:
        candidate = name
        for _ in range(4):
            if candidate in self.by_node:
                return self.by_node[candidate]
            stripped = candidate
            for suffix in _ORT_SUFFIXES:
                if stripped.endswith(suffix):
                    stripped = stripped[: -len(suffix)]
            # ORT also appends a counter to names it had to make unique (``name_1``).
            head, _, tail = stripped.rpartition("_")
            if stripped == candidate and head and tail.isdigit() and head in self.by_node:
                return self.by_node[head]
            if stripped == candidate:
                return None
            candidate = stripped
        return None

    def by_prefix(self, name: str) -> str | None:
        best = None
        for layer in self.layer_names:
            if name.startswith(layer + "_") and (best is None or len(layer) > len(best)):
                best = layer
        return best


def map_nodes(original: onnx.ModelProto, layers: list[dict[str, Any]],
              runtime: onnx.ModelProto | None = None, extra_nodes: list[str] | None = None) -> NodeMapping:
    """Map every node of ``runtime`` (the optimised graph; the original when ``None``) to a layer.

    ``extra_nodes`` are runtime node names seen in a trace but absent from ``runtime`` (mapped by name only).
    """
    idx = _ExporterIndex(original, layers)
    graph = (runtime or original).graph
    result = NodeMapping()
    producer: dict[str, str] = {}
    consumers: dict[str, list[str]] = defaultdict(list)
    for node in graph.node:
        for out in node.output:
            producer[out] = node.name
        for inp in node.input:
            consumers[inp].append(node.name)

    pending: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type in LAYOUT_OPS:  # ORT's own layout changes: always rule 5
            pending.append(node)
            continue
        layer, rule = None, ""
        owners = {idx.by_init[i] for i in node.input if i in idx.by_init}
        if len(owners) == 1:
            layer, rule = owners.pop(), "weights"
        if layer is None:
            layer, rule = idx.by_name(node.name), "name"
        if layer is None:
            layer = next((idx.by_tensor[o] for o in node.output if o in idx.by_tensor), None)
            rule = "output"
        if layer is None:
            layer, rule = idx.by_prefix(node.name), "prefix"
        if layer is None:
            pending.append(node)
            continue
        result.node_layer[node.name] = layer
        result.rules[node.name] = rule

    # Rule 5: layout and helper nodes take the layer of their input's producer, else of their output's consumer.
    changed = True
    while pending and changed:
        changed = False
        for node in list(pending):
            layer = None
            for inp in node.input:
                src = producer.get(inp)
                if src is not None and src in result.node_layer:
                    layer = result.node_layer[src]
                    break
            if layer is None and not any(producer.get(i) for i in node.input):
                for out in node.output:
                    for dst in consumers.get(out, []):
                        if dst in result.node_layer:
                            layer = result.node_layer[dst]
                            break
                    if layer:
                        break
            if layer is not None:
                result.node_layer[node.name] = layer
                result.rules[node.name] = "adjacent"
                pending.remove(node)
                changed = True
    result.unattributed = {n.name for n in pending}

    for name in extra_nodes or []:
        if name not in result.node_layer:
            layer = idx.by_name(name) or idx.by_prefix(name)
            if layer is None:
                result.unattributed.add(name)
            else:
                result.node_layer[name] = layer
                result.rules[name] = "name"

    # Layers left without a runtime node were fused into another layer's node: the latest (in layer
    # order) layer producing one of their inputs that still has nodes of its own.
    mapped = set(result.node_layer.values())
    for layer in idx.layer_names:
        if layer in mapped:
            continue
        sources = [idx.by_tensor[t] for t in idx.inputs_of_layer.get(layer, []) if t in idx.by_tensor]
        sources = [s for s in sources if s in mapped and s != layer]
        if sources:
            result.fused_into[layer] = max(sources, key=lambda s: idx.order.get(s, -1))
    return result


# --------------------------------------------------------------------------------------------
# the trace file
# --------------------------------------------------------------------------------------------
def load_trace(path: str | Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if isinstance(data, dict):  # the object form of the Chrome trace format
        data = data.get("traceEvents", [])
    return [e for e in data if isinstance(e, dict)]


def kernel_node(event: dict[str, Any]) -> str | None:
    """The runtime node name of a kernel-time event, else ``None``."""
    if event.get("cat") != "Node":
        return None
    name = str(event.get("name", ""))
    return name[: -len(KERNEL_SUFFIX)] if name.endswith(KERNEL_SUFFIX) else None


def runs_of(events: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Per run (in order), each node's kernel time in microseconds (a node run twice is summed)."""
    windows = sorted((float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0)))
                     for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    runs: list[dict[str, float]] = [defaultdict(float) for _ in windows]
    starts = [w[0] for w in windows]
    for e in events:
        node = kernel_node(e)
        if node is None:
            continue
        ts = float(e.get("ts", 0))
        # the last run that started at or before this event
        lo, hi = 0, len(starts)
        while lo < hi:
            mid = (lo + hi) // 2
            if starts[mid] <= ts:
                lo = mid + 1
            else:
                hi = mid
        i = lo - 1
        if 0 <= i < len(runs) and ts <= windows[i][1]:
            runs[i][node] += float(e.get("dur", 0))
    return [dict(r) for r in runs]


def execution_order(events: list[dict[str, Any]]) -> list[str]:
    """Runtime node names in the order they ran during the last traced run."""
    runs = sorted((float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0)))
                  for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    if not runs:
        return []
    start, end = runs[-1]
    kernels = [(float(e.get("ts", 0)), kernel_node(e)) for e in events if kernel_node(e) is not None]
    return [name for ts, name in sorted(kernels) if start <= ts <= end]  # type: ignore[misc]


def attribute_by_order(mapping: NodeMapping, order: list[str]) -> None:
    """Rule 6: unmapped nodes take the layer of the node run just before them (or just after)."""
    last: str | None = None
    waiting: list[str] = []
    for node in order:
        layer = mapping.node_layer.get(node)
        if layer is None:
            if last is None:
                waiting.append(node)
            else:
                mapping.node_layer[node], mapping.rules[node] = last, "execution order"
                mapping.unattributed.discard(node)
            continue
        for w in waiting:
            mapping.node_layer[w], mapping.rules[w] = layer, "execution order"
            mapping.unattributed.discard(w)
        waiting.clear()
        last = layer


def run_walls(events: list[dict[str, Any]]) -> list[float]:
    """Wall time (us) of each traced run (``model_run`` events), in order."""
    return [float(e.get("dur", 0)) for e in sorted(
        (e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
        key=lambda e: float(e["ts"]))]


def node_providers(events: list[dict[str, Any]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for e in events:
        node = kernel_node(e)
        if node is not None:
            out.setdefault(node, str((e.get("args") or {}).get("provider", "")))
    return out


def layer_samples(runs: list[dict[str, float]], mapping: NodeMapping,
                  layer_names: list[str]) -> tuple[dict[str, list[float]], list[float]]:
    """Per layer, its time (us) in each run; plus the unattributed time per run."""
    per_layer = {name: [0.0] * len(runs) for name in layer_names}
    other = [0.0] * len(runs)
    for i, run in enumerate(runs):
        for node, dur in run.items():
            layer = mapping.layer_of(node)
            if layer in per_layer:
                per_layer[layer][i] += dur
            else:
                other[i] += dur
    return per_layer, other


def annotate(events: list[dict[str, Any]], mapping: NodeMapping, warmup_runs: int) -> list[dict[str, Any]]:
    """The trace to serve: kernel events carry ``args.layer``; warm-up runs are marked in their names."""
    out = []
    run_starts = sorted(float(e["ts"]) for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    warm_end = run_starts[warmup_runs] if warmup_runs < len(run_starts) else float("inf")
    for e in events:
        node = kernel_node(e)
        if node is not None:
            e = dict(e)
            args = {k: v for k, v in (e.get("args") or {}).items() if k in _KEPT_ARGS}
            args["layer"] = mapping.layer_of(node) or "(unattributed)"
            if node in mapping.rules:
                args["mapped_by"] = mapping.rules[node]
            e["args"] = args
        elif e.get("name") == "model_run" and float(e.get("ts", 0)) < warm_end:
            e = dict(e, name="model_run (warm-up)")
        out.append(e)
    return out
