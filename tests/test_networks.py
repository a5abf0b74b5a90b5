"""MobileNet V1/V2/V3: published figures, Keras' counts and layer names, full exports run in ONNX
Runtime, BN folding, layouts, and (when installed) the same numbers as keras.applications."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from sepconv.export.errors import ExportError
from sepconv.export.graph import layer_totals
from sepconv.export.networks import build_network, list_models, make_divisible, network_layers
from sepconv.export.networks.common import correct_pad
from sepconv.export.summary import summary_dict
from sepconv.export.weights import RandomWeights
from tests.fixtures import reference
from tests.fixtures.weights import output_spread
from tests.fixtures.weights.keras_random import randomize_keras_model
from tests.numpy_reference import max_rel_err

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # see tests/test_layers.py

@pytest.fixture(scope="module")
def ref() -> dict:
    return reference.load("mobilenet_reference.json")


def account(arch: str, **kw) -> dict:
    config, layers = network_layers(arch, **kw)
    return summary_dict(config.arch, config.alpha, config.resolution, config.classes, layers) | {"_layers": layers}


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


# --------------------------------------------------------------------------------------------
# rounding and padding helpers (Keras' own definitions)
# --------------------------------------------------------------------------------------------
def test_make_divisible_is_keras():
    assert make_divisible(32 * 0.35, 8) == 16  # 11.2 -> 8 is > 10% below -> 16
    assert make_divisible(int(24 * 0.35), 8) == 8
    assert make_divisible(1280 * 1.4, 8) == 1792
    assert make_divisible(80 * 2.3) == 184
    assert make_divisible(3) == 8


def test_correct_pad_is_keras():
    assert correct_pad((224, 224), 3) == [0, 1, 0, 1]
    assert correct_pad((7, 7), 3) == [1, 1, 1, 1]
    assert correct_pad((28, 27), 5) == [1, 2, 2, 2]


# --------------------------------------------------------------------------------------------
# published figures (accounting only: no ONNX check needed, so these are fast)
# --------------------------------------------------------------------------------------------
def _within_rounding(value: float, published: float, decimals: int) -> bool:
    """``published`` is ``value`` rounded or truncated to ``decimals`` places."""
    unit = 10.0 ** -decimals
    return math.floor(value / unit + 1e-9) * unit - 1e-9 <= published <= math.ceil(value / unit - 1e-9) * unit + 1e-9


def test_v1_paper_rows(ref):
    for row in ref["mobilenet_v1_paper"]["rows"]:
        s = account("mobilenet_v1", alpha=row["alpha"], resolution=row["resolution"])
        assert _within_rounding(s["macs"] / 1e6, row["macs_m"], 0), (row, s["macs"])
        assert _within_rounding(s["weight_params"] / 1e6, row["weight_params_m"], 1), (row, s["weight_params"])


def test_v1_table2_shares(ref):
    """The paper's Table 2 (resource share per layer type) from the summary, params without BN."""
    shares = ref["mobilenet_v1_paper"]["table2_share_of_1.0_224"]
    layers = account("mobilenet_v1")["_layers"]
    macs = sum(la.macs for la in layers)
    params = sum(la.weight_params for la in layers)
    kind_of = {"conv1x1": "pointwise", "conv_dw_3x3": "depthwise", "conv_3x3": "standard", "fc": "dense"}
    for key, kind in kind_of.items():
        m = 100 * sum(la.macs for la in layers if la.kind == kind) / macs
        p = 100 * sum(la.weight_params for la in layers if la.kind == kind) / params
        assert p == pytest.approx(shares[key]["params_pct"], abs=0.05), key
        if key == "conv_3x3":
            # The paper prints 1.19%; the layer is 10.8M of 568.7M MACs = 1.91% - the paper's four
            # MAC shares add up to 99.29% with 1.19 and to 100.01% with 1.91 (a transposed digit).
            assert m == pytest.approx(1.91, abs=0.01)
        else:
            assert m == pytest.approx(shares[key]["macs_pct"], abs=0.01), key


def test_v2_slim_table_all_22_rows(ref):
    rows = ref["mobilenet_v2_slim"]["rows"]
    assert len(rows) == 22
    for alpha, resolution, macs_m, params_m in rows:
        s = account("mobilenet_v2", alpha=alpha, resolution=resolution, classes=1001)
        assert _within_rounding(s["macs"] / 1e6, macs_m, 0), (alpha, resolution, s["macs"])
        assert _within_rounding(s["weight_params"] / 1e6, params_m, 2), (alpha, resolution, s["weight_params"])


