"""TensorFlow/Keras-exact layers emitted as ONNX nodes — the one definition of each op.

Weights are given in TensorFlow/Keras layouts (``conv2d``: ``[kh, kw, in, out]``;
``depthwise_conv2d``: ``[kh, kw, in, multiplier]``; dense: ``[in, out]``) and converted here.
Where a conv's window goes (strides, padding, dilations, how their 4-element forms are ordered) is one
:class:`~sepconv.export.padding.ConvGeometry` argument, stride 1 / ``SAME`` / NHWC when left out::

    y = conv2d(b, x, kernel, name="conv1", geometry=ConvGeometry(strides=2), act="relu6")

Each layer records a :class:`~sepconv.export.graph.LayerInfo` (params, multiply-adds, ONNX node names)
on the builder, so the networks, the ``/v1/conv`` endpoints and the profiler share one accounting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sepconv.export.errors import ExportError
from sepconv.export.graph import BATCH, GraphBuilder, Kind, LayerInfo, Tensor, channels_last
from sepconv.export.padding import LAYOUTS, ConvGeometry

ACTIVATIONS = ("relu", "relu6", "hard_sigmoid", "hard_swish")
DEFAULT_GEOMETRY = ConvGeometry()  # stride 1, SAME, no dilation, NHWC
POINTWISE_GEOMETRY = ConvGeometry(padding="VALID")  # a 1x1 conv: nothing to pad, strides 1
HARD_SWISH_OPSET = 14  # the first opset with a HardSwish operator


KERAS_BN_EPSILON = 1e-3  # keras.layers.BatchNormalization's default, which keras.applications keep


@dataclass(frozen=True)
class BatchNorm:
    """Keras BatchNormalization weights for one layer (``gamma, beta`` trainable)."""

    gamma: np.ndarray
    beta: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    eps: float = KERAS_BN_EPSILON

    @property
    def channels(self) -> int:
        return int(self.gamma.shape[0])

    def scale_shift(self) -> tuple[np.ndarray, np.ndarray]:
        """y = x*scale + shift, computed in float64 then rounded once."""
        scale = self.gamma.astype(np.float64) / np.sqrt(self.var.astype(np.float64) + self.eps)
        shift = self.beta.astype(np.float64) - self.mean.astype(np.float64) * scale
        return scale, shift


@dataclass(frozen=True)
class GraphWeight:
    """A weight fed at run time instead of baked into the graph: the graph input ``name``, holding a
    float32 tensor of ``shape`` in the same TF/Keras layout an array would have.

    The conv layers accept it wherever they accept a kernel or bias array; they declare the input and
    add the layout change (``Reshape``/``Transpose``) as graph nodes, so one graph (and one ONNX Runtime
    session) serves any filter values of that shape — what the ``/v1/conv`` session cache relies on.
    Batch-norm folding needs constant weights and is refused for it.
    """

    name: str
    shape: tuple[int, ...]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass(frozen=True)
class _RuntimeOIHW:
    """A conv weight already converted to ONNX's ``[out, in/group, kh, kw]`` by graph nodes."""

    name: str
    shape: tuple[int, int, int, int]
    nodes: tuple[str, ...]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


def _f32(a: np.ndarray | Sequence | GraphWeight, what: str) -> np.ndarray | GraphWeight:
    if isinstance(a, GraphWeight):
        return a
    arr = np.asarray(a)
    if arr.dtype.kind not in "fiu":
        raise ExportError(f"{what} must be numeric, got dtype {arr.dtype}")
    return arr.astype(np.float32, copy=False)


