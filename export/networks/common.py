"""What every MobileNet needs: Keras' channel rounding, Keras' padding choices, and a small
context that fetches weights by Keras layer name and emits conv + BN + activation layers.

The networks themselves (``mobilenet_v1``/``v2``/``v3``) are only their paper's tables plus the
block function that turns one table row into layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sepconv.export import layers as L
from sepconv.export.errors import ExportError
from sepconv.export.graph import GraphBuilder, Kind, Tensor
from sepconv.export.padding import ConvGeometry, PaddingSpec
from sepconv.export.weights import WeightSource

PADDING_STYLES = ("same", "symmetric")
MAX_WEIGHTS = 2**31 // 4  # float32 values in 2 GiB, the most one ONNX (protobuf) file can hold


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Keras' ``_make_divisible`` / ``_depth`` (from TF-slim): round to a multiple of ``divisor``,
    never below ``min_value`` and never more than 10% below ``v``."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def correct_pad(in_hw: tuple[int, int], kernel: int) -> list[int]:
    """Keras ``imagenet_utils.correct_pad`` before a stride-2 ``valid`` conv, as
    ``[top, bottom, left, right]``: ``k//2`` after, one less before on an even side."""
    adjust = (1 - in_hw[0] % 2, 1 - in_hw[1] % 2)
    c = kernel // 2
    return [c - adjust[0], c, c - adjust[1], c]


# Keras applications' padding rules for a conv, by where the conv sits:
#   "same"         - padding="same"
#   "v1_stride2"   - MobileNet V1's fixed ZeroPadding2D(((0, 1), (0, 1))) then "valid" (stride-2 depthwise)
#   "correct_pad"  - ZeroPadding2D(correct_pad(x, k)) then "valid" (V2/V3 stride-2 depthwise)
KERAS_PAD_RULES = ("same", "v1_stride2", "correct_pad")


@dataclass
class NetContext:
    """One network being built: the graph, where weights come from, and the style choices."""

    b: GraphBuilder
    weights: WeightSource
    padding: str = "same"  # "same" (TF/Keras exact) or "symmetric" (PyTorch/torchvision)
    fold_bn: bool = True
    weights_requested: int = 0  # values asked for so far (refused past MAX_WEIGHTS, before any allocation)

    @property
    def bn_epsilon(self) -> float:
        return float(self.weights.bn_epsilon or L.KERAS_BN_EPSILON)

    # -- weights ------------------------------------------------------------------------
    def weight(self, layer: str, name: str, shape: tuple[int, ...]) -> np.ndarray:
        self.weights_requested += math.prod(shape)
        if self.weights_requested > MAX_WEIGHTS:
            raise ExportError(f"{layer} ({name} {list(shape)}) takes the network past {MAX_WEIGHTS:,} weights, "
                              "2 GiB, the most an ONNX file holds: use fewer classes or a smaller alpha")
        arr = np.asarray(self.weights.get(layer, name, shape))
        if tuple(arr.shape) != tuple(shape):
            raise ExportError(
                f"weight {layer}/{name} has shape {list(arr.shape)}, the network needs {list(shape)}"
            )
        return arr.astype(np.float32, copy=False)

    def batch_norm(self, layer: str, channels: int) -> L.BatchNorm:
        shape = (channels,)
        return L.BatchNorm(
            gamma=self.weight(layer, "gamma", shape),
            beta=self.weight(layer, "beta", shape),
            mean=self.weight(layer, "moving_mean", shape),
            var=self.weight(layer, "moving_variance", shape),
            eps=self.bn_epsilon,
        )

    # -- padding ------------------------------------------------------------------------
    def geometry(self, x: Tensor, kernel: int, stride: int, keras_rule: str = "same") -> ConvGeometry:
        """Where the conv's window goes: ``stride`` and :meth:`pad` (tensors are NCHW inside the graph)."""
        return ConvGeometry(strides=stride, padding=self.pad(x, kernel, stride, keras_rule), data_format="NCHW")

    def pad(self, x: Tensor, kernel: int, stride: int, keras_rule: str = "same") -> PaddingSpec:
        """The padding a conv gets: Keras' exact choice, or PyTorch's symmetric ``k//2``."""
        if self.padding == "symmetric":
            return "SYMMETRIC"
        if stride == 1 or keras_rule == "same":
            return "SAME"
        if keras_rule == "v1_stride2":
            return [0, 1, 0, 1]
        if keras_rule == "correct_pad":
            return correct_pad(x.hw, kernel)
        raise ValueError(f"unknown Keras padding rule {keras_rule!r}")

    # -- layers -------------------------------------------------------------------------
    def conv(self, x: Tensor, name: str, filters: int, kernel: int = 1, stride: int = 1, *,
             bn_name: str | None = None, act: str | None = None, bias: bool = False,
             kind: Kind | None = None, keras_rule: str = "same") -> Tensor:
        """Keras ``Conv2D`` (+ ``BatchNormalization`` named ``bn_name``) (+ activation)."""
        k = self.weight(name, "kernel", (kernel, kernel, x.channels, filters))
        b = self.weight(name, "bias", (filters,)) if bias else None
        bn = self.batch_norm(bn_name, filters) if bn_name else None
        return L.conv2d(self.b, x, k, name=name, geometry=self.geometry(x, kernel, stride, keras_rule), bias=b,
                        bn=bn, fold_bn=self.fold_bn, act=act, kind=kind)

    def depthwise(self, x: Tensor, name: str, kernel: int = 3, stride: int = 1, *,
                  bn_name: str, act: str | None, keras_rule: str = "correct_pad") -> Tensor:
        """Keras ``DepthwiseConv2D`` (multiplier 1, no bias) + ``BatchNormalization`` + activation."""
        k = self.weight(name, "depthwise_kernel", (kernel, kernel, x.channels, 1))
        bn = self.batch_norm(bn_name, x.channels)
        return L.depthwise_conv2d(self.b, x, k, name=name, geometry=self.geometry(x, kernel, stride, keras_rule),
                                  bn=bn, fold_bn=self.fold_bn, act=act)

    def dense(self, x: Tensor, name: str, units: int) -> Tensor:
        """Keras ``Dense`` with bias (a 4-D input is flattened)."""
        cin = x.channels if len(x.shape) == 2 else int(np.prod([int(d) for d in x.shape[1:]]))  # type: ignore[arg-type]
        k = self.weight(name, "kernel", (cin, units))
        b = self.weight(name, "bias", (units,))
        return L.dense(self.b, x, k, b, name=name)

    def flatten_into_last_layer(self, x: Tensor) -> Tensor:
        """Keras' ``Reshape``/``Flatten`` after a 1×1 classifier conv: folded into that layer."""
        out = self.b.node("Flatten", [x.name], f"{self.b.layers[-1].name}_flatten", axis=1)
        last = self.b.layers[-1]
        last.onnx_nodes.append(out)
        last.output_shape = [x.channels]
        return Tensor(out, (None, x.channels))
