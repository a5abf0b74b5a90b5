"""The layer table a profile reports against: the exporter's layers, or layers read off the graph.

A model exported by sepconv carries its summary in the ONNX metadata (``MetaKey.SUMMARY``, ``sepconv.summary``:
the ``sepconv summary --json`` object, each layer with ``onnx_nodes`` = the ONNX node names that make it).
A model from elsewhere has no such entry; then every ONNX node becomes one "layer" with its kind (one of
:data:`sepconv.export.graph.KINDS`), params and multiply-adds worked out from the graph (``source: "graph"``),
so it can still be profiled. :func:`summary_of` is what ``GET /v1/models/{m}/summary`` serves, with the model's
``precision`` (``fp32`` when the metadata says nothing) and, for a fp16 / int8 export, its ``drift`` report.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from sepconv.export.repository.layout import MetaKey


def _parse_summary(raw: str | None) -> dict[str, Any] | None:
    """The exporter's summary object from its metadata value, or ``None`` when absent or unreadable."""
    if not raw:
        return None
    try:
        summary = json.loads(raw)
    except ValueError:
        return None
    if isinstance(summary, dict) and isinstance(summary.get("layers"), list):
        return summary
    return None


def metadata_summary(model: onnx.ModelProto) -> dict[str, Any] | None:
    """The exporter's summary object from the model metadata, or ``None`` when absent or unreadable."""
    for prop in model.metadata_props:
        if prop.key == MetaKey.SUMMARY:
            return _parse_summary(prop.value)
    return None


def summary_of(metadata: dict[str, str], model: str | Path | bytes | Callable[[], bytes]) -> dict[str, Any]:
    """The public summary of a loaded model: from its metadata (``metadata``, already read at load time),
    else worked out from the graph (``model``: its serialized bytes, a function giving them, or a path)."""
    summary = _parse_summary(metadata.get(MetaKey.SUMMARY))
    if summary is None:
        if callable(model):
            model = model()
        proto = onnx.load_model_from_string(model) if isinstance(model, bytes) else \
            onnx.load(str(model), load_external_data=False)
        summary = graph_summary(proto)
    out = public_summary(summary)
    out["precision"] = metadata.get(MetaKey.PRECISION, "fp32")
    if MetaKey.CALIBRATION in metadata:
        out["calibration"] = metadata[MetaKey.CALIBRATION]
    try:  # a fp16 / int8 export's drift report against its FP32 model (export/precision/drift.py)
        out["drift"] = json.loads(metadata[MetaKey.DRIFT]) if MetaKey.DRIFT in metadata else None
    except ValueError:
        out["drift"] = None
    return out


def public_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary as ``GET /v1/models/{m}/summary`` serves it: the object of ``sepconv summary --json``
    (the profiler's extra per-layer keys ``onnx_nodes`` and ``op_type`` left out)."""
    out = dict(summary)
    out["layers"] = [{k: v for k, v in layer.items() if k not in ("onnx_nodes", "op_type")}
                     for layer in summary["layers"]]
    return out


def _dims(value: onnx.ValueInfoProto) -> list[int | None]:
    dims = value.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else None for d in dims]


def _conv_kind(node: onnx.NodeProto, weight_shape: list[int], cin: int | None) -> str:
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    if group > 1 and cin is not None and group == cin:
        return "depthwise"
    if len(weight_shape) == 4 and weight_shape[2:] == [1, 1] and group == 1:
        return "pointwise"
    return "standard"


def graph_summary(model: onnx.ModelProto) -> dict[str, Any]:
    """One layer per ONNX node, for models without the exporter's summary (``source: "graph"``)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - shapes are a nicety here
        inferred = model
    g = inferred.graph
    shapes = {v.name: _dims(v) for v in (*g.input, *g.output, *g.value_info)}
    inits = {t.name: list(t.dims) for t in g.initializer}
    layers: list[dict[str, Any]] = []
    for i, node in enumerate(g.node):
        name = node.name or (node.output[0] if node.output else f"{node.op_type}_{i}")
        params = int(sum(int(np.prod(inits[x])) for x in node.input if x in inits))
        out_shape = shapes.get(node.output[0], []) if node.output else []
        kind, macs = "other", 0
        if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in inits:
            w = inits[node.input[1]]
            in_shape = shapes.get(node.input[0], [])
            kind = _conv_kind(node, w, in_shape[1] if len(in_shape) > 1 else None)
            if len(out_shape) == 4 and all(d is not None for d in out_shape[2:]):
                macs = int(out_shape[2] * out_shape[3] * int(np.prod(w)))
        elif node.op_type in ("Gemm", "MatMul") and len(node.input) > 1 and node.input[1] in inits:
            kind = "dense"
            macs = int(np.prod(inits[node.input[1]]))
        channels_last = [int(d) if d is not None else 0 for d in out_shape[1:]]
        if len(channels_last) >= 2:
            channels_last = channels_last[1:] + channels_last[:1]
        layers.append({"name": name, "kind": kind, "op_type": node.op_type, "output_shape": channels_last,
                       "params": params, "macs": macs, "onnx_nodes": [name]})
    return {
        "source": "graph",
        "layers": layers,
        "total_params": int(sum(int(np.prod(t.dims)) for t in g.initializer)),
        "macs": int(sum(la["macs"] for la in layers)),
    }


def layer_table(model: onnx.ModelProto) -> dict[str, Any]:
    """The summary to profile against: the exporter's (``source: "exporter"``) or the graph's."""
    summary = metadata_summary(model)
    if summary is None:
        return graph_summary(model)
    out = dict(summary)
    out.setdefault("source", "exporter")
    return out