def _runtime_oihw(b: GraphBuilder, k: GraphWeight, name: str, reshape: tuple[int, ...] | None,
                  perm: tuple[int, int, int, int]) -> _RuntimeOIHW:
    """Declare ``k`` as a graph input and convert it to OIHW in the graph (same steps as the numpy path)."""
    src = b.add_input(k.name, list(k.shape))
    shape = k.shape
    nodes: list[str] = []
    if reshape is not None:
        src = b.node("Reshape", [src, b.const(f"{name}_W_shape", np.array(reshape, np.int64))], f"{name}_W_reshape")
        nodes.append(src)
        shape = reshape
    out = b.node("Transpose", [src], f"{name}_W_oihw", perm=list(perm))
    nodes.append(out)
    oihw = tuple(int(shape[i]) for i in perm)
    return _RuntimeOIHW(out, oihw, tuple(nodes))  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# inputs, outputs, layout
# --------------------------------------------------------------------------------------------
def network_input(b: GraphBuilder, name: str, layout: str, channels: int, height: int, width: int,
                  batch: int | str = BATCH) -> Tensor:
    """The graph input in ``layout``; an NHWC input is transposed once to NCHW."""
    if layout not in LAYOUTS:
        raise ExportError(f"input layout must be NCHW or NHWC, got {layout!r}")
    if layout == "NHWC":
        b.add_input(name, [batch, height, width, channels])
        out = b.node("Transpose", [name], f"{name}_to_nchw", perm=[0, 3, 1, 2])
        return Tensor(out, (None, channels, height, width))
    b.add_input(name, [batch, channels, height, width])
    return Tensor(name, (None, channels, height, width))


def network_output(b: GraphBuilder, x: Tensor, name: str, layout: str, batch: int | str = BATCH) -> str:
    """Expose ``x`` as the graph output ``name`` (4-D outputs back in ``layout``)."""
    tensor = x.name
    if len(x.shape) == 4 and layout == "NHWC":
        tensor = b.node("Transpose", [x.name], f"{name}_to_nhwc", perm=[0, 2, 3, 1])
        if b.layers:
            b.layers[-1].onnx_nodes.append(tensor)
        shape = [batch, *channels_last(x.shape)]
    else:
        shape = [batch, *[int(d) for d in x.shape[1:]]]  # type: ignore[arg-type]
    return b.add_output(tensor, name, shape)


# --------------------------------------------------------------------------------------------
# activations
# --------------------------------------------------------------------------------------------
def activation(b: GraphBuilder, x: Tensor, kind: str | None, name: str) -> tuple[Tensor, list[str]]:
    """Apply ``relu`` / ``relu6`` (``Clip(0, 6)``) / ``hard_sigmoid`` / ``hard_swish``.

    Keras' ``hard_sigmoid`` in MobileNetV3 is ``relu6(x + 3) / 6`` = ONNX ``HardSigmoid(1/6, 0.5)``,
    and ``hard_swish`` is ``x * hard_sigmoid(x)`` = ONNX ``HardSwish`` (spelt out as ``Mul`` + ``HardSigmoid``
    below opset 14, which has no ``HardSwish``).
    Returns the new tensor and the node names it added (none for ``None``).
    """
    if kind is None:
        return x, []
    if kind == "relu":
        out = b.node("Relu", [x.name], f"{name}_relu")
    elif kind == "relu6":
        lo = b.const(f"{name}_relu6_min", np.array(0.0, np.float32))
        hi = b.const(f"{name}_relu6_max", np.array(6.0, np.float32))
        out = b.node("Clip", [x.name, lo, hi], f"{name}_relu6")
    elif kind == "hard_sigmoid":
        out = b.node("HardSigmoid", [x.name], f"{name}_hard_sigmoid", alpha=1.0 / 6.0, beta=0.5)
    elif kind == "hard_swish" and b.opset >= HARD_SWISH_OPSET:
        out = b.node("HardSwish", [x.name], f"{name}_hard_swish")
    elif kind == "hard_swish":  # opset 13 has no HardSwish: x * HardSigmoid(x), the same function
        gate = b.node("HardSigmoid", [x.name], f"{name}_hard_swish_gate", alpha=1.0 / 6.0, beta=0.5)
        out = b.node("Mul", [x.name, gate], f"{name}_hard_swish")
        return Tensor(out, x.shape), [gate, out]
    else:
        raise ExportError(f"unknown activation {kind!r}; expected one of {', '.join(ACTIVATIONS)}")
    return Tensor(out, x.shape), [out]