def test_keras_param_counts_exact(ref):
    keras = ref["keras_applications_param_counts"]
    for arch, key in (("mobilenet_v1", "MobileNet"), ("mobilenet_v2", "MobileNetV2"),
                      ("mobilenet_v3_large", "MobileNetV3Large"), ("mobilenet_v3_small", "MobileNetV3Small")):
        s = account(arch)
        assert s["total_params"] == keras[key]["total"], arch
        assert s["trainable_params"] == keras[key]["trainable"], arch
        assert s["non_trainable_params"] == keras[key]["total"] - keras[key]["trainable"], arch
        for alpha, total in keras[key].get("by_alpha_total", {}).items():
            assert account(arch, alpha=float(alpha))["total_params"] == total, (arch, alpha)


def test_v3_figures(ref):
    v3 = ref["mobilenet_v3"]
    for arch, key in (("mobilenet_v3_large", "large_1.0_224"), ("mobilenet_v3_small", "small_1.0_224")):
        s = account(arch)
        assert s["trainable_params"] == v3[key]["trainable_params_keras"]
        assert round(s["macs"] / 1e6, 1) == v3[key]["macs_m_as_built"]
        assert abs(s["macs"] / 1e6 - v3[key]["macs_m_paper"]) < 3  # the paper's figure for the same net
        assert _within_rounding(s["weight_params"] / 1e6, v3[key]["params_m_paper"], 1)


def test_deployed_params_are_weights_plus_folded_bias():
    s = account("mobilenet_v2")
    # every conv followed by BN gains a bias of its output channels when folded; nothing else
    bn_channels = sum(la.non_trainable // 2 for la in s["_layers"])
    assert s["deployed_params"] == s["weight_params"] + bn_channels
    assert s["deployed_params"] == s["total_params"] - 3 * bn_channels


# --------------------------------------------------------------------------------------------
# Keras layer names (what the weight importer and the profiler rely on)
# --------------------------------------------------------------------------------------------
def test_layer_names_are_keras_names():
    v1 = [la.name for la in account("mobilenet_v1")["_layers"]]
    assert v1[:3] == ["conv1", "conv_dw_1", "conv_pw_1"]
    assert v1[-3:] == ["conv_pw_13", "global_average_pooling2d", "conv_preds"]
    v2 = [la.name for la in account("mobilenet_v2")["_layers"]]
    assert v2[:6] == ["Conv1", "expanded_conv_depthwise", "expanded_conv_project", "block_1_expand",
                      "block_1_depthwise", "block_1_project"]
    assert "block_2_add" in v2 and "block_16_project" in v2 and "block_17_expand" not in v2
    assert v2[-3:] == ["Conv_1", "global_average_pooling2d", "predictions"]
    v3 = [la.name for la in account("mobilenet_v3_small")["_layers"]]
    assert v3[:7] == ["conv", "expanded_conv_depthwise", "expanded_conv_squeeze_excite_avg_pool",
                      "expanded_conv_squeeze_excite_conv", "expanded_conv_squeeze_excite_conv_1",
                      "expanded_conv_squeeze_excite_mul", "expanded_conv_project"]
    assert "expanded_conv_10_project" in v3 and "expanded_conv_11_expand" not in v3
    assert v3[-4:] == ["conv_1", "global_average_pooling2d", "conv_2", "logits"]
    large = [la.name for la in account("mobilenet_v3_large")["_layers"]]
    assert "expanded_conv_14_add" in large and "expanded_conv_6_squeeze_excite_conv" not in large
    kinds = {la.name: la.kind for la in account("mobilenet_v1")["_layers"]}
    assert (kinds["conv1"], kinds["conv_dw_5"], kinds["conv_pw_5"], kinds["conv_preds"]) == (
        "standard", "depthwise", "pointwise", "dense")


class RecordingWeights(RandomWeights):
    def __init__(self) -> None:
        super().__init__(0)
        self.asked: dict[tuple[str, str], tuple[int, ...]] = {}

    def get(self, layer, weight, shape):
        self.asked[(layer, weight)] = tuple(shape)
        return super().get(layer, weight, shape)


def test_weight_requests_use_keras_layer_and_weight_names():
    w = RecordingWeights()
    network_layers("mobilenet_v2", alpha=0.35, resolution=96, weights=w)
    assert w.asked[("Conv1", "kernel")] == (3, 3, 3, 16)
    assert w.asked[("bn_Conv1", "gamma")] == (16,)
    assert w.asked[("expanded_conv_depthwise", "depthwise_kernel")] == (3, 3, 16, 1)
    assert w.asked[("expanded_conv_depthwise_BN", "moving_variance")] == (16,)
    assert w.asked[("block_1_expand_BN", "moving_mean")] == (48,)
    assert w.asked[("Conv_1_bn", "beta")] == (1280,)
    assert w.asked[("predictions", "kernel")] == (1280, 1000)
    assert w.asked[("predictions", "bias")] == (1000,)
    w = RecordingWeights()
    network_layers("mobilenet_v1", weights=w)
    assert w.asked[("conv_dw_1_bn", "gamma")] == (32,)
    assert w.asked[("conv_preds", "kernel")] == (1, 1, 1024, 1000)
    w = RecordingWeights()
    network_layers("mobilenet_v3_large", weights=w)
    assert w.asked[("expanded_conv_3_squeeze_excite_conv", "kernel")] == (1, 1, 72, 24)
    assert w.asked[("expanded_conv_3_squeeze_excite_conv_1", "bias")] == (72,)
    assert w.asked[("conv_2", "bias")] == (1280,)
    assert w.asked[("logits", "kernel")] == (1, 1, 1280, 1000)


class WrongShapeWeights(RandomWeights):
    def get(self, layer, weight, shape):
        if layer == "block_3_project":
            shape = (*shape[:-1], shape[-1] + 1)
        return super().get(layer, weight, shape)


def test_weight_with_wrong_shape_is_a_clear_error():
    with pytest.raises(ExportError, match=r"block_3_project/kernel has shape \[1, 1, 144, 33\].*\[1, 1, 144, 32\]"):
        network_layers("mobilenet_v2", weights=WrongShapeWeights())


# --------------------------------------------------------------------------------------------
# full exports through ONNX Runtime
# --------------------------------------------------------------------------------------------
FULL = [("mobilenet_v1", 0.25, 128), ("mobilenet_v2", 0.35, 96), ("mobilenet_v3_large", 0.75, 96),
        ("mobilenet_v3_small", 1.0, 224)]


@pytest.mark.parametrize(("arch", "alpha", "resolution"), FULL)
def test_full_export_runs_in_onnxruntime(arch, alpha, resolution):
    net = build_network(arch, alpha=alpha, resolution=resolution, classes=10)
    model = net.model
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, resolution, resolution)).astype(np.float32)
    y = run(model, x)
    assert y.shape == (2, 10) and np.all(np.isfinite(y))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["architecture"] == arch and meta["input_layout"] == "NCHW" and meta["weights"].startswith("random")
    summary = json.loads(meta["sepconv.summary"])
    assert {k: v for k, v in summary.items() if k != "layers"} == {
        k: v for k, v in net.summary().items() if k != "layers"}
    # every node belongs to exactly one layer, and the layer's op_type is a node it owns
    nodes = [n.name for n in model.graph.node]
    owned = [n for la in summary["layers"] for n in la["onnx_nodes"]]
    assert sorted(owned) == sorted(nodes)
    op_of = {n.name: n.op_type for n in model.graph.node}
    for la in summary["layers"]:
        assert la["op_type"] in {op_of[n] for n in la["onnx_nodes"]}, la["name"]
    # deployed params = what the ONNX holds (minus the relu6 clip bounds)
    held = sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.dims)
    assert held == net.summary()["deployed_params"]


