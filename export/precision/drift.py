"""How far a precision variant drifts from its FP32 model, layer by layer and end to end.

:func:`drift_report` runs the FP32 model and the variant on the same inputs in ONNX Runtime (CPU provider). Per
exporter layer (the summary metadata's layers and their ``onnx_nodes``), the layer's output tensor is exposed as an
extra graph output in temporary copies of both graphs; in a QDQ graph the value compared is the layer output after
its QuantizeLinear -> DequantizeLinear pair, i.e. what the next layer really receives. Reported per layer: the SNR
``10 log10(sum(ref^2) / sum((var - ref)^2))`` in dB and the max abs error. End to end (the unmodified variant's
output): the same two on the logits, top-1 agreement (argmax equal) and top-5 agreement (the variant's top-1 among
FP32's top 5), and how many distinct FP32 top-1 classes the inputs gave (agreement means little when they all
land in one class). Exposing layer outputs can keep ORT from fusing a node pair in the copies (e.g. an integer conv
with its requantisation), so per-layer numbers are within a rounding step of what the served graph computes; the
end-to-end numbers are the served graph's own.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from sepconv.export.errors import ExportError
from sepconv.export.repository.layout import MetaKey

_SUFFIX = "__sepconv_drift"
CHUNK = 4  # inputs per run (the copies output every layer's activations)


def layer_tensors(model: onnx.ModelProto) -> dict[str, str]:
    """Exporter layer -> the ONNX tensor that is its output (the last of its nodes' outputs that leaves it)."""
    meta = {p.key: p.value for p in model.metadata_props}
    try:
        layers = json.loads(meta[MetaKey.SUMMARY])["layers"]
    except (KeyError, ValueError, TypeError):
        raise ExportError("the model lacks the exporter's layer summary (sepconv.summary)") from None
    owner: dict[str, str] = {}
    for la in layers:
        for n in la.get("onnx_nodes") or []:
            owner.setdefault(n, la["name"])
    consumers: dict[str, set[str]] = {}
    for node in model.graph.node:
        for i in node.input:
            consumers.setdefault(i, set()).add(owner.get(node.name, ""))
    outputs = {o.name for o in model.graph.output}
    result: dict[str, str] = {}
    for node in model.graph.node:
        layer = owner.get(node.name)
        if layer is None:
            continue
        for out in node.output:
            if out in outputs or (consumers.get(out, set()) - {layer}):
                result[layer] = out  # graph order: the last one wins
    return {la["name"]: result[la["name"]] for la in layers if la["name"] in result}


def _dequantized(model: onnx.ModelProto, tensor: str) -> str:
    """In a QDQ graph, the DequantizeLinear output that follows ``tensor``'s QuantizeLinear (else ``tensor``)."""
    q = next((n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor), None)
    if q is None:
        return tensor
    dq = next((n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == q.output[0]), None)
    return dq.output[0] if dq is not None else tensor


def _exposing(model: onnx.ModelProto, tensors: dict[str, str]) -> tuple[onnx.ModelProto, dict[str, str]]:
    """A copy of ``model`` with each tensor also a FP32 graph output; returns it and layer -> output name."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    produced = {o for n in copy.graph.node for o in n.output} | {i.name for i in copy.graph.input}
    names: dict[str, str] = {}
    for layer, tensor in tensors.items():
        if tensor not in produced:
            continue
        out = f"{layer}{_SUFFIX}"
        copy.graph.node.append(helper.make_node("Cast", [tensor], [out], name=out, to=TensorProto.FLOAT))
        copy.graph.output.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, None))
        names[layer] = out
    return copy, names


def _session(model: onnx.ModelProto) -> Any:
    import onnxruntime as ort  # noqa: PLC0415

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])


def _run(session: Any, inputs: np.ndarray) -> list[np.ndarray]:
    name = session.get_inputs()[0].name
    parts = [session.run(None, {name: inputs[i:i + CHUNK]}) for i in range(0, len(inputs), CHUNK)]
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]


def snr_db(ref: np.ndarray, var: np.ndarray) -> float | None:
    """Signal-to-noise ratio of ``var`` against ``ref`` in dB (``None`` when they are identical)."""
    ref64, err = ref.astype(np.float64), var.astype(np.float64) - ref.astype(np.float64)
    noise = float(np.sum(err * err))
    if noise == 0.0:
        return None
    return 10.0 * math.log10(max(float(np.sum(ref64 * ref64)), 1e-300) / noise)


def _compare(ref: np.ndarray, var: np.ndarray) -> dict[str, Any]:
    snr = snr_db(ref, var)
    return {"snr_db": None if snr is None else round(snr, 2),
            "max_abs_error": float(np.max(np.abs(var.astype(np.float64) - ref))) if ref.size else 0.0}


def logits_agreement(ref: np.ndarray, var: np.ndarray) -> dict[str, Any]:
    """Top-1 / top-5 agreement of two ``[N, classes]`` outputs and the distinct FP32 top-1 classes."""
    ref2, var2 = ref.reshape(len(ref), -1), var.reshape(len(var), -1)
    top1_ref, top1_var = ref2.argmax(1), var2.argmax(1)
    k = min(5, ref2.shape[1])
    top5_ref = np.argsort(-ref2, axis=1)[:, :k]
    return {"top1_agreement": float(np.mean(top1_ref == top1_var)),
            "top5_agreement": float(np.mean([t in row for t, row in zip(top1_var, top5_ref, strict=True)])),
            "distinct_top1": int(len(set(top1_ref.tolist())))}


def drift_report(fp32: onnx.ModelProto, variant: onnx.ModelProto, inputs: np.ndarray, *, precision: str,
                 evaluated_on: str) -> dict[str, Any]:
    """The drift of ``variant`` against ``fp32`` on ``inputs`` (see the module docstring)."""
    tensors = layer_tensors(fp32)
    ref_model, ref_names = _exposing(fp32, tensors)
    var_model, var_names = _exposing(variant, {la: _dequantized(variant, t) for la, t in tensors.items()})
    layers = [la for la in tensors if la in ref_names and la in var_names]
    ref_out = dict(zip([o.name for o in ref_model.graph.output], _run(_session(ref_model), inputs), strict=True))
    var_out = dict(zip([o.name for o in var_model.graph.output], _run(_session(var_model), inputs), strict=True))
    rows = [{"name": la, **_compare(ref_out[ref_names[la]], var_out[var_names[la]])} for la in layers]
    out_name = fp32.graph.output[0].name
    ref_logits = ref_out[out_name]
    logits = _run(_session(variant), inputs)[0]  # the served graph, unmodified
    end = {**_compare(ref_logits, logits)}
    meta = {p.key: p.value for p in fp32.metadata_props}
    if meta.get(MetaKey.INCLUDE_TOP, "true") == "true":
        end.update(logits_agreement(ref_logits, logits))
    finite = [r for r in rows if r["snr_db"] is not None]
    return {
        "precision": precision,
        "evaluated_on": evaluated_on,
        "inputs": int(len(inputs)),
        "output": {"name": out_name, **end},
        "worst_layer": min(finite, key=lambda r: r["snr_db"])["name"] if finite else None,
        "layers": rows,
        "layers_not_compared": [la for la in tensors if la not in layers],
    }


def render(report: dict[str, Any], console: Any = None, top: int = 10) -> None:
    """Print the drift report with rich: end to end, then the ``top`` layers of lowest SNR."""
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    console = console or Console(stderr=True)
    o = report["output"]
    fmt = lambda v: "exact" if v is None else f"{v:.1f}"  # noqa: E731
    line = (f"{report['precision']} drift vs fp32 on {report['evaluated_on']}: {o['name']} SNR {fmt(o['snr_db'])} dB, "
            f"max abs err {o['max_abs_error']:.3g}")
    if "top1_agreement" in o:
        line += (f", top-1 agreement {100 * o['top1_agreement']:.1f}%, top-5 {100 * o['top5_agreement']:.1f}% "
                 f"({o['distinct_top1']} distinct fp32 top-1 classes)")
    console.print(line)
    table = Table(title=f"layers of lowest SNR (of {len(report['layers'])})", header_style="bold")
    for col in ("Layer", "SNR dB", "Max abs err"):
        table.add_column(col, justify="left" if col == "Layer" else "right")
    rows = sorted(report["layers"], key=lambda r: math.inf if r["snr_db"] is None else r["snr_db"])[:top]
    for r in rows:
        table.add_row(r["name"], fmt(r["snr_db"]), f"{r['max_abs_error']:.3g}")
    console.print(table)