# --------------------------------------------------------------------------------------------
# convolutions
# --------------------------------------------------------------------------------------------
def _conv(
    b: GraphBuilder,
    x: Tensor,
    weight_oihw: np.ndarray | _RuntimeOIHW,
    group: int,
    *,
    name: str,
    kind: str,
    geometry: ConvGeometry,
    bias: np.ndarray | GraphWeight | None,
    bn: BatchNorm | None,
    fold_bn: bool,
    act: str | None,
) -> Tensor:
    """One ONNX ``Conv`` (+ unfolded BN) (+ activation) from an OIHW weight, recorded as one layer."""
    cout, _, kh, kw = (int(d) for d in weight_oihw.shape)
    pads, (ho, wo) = geometry.resolve(x.hw, (kh, kw))
    if isinstance(bias, GraphWeight):
        if bias.shape != (cout,):
            raise ExportError(f"{name}: bias has shape {list(bias.shape)}, the layer has {cout} output channels")
    elif bias is not None:
        bias = _f32(bias, f"{name} bias").reshape(-1)  # type: ignore[union-attr]
        if bias.shape[0] != cout:
            raise ExportError(f"{name}: bias has {bias.shape[0]} values, the layer has {cout} output channels")
    if bn is not None and bn.channels != cout:
        raise ExportError(f"{name}: batch norm has {bn.channels} channels, the layer has {cout}")

    keras_weights = int(weight_oihw.size)  # the same values as the Keras kernel, only rearranged
    bias_n = 0 if bias is None else cout
    nodes: list[str] = []
    if isinstance(weight_oihw, _RuntimeOIHW) or isinstance(bias, GraphWeight):
        # run-time weights: fed as graph inputs, nothing to fold into
        if bn is not None and fold_bn:
            raise ExportError(f"{name}: batch-norm folding needs constant weights (fold_bn=False with run-time ones)")
        if isinstance(weight_oihw, _RuntimeOIHW):
            nodes.extend(weight_oihw.nodes)
            w_name = weight_oihw.name
        else:
            w_name = b.const(f"{name}_W", weight_oihw.astype(np.float32))
        inputs = [x.name, w_name]
        if isinstance(bias, GraphWeight):
            inputs.append(b.add_input(bias.name, list(bias.shape)))
        elif bias is not None:
            inputs.append(b.const(f"{name}_B", bias))
        deployed = keras_weights + bias_n
    else:
        w = weight_oihw.astype(np.float32)
        fused_bias = bias
        if bn is not None and fold_bn:
            scale, shift = bn.scale_shift()
            w = (w.astype(np.float64) * scale[:, None, None, None]).astype(np.float32)
            base = np.zeros(cout) if bias is None else bias.astype(np.float64)
            fused_bias = (base * scale + shift).astype(np.float32)

        inputs = [x.name, b.const(f"{name}_W", w)]
        if fused_bias is not None:
            inputs.append(b.const(f"{name}_B", fused_bias))
        deployed = int(w.size) + (0 if fused_bias is None else cout)
    attrs: dict = {"kernel_shape": [kh, kw], "strides": list(geometry.strides), "dilations": list(geometry.dilations),
                   "group": group}
    if not pads.is_zero:
        attrs["pads"] = pads.onnx()
    out = b.node("Conv", inputs, name, **attrs)
    nodes.append(out)
    y = Tensor(out, (None, cout, ho, wo))
    if bn is not None and not fold_bn:
        bn_out = b.node(
            "BatchNormalization",
            [y.name, b.const(f"{name}_bn_scale", bn.gamma.astype(np.float32)),
             b.const(f"{name}_bn_bias", bn.beta.astype(np.float32)),
             b.const(f"{name}_bn_mean", bn.mean.astype(np.float32)),
             b.const(f"{name}_bn_var", bn.var.astype(np.float32))],
            f"{name}_bn", epsilon=float(bn.eps),
        )
        nodes.append(bn_out)
        y = Tensor(bn_out, y.shape)
        deployed += 4 * cout
    y, act_nodes = activation(b, y, act, name)
    nodes += act_nodes

    bn_n = 0 if bn is None else 2 * cout
    b.record(LayerInfo(
        name=name,
        kind=kind,
        op_type="Conv",
        output_shape=channels_last(y.shape),
        trainable=keras_weights + bias_n + bn_n,
        non_trainable=bn_n,
        weight_params=keras_weights + (bias_n if kind == Kind.DENSE else 0),
        deployed_params=deployed,
        macs=ho * wo * (keras_weights // cout) * cout,
        onnx_nodes=nodes,
    ))
    return y


def conv2d(
    b: GraphBuilder,
    x: Tensor,
    kernel: np.ndarray | GraphWeight,
    *,
    name: str,
    geometry: ConvGeometry = DEFAULT_GEOMETRY,
    bias: np.ndarray | GraphWeight | None = None,
    bn: BatchNorm | None = None,
    fold_bn: bool = True,
    act: str | None = None,
    kind: str | None = None,
) -> Tensor:
    """``tf.nn.conv2d`` with a ``[kh, kw, in, out]`` filter (1×1 kernels count as ``pointwise``)."""
    k = _f32(kernel, f"{name} filter")
    if k.ndim != 4:
        raise ExportError(f"{name}: conv2d filter must be [kh, kw, in, out], got shape {list(k.shape)}")
    kh, kw, cin, cout = (int(v) for v in k.shape)
    if cin != x.channels:
        raise ExportError(
            f"{name}: filter expects {cin} input channels (filter shape {list(k.shape)}), input has {x.channels}"
        )
    if min(kh, kw, cout) < 1:
        raise ExportError(f"{name}: filter shape {list(k.shape)} has an empty dimension")
    if kind is None:
        kind = Kind.POINTWISE if (kh, kw) == (1, 1) else Kind.STANDARD
    weight = (_runtime_oihw(b, k, name, None, (3, 2, 0, 1)) if isinstance(k, GraphWeight)
              else k.transpose(3, 2, 0, 1))
    return _conv(b, x, weight, 1, name=name, kind=kind, geometry=geometry, bias=bias, bn=bn, fold_bn=fold_bn,
                 act=act)


def depthwise_conv2d(
    b: GraphBuilder,
    x: Tensor,
    kernel: np.ndarray | GraphWeight,
    *,
    name: str,
    geometry: ConvGeometry = DEFAULT_GEOMETRY,
    bias: np.ndarray | GraphWeight | None = None,
    bn: BatchNorm | None = None,
    fold_bn: bool = True,
    act: str | None = None,
) -> Tensor:
    """``tf.nn.depthwise_conv2d``: filter ``[kh, kw, in, multiplier]``; output channel ``k*mult + q``
    comes from input channel ``k``. ONNX form: ``Conv`` with ``group = in``, weight ``[in*mult, 1, kh, kw]``."""
    k = _f32(kernel, f"{name} filter")
    if k.ndim != 4:
        raise ExportError(
            f"{name}: depthwise filter must be [kh, kw, in_channels, channel_multiplier], got shape {list(k.shape)}"
        )
    kh, kw, cin, mult = (int(v) for v in k.shape)
    if cin != x.channels:
        raise ExportError(
            f"{name}: depthwise filter expects {cin} input channels (filter shape {list(k.shape)}), "
            f"input has {x.channels}"
        )
    if mult < 1 or kh < 1 or kw < 1:
        raise ExportError(f"{name}: depthwise filter shape {list(k.shape)} has an empty dimension "
                          "(channel multiplier must be >= 1)")
    if isinstance(k, GraphWeight):  # the same [in*mult, 1, kh, kw] arrangement, done in the graph
        weight = _runtime_oihw(b, k, name, (kh, kw, 1, cin * mult), (3, 2, 0, 1))
    else:
        weight = k.reshape(kh, kw, cin * mult).transpose(2, 0, 1)[:, None, :, :]
    return _conv(b, x, weight, cin, name=name, kind=Kind.DEPTHWISE, geometry=geometry, bias=bias, bn=bn,
                 fold_bn=fold_bn, act=act)


def separable_conv2d(
    b: GraphBuilder,
    x: Tensor,
    depthwise_kernel: np.ndarray | GraphWeight,
    pointwise_kernel: np.ndarray | GraphWeight,
    *,
    name: str,
    geometry: ConvGeometry = DEFAULT_GEOMETRY,
    bias: np.ndarray | GraphWeight | None = None,
    act: str | None = None,
) -> Tensor:
    """``tf.nn.separable_conv2d``: depthwise (the geometry applies here), then a pointwise
    ``[1, 1, in*mult, out]`` conv (bias and activation after it). Records two layers,
    ``{name}_depthwise`` and ``{name}_pointwise``, whose params add up to Keras' ``SeparableConv2D``."""
    pw = _f32(pointwise_kernel, f"{name} pointwise filter")
    dw = _f32(depthwise_kernel, f"{name} depthwise filter")
    if pw.ndim != 4 or pw.shape[:2] != (1, 1):
        raise ExportError(f"{name}: pointwise filter must be [1, 1, in_channels*multiplier, out], "
                          f"got shape {list(pw.shape)}")
    if dw.ndim == 4 and pw.shape[2] != dw.shape[2] * dw.shape[3]:
        raise ExportError(
            f"{name}: pointwise filter has in_channels {pw.shape[2]}, but the depthwise stage outputs "
            f"{dw.shape[2]}*{dw.shape[3]} = {dw.shape[2] * dw.shape[3]} channels"
        )
    y = depthwise_conv2d(b, x, dw, name=f"{name}_depthwise", geometry=geometry)
    return conv2d(b, y, pw, name=f"{name}_pointwise", geometry=POINTWISE_GEOMETRY, bias=bias, act=act,
                  kind=Kind.POINTWISE)


def batch_norm(b: GraphBuilder, x: Tensor, bn: BatchNorm, name: str) -> Tensor:
    """A standalone (unfolded) batch norm, recorded as an ``other`` layer."""
    if bn.channels != x.channels:
        raise ExportError(f"{name}: batch norm has {bn.channels} channels, input has {x.channels}")
    out = b.node("BatchNormalization",
                 [x.name, b.const(f"{name}_scale", bn.gamma), b.const(f"{name}_bias", bn.beta),
                  b.const(f"{name}_mean", bn.mean), b.const(f"{name}_var", bn.var)],
                 name, epsilon=float(bn.eps))
    c = bn.channels
    b.record(LayerInfo(name=name, kind=Kind.OTHER, op_type="BatchNormalization", output_shape=channels_last(x.shape),
                       trainable=2 * c, non_trainable=2 * c, deployed_params=4 * c, onnx_nodes=[out]))
    return Tensor(out, x.shape)


# --------------------------------------------------------------------------------------------
# dense, pooling, element-wise
# --------------------------------------------------------------------------------------------
def dense(b: GraphBuilder, x: Tensor, kernel: np.ndarray, bias: np.ndarray | None, *, name: str,
          act: str | None = None) -> Tensor:
    """Keras ``Dense``: kernel ``[in, out]``; a 4-D input is flattened first."""
    k = _f32(kernel, f"{name} kernel")
    nodes = []
    if len(x.shape) != 2:
        flat = b.node("Flatten", [x.name], f"{name}_flatten", axis=1)
        nodes.append(flat)
        features = int(np.prod([int(d) for d in x.shape[1:]]))  # type: ignore[arg-type]
        x = Tensor(flat, (None, features))
    cin = int(x.shape[1])  # type: ignore[arg-type]
    if k.ndim != 2 or k.shape[0] != cin:
        raise ExportError(f"{name}: dense kernel must be [{cin}, out], got shape {list(k.shape)}")
    cout = int(k.shape[1])
    inputs = [x.name, b.const(f"{name}_W", k)]
    if bias is not None:
        bias = _f32(bias, f"{name} bias").reshape(-1)
        if bias.shape[0] != cout:
            raise ExportError(f"{name}: bias has {bias.shape[0]} values, the layer has {cout} outputs")
        inputs.append(b.const(f"{name}_B", bias))
    out = b.node("Gemm", inputs, name)
    nodes.append(out)
    y, act_nodes = activation(b, Tensor(out, (None, cout)), act, name)
    n_bias = 0 if bias is None else cout
    b.record(LayerInfo(name=name, kind=Kind.DENSE, op_type="Gemm", output_shape=[cout], trainable=int(k.size) + n_bias,
                       weight_params=int(k.size) + n_bias, deployed_params=int(k.size) + n_bias,
                       macs=cin * cout, onnx_nodes=nodes + act_nodes))
    return y


def global_avg_pool(b: GraphBuilder, x: Tensor, *, name: str, keepdims: bool = True) -> Tensor:
    out = b.node("GlobalAveragePool", [x.name], name)
    nodes = [out]
    shape: tuple[int | None, ...] = (None, x.channels, 1, 1)
    if not keepdims:
        out = b.node("Flatten", [out], f"{name}_flatten", axis=1)
        nodes.append(out)
        shape = (None, x.channels)
    b.record(LayerInfo(name=name, kind=Kind.OTHER, op_type="GlobalAveragePool", output_shape=channels_last(shape),
                       onnx_nodes=nodes))
    return Tensor(out, shape)


def _elementwise(b: GraphBuilder, op: str, x: Tensor, y: Tensor, name: str) -> Tensor:
    out = b.node(op, [x.name, y.name], name)
    b.record(LayerInfo(name=name, kind=Kind.OTHER, op_type=op, output_shape=channels_last(x.shape), onnx_nodes=[out]))
    return Tensor(out, x.shape)


def add(b: GraphBuilder, x: Tensor, y: Tensor, *, name: str) -> Tensor:
    """Residual add (shapes must match)."""
    if x.shape != y.shape:
        raise ExportError(f"{name}: cannot add shapes {channels_last(x.shape)} and {channels_last(y.shape)}")
    return _elementwise(b, "Add", x, y, name)


def multiply(b: GraphBuilder, x: Tensor, gate: Tensor, *, name: str) -> Tensor:
    """Broadcast multiply (squeeze-and-excite's channel gate)."""
    return _elementwise(b, "Mul", x, gate, name)


def squeeze_excite(b: GraphBuilder, x: Tensor, reduce_kernel: np.ndarray, reduce_bias: np.ndarray,
                   expand_kernel: np.ndarray, expand_bias: np.ndarray, *, prefix: str,
                   gate: str = "hard_sigmoid") -> Tensor:
    """MobileNetV3's SE block as Keras builds it: GAP (keepdims) → 1×1 conv + ReLU → 1×1 conv +
    hard sigmoid → multiply. Layer names follow Keras (``{prefix}squeeze_excite_conv``, …)."""
    s = global_avg_pool(b, x, name=f"{prefix}squeeze_excite_avg_pool", keepdims=True)
    s = conv2d(b, s, reduce_kernel, bias=reduce_bias, name=f"{prefix}squeeze_excite_conv", act="relu")
    s = conv2d(b, s, expand_kernel, bias=expand_bias, name=f"{prefix}squeeze_excite_conv_1", act=gate)
    return multiply(b, x, s, name=f"{prefix}squeeze_excite_mul")
