"""Per-layer times by running each exporter layer on its own (the CUDA method; also works on CPU).

ONNX Runtime's per-node trace times on CUDA are kernel *launch* times: the work runs asynchronously
on the GPU stream. So on CUDA each layer is cut out of the unoptimised graph as its own small model
(its nodes, its weights; its inputs/outputs typed from shape inference), its inputs are put on the
device once with I/O binding, and each timed run is ``run_with_iobinding`` + output synchronisation.
The fixed cost of one synchronised run (launch + sync, measured on a one-element graph the same way)
is subtracted, so the rest is the layer's GPU execution time. Layers are timed in network order with
every layer's runs back to back, and ONNX Runtime still optimises inside a layer (``fused: true``:
Conv+BN+activation fuse), but not across layers (a residual ``Add`` is timed as its own layer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import onnx
from onnx import TensorProto, helper

from sepconv.service.profiling.sessions import SessionSpec, random_feeds
from sepconv.service.profiling.timing import BoundRun


@dataclass
class LayerGraph:
    name: str
    model: onnx.ModelProto | None  # None: the layer has no nodes of its own (nothing to time)
    nodes: list[str]


def _value_infos(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    g = model.graph
    return {v.name: v for v in (*g.input, *g.value_info, *g.output)}


def layer_graphs(model: onnx.ModelProto, layers: list[dict[str, Any]]) -> list[LayerGraph]:
    """Each layer of ``layers`` as a standalone model (same opset and IR version as ``model``)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 - the exporter's models are already inferred
        inferred = model
    g = inferred.graph
    infos = _value_infos(inferred)
    inits = {t.name: t for t in g.initializer}
    by_node: dict[str, str] = {}
    for la in layers:
        for n in la.get("onnx_nodes") or [la["name"]]:
            by_node.setdefault(n, la["name"])
    members: dict[str, list[onnx.NodeProto]] = {la["name"]: [] for la in layers}
    for node in g.node:
        layer = by_node.get(node.name) or next((by_node[o] for o in node.output if o in by_node), None)
        if layer in members:
            members[layer].append(node)
    consumed_by: dict[str, set[str]] = {}
    for node in g.node:
        for inp in node.input:
            consumed_by.setdefault(inp, set()).add(node.name)
    graph_outputs = {o.name for o in g.output}

    out: list[LayerGraph] = []
    for la in layers:
        nodes = members[la["name"]]
        if not nodes:
            out.append(LayerGraph(la["name"], None, []))
            continue
        names = {n.name for n in nodes}
        produced = {o for n in nodes for o in n.output}
        ins: list[str] = []
        used_inits: list[TensorProto] = []
        for n in nodes:
            for i in n.input:
                if not i or i in produced:
                    continue
                if i in inits:
                    if all(t.name != i for t in used_inits):
                        used_inits.append(inits[i])
                elif i not in ins:
                    ins.append(i)
        outs = [o for n in nodes for o in n.output
                if o in graph_outputs or (consumed_by.get(o, set()) - names)]
        if not outs:
            outs = [nodes[-1].output[0]]
        if any(i not in infos for i in ins) or any(o not in infos for o in outs):
            out.append(LayerGraph(la["name"], None, [n.name for n in nodes]))
            continue
        graph = helper.make_graph(nodes, f"layer_{la['name']}", [infos[i] for i in ins], [infos[o] for o in outs],
                                  used_inits)
        sub = helper.make_model(graph, opset_imports=list(model.opset_import))
        sub.ir_version = model.ir_version
        out.append(LayerGraph(la["name"], sub, [n.name for n in nodes]))
    return out


def feed_shapes(sub: onnx.ModelProto, batch: int) -> dict[str, list[int]]:
    """Concrete input shapes for a layer graph: symbolic (batch) dims become ``batch``."""
    shapes = {}
    for v in sub.graph.input:
        dims = v.type.tensor_type.shape.dim
        shapes[v.name] = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else batch for d in dims]
    return shapes


def overhead_model(opset_imports: list[onnx.OperatorSetIdProto], ir_version: int) -> onnx.ModelProto:
    """A one-element graph: what a synchronised run costs with (almost) no work in it."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "overhead", [x], [y])
    model = helper.make_model(graph, opset_imports=opset_imports)
    model.ir_version = ir_version
    return model


def time_layers(graphs: list[LayerGraph], spec: SessionSpec, batch: int, runs: int,
                warmup: int) -> tuple[dict[str, list[float]], list[float]]:
    """Per layer, ``runs`` device-synchronised times (us) with the launch+sync overhead removed (each layer
    graph in its own session made by ``spec``); plus the overhead samples themselves."""
    first = next((lg.model for lg in graphs if lg.model is not None), None)
    overhead: list[float] = [0.0]
    if first is not None:
        session = spec.open(overhead_model(list(first.opset_import), first.ir_version).SerializeToString())
        overhead = BoundRun.create(session, random_feeds(session, 1)).time(runs, warmup)
    base = sorted(overhead)[len(overhead) // 2]
    times: dict[str, list[float]] = {}
    for lg in graphs:
        if lg.model is None:
            times[lg.name] = [0.0] * runs
            continue
        session = spec.open(lg.model.SerializeToString())
        feeds = random_feeds(session, batch, shapes=feed_shapes(lg.model, batch))
        samples = BoundRun.create(session, feeds).time(runs, warmup)
        times[lg.name] = [max(t - base, 0.0) for t in samples]
        del session
    return times, overhead