class SignalWeights(RandomWeights):
    """Random weights whose network output depends on its input: He-normal kernels (variance 2/fan_in,
    depthwise fan_in = kh*kw) and random BN. With Keras' Glorot kernels the depthwise layers shrink the
    signal by about the channel count each, so the logits would be the same for every input and a
    comparison of two exports could not see a wrong kernel, scale or layout."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed, randomize_bn=True)

    def get(self, layer, weight, shape):
        if weight in ("kernel", "depthwise_kernel") and len(shape) == 4:
            fan_in = shape[0] * shape[1] * (1 if weight == "depthwise_kernel" else shape[2])
            rng = self._rng(layer, f"{weight}/he")
            return rng.normal(0, np.sqrt(2.0 / fan_in), shape).astype(np.float32)
        return super().get(layer, weight, shape)


def test_bn_kept_and_folded_give_the_same_outputs():
    x = np.random.default_rng(1).uniform(-1, 1, (2, 3, 96, 96)).astype(np.float32)
    for arch in ("mobilenet_v2", "mobilenet_v3_small"):
        w = SignalWeights(3)
        folded = build_network(arch, alpha=0.5, resolution=96, weights=w, fold_bn=True)
        kept = build_network(arch, alpha=0.5, resolution=96, weights=w, fold_bn=False)
        ops = {n.op_type for n in kept.model.graph.node}
        assert "BatchNormalization" in ops
        assert "BatchNormalization" not in {n.op_type for n in folded.model.graph.node}
        a, b = run(folded.model, x), run(kept.model, x)
        assert output_spread(b) > 0.05  # the outputs depend on the input: BN scales matter
        assert max_rel_err(a, b) <= 1e-5, arch
        assert folded.summary()["total_params"] == kept.summary()["total_params"]


def test_nhwc_input_gives_the_same_outputs_and_no_top_outputs_features():
    x = np.random.default_rng(2).uniform(-1, 1, (2, 3, 64, 64)).astype(np.float32)
    w = SignalWeights(4)
    nchw = build_network("mobilenet_v1", alpha=0.25, resolution=64, weights=w)
    nhwc = build_network("mobilenet_v1", alpha=0.25, resolution=64, weights=w, input_layout="NHWC")
    expected = run(nchw.model, x)
    assert output_spread(expected) > 0.05
    assert max_rel_err(run(nhwc.model, x.transpose(0, 2, 3, 1).copy()), expected) <= 1e-5
    feats = build_network("mobilenet_v1", alpha=0.25, resolution=64, include_top=False, input_layout="NHWC")
    assert [o.name for o in feats.model.graph.output] == ["features"]
    y = run(feats.model, x.transpose(0, 2, 3, 1).copy())
    assert y.shape == (2, 2, 2, 256)


def test_symmetric_padding_differs_only_where_keras_pads_asymmetrically():
    same = account("mobilenet_v2", resolution=224)
    sym = account("mobilenet_v2", resolution=224, padding="symmetric")
    assert [la["output_shape"] for la in same["layers"]] == [la["output_shape"] for la in sym["layers"]]
    assert same["macs"] == sym["macs"]
    w = RandomWeights(5, randomize_bn=True)
    a = build_network("mobilenet_v2", alpha=0.35, resolution=96, weights=w)
    b = build_network("mobilenet_v2", alpha=0.35, resolution=96, weights=w, padding="symmetric")
    pads_a = [list(a_.ints) for n in a.model.graph.node for a_ in n.attribute if a_.name == "pads"]
    pads_b = [list(a_.ints) for n in b.model.graph.node for a_ in n.attribute if a_.name == "pads"]
    assert [0, 0, 1, 1] in pads_a and [0, 0, 1, 1] not in pads_b  # Keras' correct_pad vs torch's k//2
    assert all(p == [1, 1, 1, 1] for p in pads_b)


def test_odd_resolution_keeps_keras_v1_fixed_padding():
    """V1 pads ((0,1),(0,1)) before every stride-2 depthwise, even on odd sizes where TF SAME would not."""
    s = account("mobilenet_v1", alpha=0.25, resolution=200)  # 100 -> 50 -> 25 -> (25+1-3)//2+1 = 12
    shapes = {la["name"]: la["output_shape"] for la in s["layers"]}
    assert shapes["conv_dw_6"][:2] == [12, 12]
    v2 = account("mobilenet_v2", alpha=0.35, resolution=200)  # correct_pad on 25 -> (1,1) -> 13
    assert {la["name"]: la["output_shape"] for la in v2["layers"]}["block_6_depthwise"][:2] == [13, 13]


def test_opset_13_spells_out_hard_swish_with_the_same_outputs():
    """Opset 13 has no HardSwish: V3 still exports (as x * HardSigmoid(x)) and computes the same."""
    x = np.random.default_rng(3).uniform(-1, 1, (2, 3, 64, 64)).astype(np.float32)
    w = SignalWeights(6)
    old = build_network("mobilenet_v3_small", alpha=0.75, resolution=64, weights=w, opset=13)
    new = build_network("mobilenet_v3_small", alpha=0.75, resolution=64, weights=w, opset=17)
    assert "HardSwish" not in {n.op_type for n in old.model.graph.node}
    assert "HardSwish" in {n.op_type for n in new.model.graph.node}
    expected = run(new.model, x)
    assert output_spread(expected) > 0.05
    assert max_rel_err(run(old.model, x), expected) <= 1e-5
    assert old.summary() == new.summary()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"arch": "mobilenet_v4"}, "unknown architecture"),
        ({"alpha": 0}, "alpha must be > 0"),
        ({"alpha": -1.0}, "alpha must be > 0"),
        ({"alpha": 0.01}, "too small for mobilenet_v1"),
        ({"resolution": 31}, "too small"),
        ({"classes": 0}, "classes must be >= 1"),
        ({"padding": "valid"}, "padding must be"),
        ({"input_layout": "HWC"}, "input layout"),
        ({"opset": 7}, "opset"),
        ({"classes": 1_000_000}, "conv_preds .* 2 GiB, the most an ONNX file holds"),
    ],
)
def test_bad_network_arguments(kwargs, message):
    kwargs = {"arch": "mobilenet_v1", **kwargs}
    with pytest.raises(ExportError, match=message):
        build_network(kwargs.pop("arch"), **kwargs)


def test_accounting_matches_the_checked_model():
    net = build_network("mobilenet_v3_large", alpha=0.75, resolution=96)
    fast = account("mobilenet_v3_large", alpha=0.75, resolution=96)
    assert layer_totals(net.layers) == layer_totals(fast["_layers"])
    assert net.summary()["layers"] == fast["layers"]
    assert sorted(net.summary()) == ["alpha", "arch", "classes", "deployed_params", "layers", "macs",
                                     "non_trainable_params", "resolution", "total_params", "trainable_params",
                                     "weight_params"]


def test_archs():
    assert list_models() == ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small")


def test_registry_builds_each_architecture_and_names_them_all_when_unknown():
    from sepconv.export.networks import get_model_builder, register_model  # noqa: PLC0415

    for arch in list_models():
        assert callable(get_model_builder(arch))
        assert network_layers(arch, resolution=32)[0].arch == arch
    with pytest.raises(ExportError, match="unknown architecture 'resnet'; expected one of mobilenet_v1, mobilenet_v2, "
                                          "mobilenet_v3_large, mobilenet_v3_small"):
        get_model_builder("resnet")
    with pytest.raises(ValueError, match="already registered"):
        register_model("mobilenet_v2")(get_model_builder("mobilenet_v2"))


def test_recorded_kinds_are_the_plain_strings_of_kinds():
    from sepconv.export.graph import KINDS, Kind  # noqa: PLC0415

    assert KINDS == ("standard", "depthwise", "pointwise", "dense", "other") == tuple(Kind)
    _, layers = network_layers("mobilenet_v3_small", resolution=32)
    assert {type(la.kind) for la in layers} == {str}
    assert {la.kind for la in layers} == set(KINDS)


# --------------------------------------------------------------------------------------------
# keras.applications itself (CI installs TensorFlow/Keras; skipped when absent)
# --------------------------------------------------------------------------------------------
class KerasModelWeights:
    """A WeightSource reading a live Keras model (layer name -> its variables by weight name)."""

    random = False
    bn_epsilon = None

    def __init__(self, model) -> None:
        self.model = model

    def get(self, layer, weight, shape):
        names = (weight, "kernel") if weight == "depthwise_kernel" else (weight,)  # Keras 3 says "kernel"
        for v in self.model.get_layer(layer).weights:
            if v.name.split("/")[-1].split(":")[0] in names:
                arr = np.asarray(v.numpy(), np.float32)
                assert arr.shape == tuple(shape), (layer, weight, arr.shape, shape)
                return arr
        raise KeyError(f"{layer}/{weight}")


KERAS_CASES = [
    ("mobilenet_v1", "MobileNet", 0.25, 97, {}),
    ("mobilenet_v2", "MobileNetV2", 0.35, 97, {}),
    ("mobilenet_v3_large", "MobileNetV3Large", 0.75, 96, {"include_preprocessing": False}),
    ("mobilenet_v3_small", "MobileNetV3Small", 1.0, 99, {"include_preprocessing": False}),
]


@pytest.mark.frameworks
@pytest.mark.parametrize(("arch", "keras_name", "alpha", "resolution", "extra"), KERAS_CASES)
def test_same_outputs_and_counts_as_keras_applications(arch, keras_name, alpha, resolution, extra):
    keras = pytest.importorskip("keras")
    pytest.importorskip("tensorflow")
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, keras_name)(
        weights=None, alpha=alpha, input_shape=(resolution, resolution, 3), classes=7,
        classifier_activation=None, **extra)
    randomize_keras_model(keras, model, 1, resolution)
    net = build_network(arch, alpha=alpha, resolution=resolution, classes=7, input_layout="NHWC",
                        weights=KerasModelWeights(model))
    s = net.summary()
    assert s["total_params"] == model.count_params()
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert s["trainable_params"] == trainable
    x = np.random.default_rng(2).uniform(-1, 1, (2, resolution, resolution, 3)).astype(np.float32)
    expected = np.asarray(model(x, training=False))
    assert output_spread(expected) > 0.05  # the logits depend on the input: the comparison means something
    got = run(net.model, x)
    assert got.shape == expected.shape
    assert max_rel_err(got, expected) <= 1e-4
    # every Keras layer with weights is one of ours, under the same name
    ours = {la.name for la in net.layers}
    assert {la.name for la in model.layers if la.weights and
            not isinstance(la, keras.layers.BatchNormalization)} <= ours
