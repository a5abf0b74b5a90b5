"""A small ONNX graph builder that also keeps the per-layer accounting.

Tensors are tracked in NCHW inside the graph (ONNX's ``Conv`` layout) with the batch axis
symbolic; an NHWC model gets one ``Transpose`` at its input.

The layer kinds (:class:`Kind`, :data:`KINDS`) are owned here: the summary, the model metadata and the
server's profiles all group layers by them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from functools import lru_cache
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class Kind(StrEnum):
    """What a layer is, as DESIGN.md's ``kind`` field says it (a ``str``: ``Kind.DEPTHWISE == "depthwise"``)."""

    STANDARD = "standard"  # a k x k conv over all input channels
    DEPTHWISE = "depthwise"  # one k x k filter per input channel (group = in_channels)
    POINTWISE = "pointwise"  # a 1 x 1 conv
    DENSE = "dense"  # a classifier (Dense, or Keras' 1 x 1 conv standing in for one)
    OTHER = "other"  # pooling, batch norm, residual add, squeeze-and-excite multiply


KINDS: tuple[str, ...] = tuple(kind.value for kind in Kind)  # plain strings, in the summary tables' order
BATCH = "N"
DEFAULT_OPSET = 17  # what every graph is written at unless asked otherwise (networks, single ops, exports)


@dataclass(frozen=True)
class Tensor:
    """A value in the graph: its name and NCHW shape (batch is ``None``)."""

    name: str
    shape: tuple[int | None, ...]

    @property
    def channels(self) -> int:
        return int(self.shape[1])  # type: ignore[arg-type]

    @property
    def hw(self) -> tuple[int, int]:
        return int(self.shape[2]), int(self.shape[3])  # type: ignore[arg-type]


@dataclass
class LayerInfo:
    """One exporter layer with Keras-convention parameter counts and multiply-adds.

    ``params`` = trainable + non-trainable (what Keras counts, BN moving stats included);
    ``weight_params`` = conv/dense weights + dense bias (the papers' convention, no BN);
    ``deployed_params`` = what the exported ONNX holds for this layer after BN folding.
    ``output_shape`` is channels-last without the batch axis, as Keras prints it.
    """

    name: str
    kind: str
    op_type: str
    output_shape: list[int]
    trainable: int = 0
    non_trainable: int = 0
    weight_params: int = 0
    deployed_params: int = 0
    macs: int = 0
    onnx_nodes: list[str] = field(default_factory=list)

    @property
    def params(self) -> int:
        return self.trainable + self.non_trainable

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["params"] = self.params
        return d


def channels_last(shape: tuple[int | None, ...]) -> list[int]:
    dims = [int(d) for d in shape[1:]]  # type: ignore[arg-type]
    return dims[1:] + dims[:1] if len(dims) >= 2 else dims


def layer_totals(layers: Iterable[LayerInfo]) -> dict[str, int]:
    """The summary's totals: params (Keras' total/trainable/non-trainable), weight/deployed params, MACs."""
    layers = list(layers)
    return {
        "total_params": sum(la.params for la in layers),
        "trainable_params": sum(la.trainable for la in layers),
        "non_trainable_params": sum(la.non_trainable for la in layers),
        "weight_params": sum(la.weight_params for la in layers),
        "deployed_params": sum(la.deployed_params for la in layers),
        "macs": sum(la.macs for la in layers),
    }


class GraphBuilder:
    """Collects nodes, initializers and layer accounting, then writes a checked ModelProto."""

    def __init__(self, name: str, opset: int = DEFAULT_OPSET) -> None:
        self.name = name
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.layers: list[LayerInfo] = []
        self._used: set[str] = set()

    # -- naming -----------------------------------------------------------------
    def unique(self, name: str) -> str:
        candidate, i = name, 1
        while candidate in self._used:
            candidate = f"{name}_{i}"
            i += 1
        self._used.add(candidate)
        return candidate

    # -- graph pieces -------------------------------------------------------------
    def const(self, name: str, array: np.ndarray) -> str:
        array = np.asarray(array)
        if not array.flags.c_contiguous:  # (np.ascontiguousarray would turn a scalar into shape [1])
            array = np.ascontiguousarray(array)
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        uname = self.unique(name)
        self.initializers.append(numpy_helper.from_array(array, uname))
        return uname

    def node(self, op_type: str, inputs: list[str], name: str, **attrs: Any) -> str:
        """Add a node with one output named after the node; returns that output's name."""
        uname = self.unique(name)
        self.nodes.append(helper.make_node(op_type, inputs, [uname], name=uname, **attrs))
        return uname

    def add_input(self, name: str, shape: list[int | str | None], elem_type: int = TensorProto.FLOAT) -> str:
        self._used.add(name)
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def add_output(self, tensor_name: str, name: str, shape: list[int | str | None],
                   elem_type: int = TensorProto.FLOAT) -> str:
        if tensor_name != name:
            # Rename the producing node's output so the graph output has the public name.
            for n in self.nodes:
                for i, out in enumerate(n.output):
                    if out == tensor_name:
                        n.output[i] = name
                for i, inp in enumerate(n.input):
                    if inp == tensor_name:
                        n.input[i] = name
            # (node names do not change, so the layers' ``onnx_nodes`` stay valid)
        self._used.add(name)
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def record(self, layer: LayerInfo) -> LayerInfo:
        layer.kind = Kind(layer.kind).value  # a plain str in summaries and JSON, whatever the caller passed
        self.layers.append(layer)
        return layer

    # -- accounting ----------------------------------------------------------------
    def totals(self) -> dict[str, int]:
        return layer_totals(self.layers)

    # -- output ----------------------------------------------------------------------
    def to_model(self, metadata: dict[str, str] | None = None, check: bool = True) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.initializers)
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", self.opset)],
            producer_name="sepconv",
        )
        model.ir_version = ir_version_for(self.opset)
        for key, value in (metadata or {}).items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, str(value)
        if check:
            model = check_and_infer(model)
        return model


def ir_version_for(opset: int) -> int:
    """The IR version to write: the oldest one that carries ``opset`` (most portable — Triton's
    bundled onnxruntime may be older than ours), never above what the installed runtime reads."""
    needed = helper.find_min_ir_version_for([helper.make_opsetid("", opset)])
    return min(needed, supported_ir_version())


@lru_cache(maxsize=1)
def supported_ir_version() -> int:
    """The newest IR version both onnx and the installed onnxruntime handle.

    onnx 1.23 writes IR 14 by default, which onnxruntime 1.31 refuses; rather than hard-code a
    table, ask the runtime: load a one-node model at decreasing IR versions and keep the first it
    accepts. Without onnxruntime (the exporter alone), write IR 10, which runtimes since 1.20 read.
    """
    try:
        import onnxruntime as ort  # noqa: PLC0415
    except ImportError:
        return min(onnx.IR_VERSION, 10)
    probe = helper.make_model(
        helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]),
        opset_imports=[helper.make_opsetid("", 13)],
    )
    for version in range(onnx.IR_VERSION, 6, -1):
        probe.ir_version = version
        try:
            ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        except Exception:  # noqa: BLE001 - "unsupported IR version" is what we are probing for
            continue
        return version
    return 7


def check_and_infer(model: onnx.ModelProto) -> onnx.ModelProto:
    """``onnx.checker`` (full) and strict shape inference on every model we write."""
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    onnx.checker.check_model(inferred, full_check=True)
    return inferred
