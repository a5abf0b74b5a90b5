"""The ``/v1/conv`` graphs: ``export.layers`` with run-time weights (``GraphWeight``) must compute and count
exactly what the same layers do with baked-in arrays, and the graph depends on shapes only."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from sepconv.export import layers
from sepconv.export.errors import ExportError
from sepconv.export.graph import GraphBuilder
from sepconv.export.padding import ConvGeometry, Pads
from sepconv.export.single_op import ConvKey, build
from sepconv.service.conv.cache import CompiledConv, ConvCache


def _session(b: GraphBuilder) -> ort.InferenceSession:
    return ort.InferenceSession(b.to_model().SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("op", ["conv2d", "depthwise_conv2d", "separable_conv2d"])
def test_runtime_weights_equal_baked_weights(op: str, layout: str) -> None:
    rng = np.random.default_rng(11)
    c, h, w = 3, 7, 6
    shapes = {"conv2d": [(3, 2, 3, 4)], "depthwise_conv2d": [(2, 3, 3, 2)],
              "separable_conv2d": [(3, 3, 3, 3), (1, 1, 9, 5)]}[op]
    weights = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    out_c = {"conv2d": 4, "depthwise_conv2d": 6, "separable_conv2d": 5}[op]
    bias = rng.standard_normal(out_c).astype(np.float32)
    names = ["depthwise_filter", "pointwise_filter"] if op == "separable_conv2d" else ["filter"]
    args = dict(geometry=ConvGeometry(strides=[2, 1], padding="SAME", dilations=1, data_format=layout), act="relu6")

    def graph(runtime: bool) -> GraphBuilder:
        b = GraphBuilder("g")
        x = layers.network_input(b, "input", layout, c, h, w)
        ws = [layers.GraphWeight(n, s) for n, s in zip(names, shapes, strict=True)] if runtime else weights
        bb = layers.GraphWeight("bias", (out_c,)) if runtime else bias
        fn = getattr(layers, op)
        y = fn(b, x, *ws, name="layer", bias=bb, **args)
        layers.network_output(b, y, "output", layout)
        return b

    baked, runtime = graph(False), graph(True)
    x = rng.standard_normal((2, h, w, c) if layout == "NHWC" else (2, c, h, w)).astype(np.float32)
    y_baked = _session(baked).run(None, {"input": x})[0]
    feeds = {"input": x, "bias": bias, **dict(zip(names, weights, strict=True))}
    y_runtime = _session(runtime).run(None, feeds)[0]
    np.testing.assert_allclose(y_runtime, y_baked, rtol=1e-6, atol=1e-6)
    # no weight is baked in: what is left is int64 reshape targets and relu6's scalar bounds
    assert all(i.data_type == 7 or not i.dims for i in runtime.initializers)
    for a, b in zip(baked.layers, runtime.layers, strict=True):
        assert (a.name, a.kind, a.params, a.macs, a.output_shape) == (b.name, b.kind, b.params, b.macs,
                                                                        b.output_shape)
    assert [i.name for i in runtime.inputs] == ["input", *names, "bias"]


def test_runtime_weights_refuse_bn_folding() -> None:
    b = GraphBuilder("g")
    x = layers.network_input(b, "input", "NHWC", 2, 4, 4)
    bn = layers.BatchNorm(np.ones(3), np.zeros(3), np.zeros(3), np.ones(3))
    with pytest.raises(ExportError, match="folding needs constant weights"):
        layers.conv2d(b, x, layers.GraphWeight("filter", (3, 3, 2, 3)), name="c", bn=bn)


def _key(**overrides) -> ConvKey:
    base = dict(op="separable_conv2d", chw=(4, 8, 8), filter_shapes=((3, 3, 4, 2), (1, 1, 8, 6)),
                geometry=ConvGeometry(strides=(1, 1), padding=Pads(1, 1, 1, 1), dilations=(1, 1), data_format="NHWC"),
                activation=None, bias=True, providers=("CPUExecutionProvider",))
    return ConvKey(**{**base, **overrides})


def test_graph_accounting_and_single_symbolic_batch() -> None:
    g = build(_key())
    assert g.out_shape == (8, 8, 6)
    assert g.params == 3 * 3 * 4 * 2 + 8 * 6 + 6
    assert g.macs == 64 * 9 * 8 + 64 * 8 * 6
    assert g.standard_conv_macs == 64 * 9 * 4 * 6
    assert g.max_activation_elements == 8 * 8 * 8  # the depthwise output is the largest tensor
    model = g.to_onnx()
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # batch is symbolic
    assert not [i for i in model.graph.initializer if i.data_type == 1]  # no float constants: filters are inputs


def test_cache_is_a_bounded_lru_with_counters() -> None:
    cache = ConvCache(2)
    built: list[ConvKey] = []

    def builder(key: ConvKey):
        def make() -> CompiledConv:
            built.append(key)
            return CompiledConv(graph=build(key), session=None, provider="CPUExecutionProvider")
        return make

    k1, k2, k3 = _key(), _key(geometry=ConvGeometry(strides=2, padding=Pads(0, 1, 0, 1))), _key(activation="relu")
    assert cache.get_or_build(k1, builder(k1))[1] is False
    assert cache.get_or_build(k1, builder(k1))[1] is True
    cache.get_or_build(k2, builder(k2))
    cache.get_or_build(k1, builder(k1))  # k1 most recent -> k2 is evicted next
    cache.get_or_build(k3, builder(k3))
    assert cache.get(k2) is None and cache.get(k1) is not None
    assert cache.stats() == {"size": 2, "capacity": 2, "hits": 2, "misses": 3, "builds": 3, "evictions": 1}
    assert built == [k1, k2, k3]
