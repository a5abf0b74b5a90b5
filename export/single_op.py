"""Single-op ONNX graphs (one conv2d, depthwise_conv2d or separable_conv2d) for `/v1/conv` and the profiler,
built with :mod:`sepconv.export.layers`.

The graph depends on shapes and arguments only: the filters and the bias are graph *inputs*
(:class:`sepconv.export.layers.GraphWeight`), so one graph — and one ONNX Runtime session — serves every request
with the same :class:`ConvKey`, whatever the filter values. The batch axis is symbolic.

Graph inputs: ``input`` (in ``data_format``), ``filter`` (conv2d, depthwise_conv2d) or
``depthwise_filter`` + ``pointwise_filter`` (separable_conv2d), optionally ``bias``; output ``output``.
Params and multiply-adds come from the layers' own accounting (:class:`sepconv.export.graph.LayerInfo`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx

from sepconv.export import layers
from sepconv.export.errors import ExportError
from sepconv.export.graph import GraphBuilder, Kind
from sepconv.export.padding import ConvGeometry
from sepconv.export.repository.layout import MetaKey

OPS = ("conv2d", "depthwise_conv2d", "separable_conv2d")


@dataclass(frozen=True)
class ConvKey:
    """Everything a graph/session depends on (the cache signature).

    ``geometry`` should hold explicit pads (``ConvGeometry(...).resolved(hw, kernel_hw)``), so that ``SAME`` and
    the pads it stands for share one key; for separable_conv2d it is the depthwise stage's.
    """

    op: str
    chw: tuple[int, int, int]  # input channels, height, width (per image)
    filter_shapes: tuple[tuple[int, ...], ...]  # TF layouts, in graph-input order
    geometry: ConvGeometry  # strides, padding, dilations, data_format (the input's layout)
    activation: str | None
    bias: bool
    providers: tuple[str, ...]
    kind: Kind | None = None  # conv2d only: the accounting kind (standard / pointwise; default by kernel size)


@dataclass(frozen=True)
class ConvGraph:
    """A built graph and its accounting (per image)."""

    key: ConvKey
    builder: GraphBuilder
    out_shape: tuple[int, ...]  # per image, in data_format order (no batch axis)
    params: int  # Keras' count for the layer (SeparableConv2D: depthwise + pointwise + bias)
    macs: int
    standard_conv_macs: int  # a standard conv with the same in/out channels, kernel, strides, padding
    max_activation_elements: int  # largest tensor the graph computes, per image (separable: depthwise output too)

    @property
    def cost_ratio(self) -> float:
        return self.macs / self.standard_conv_macs

    @property
    def out_elements(self) -> int:
        n = 1
        for d in self.out_shape:
            n *= d
        return n

    def to_onnx(self) -> onnx.ModelProto:
        """The checked model (``onnx.checker`` full + strict shape inference)."""
        return self.builder.to_model(metadata={MetaKey.CONV_OP: self.key.op})


def build(key: ConvKey, weights: np.random.Generator | None = None) -> ConvGraph:
    """Build the graph for ``key`` with the exporter's layers (raises ``ExportError`` for bad shapes).

    ``weights=None``: filters and bias are graph inputs (one graph serves any values: ``/v1/conv``);
    a generator: they are seeded standard-normal constants in the graph, as in a deployed model, so that
    ONNX Runtime can pre-pack them (the profiler's single-layer graphs)."""
    g = key.geometry
    if key.op != "conv2d" and max(g.dilations) > 1 and max(g.strides) > 1:
        # TF's API (what /v1/conv and /v1/profile/conv follow); the layers themselves compute it, as PyTorch does
        raise ExportError(f"{key.op}: dilations {list(g.dilations)} > 1 together with strides {list(g.strides)} > 1 "
                          "is not supported — TensorFlow requires all strides to be 1 when rate/dilations > 1 "
                          "(atrous depthwise convolution)")
    c, h, w = key.chw
    layout = key.geometry.data_format
    b = GraphBuilder(f"sepconv_{key.op}")
    x = layers.network_input(b, "input", layout, c, h, w)

    def weight(name: str, shape: tuple[int, ...]) -> layers.GraphWeight | np.ndarray:
        if weights is None:
            return layers.GraphWeight(name, shape)
        return weights.standard_normal(shape).astype(np.float32)

    bias = weight("bias", (_out_channels(key),)) if key.bias else None
    args = dict(geometry=key.geometry, bias=bias, act=key.activation)
    if key.op == "conv2d":
        y = layers.conv2d(b, x, weight("filter", key.filter_shapes[0]), name="conv2d", kind=key.kind, **args)
    elif key.op == "depthwise_conv2d":
        y = layers.depthwise_conv2d(b, x, weight("filter", key.filter_shapes[0]),
                                    name="depthwise_conv2d", **args)
    elif key.op == "separable_conv2d":
        y = layers.separable_conv2d(b, x, weight("depthwise_filter", key.filter_shapes[0]),
                                    weight("pointwise_filter", key.filter_shapes[1]),
                                    name="separable_conv2d", **args)
    else:
        raise ValueError(f"unknown convolution op {key.op!r}")
    layers.network_output(b, y, "output", layout)

    kh, kw = key.filter_shapes[0][:2]
    ho, wo = y.hw
    cout = y.channels
    out_shape = (ho, wo, cout) if layout == "NHWC" else (cout, ho, wo)
    return ConvGraph(
        key=key,
        builder=b,
        out_shape=out_shape,
        params=sum(layer.params for layer in b.layers),
        macs=sum(layer.macs for layer in b.layers),
        standard_conv_macs=ho * wo * kh * kw * c * cout,
        max_activation_elements=max(math.prod(layer.output_shape) for layer in b.layers),
    )


def _out_channels(key: ConvKey) -> int:
    last = key.filter_shapes[-1]
    return last[3] * (last[2] if key.op == "depthwise_conv2d" else 1)
