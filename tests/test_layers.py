"""The TF-exact conv layers (export/layers.py) run in ONNX Runtime against the seeds' figures, an
independent numpy reference, and (when installed) TensorFlow and PyTorch."""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
import pytest

from sepconv.export import layers as L
from sepconv.export.errors import ExportError
from sepconv.export.graph import GraphBuilder
from sepconv.export.padding import ConvGeometry
from tests.fixtures import reference
from tests.numpy_reference import (
    conv2d_nhwc,
    depthwise_conv2d_nhwc,
    max_rel_err,
    separable_conv2d_nhwc,
)

# TensorFlow's oneDNN conv kernels return garbage for some strided VALID cases (e.g. a 5x4 kernel,
# strides (1, 2) on a 12x5 input -> values ~1e17); TF's own kernels are right. Must be set before
# TensorFlow is imported.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

TOL = 1e-5


def _reference(name: str) -> dict:
    return reference.load(name)


# --------------------------------------------------------------------------------------------
# one-layer graphs
# --------------------------------------------------------------------------------------------
def single_layer(op: str, in_shape_nhwc: tuple[int, int, int, int], layout: str, *, padding="SAME", strides=1,
                 dilations=1, filters=(), bias=None, act=None, opset=17) -> tuple[GraphBuilder, object]:
    """Build ``op`` on an input of ``in_shape_nhwc``; the graph's input and output are in ``layout``."""
    n, h, w, c = in_shape_nhwc
    b = GraphBuilder("single", opset=opset)
    x = L.network_input(b, "input", layout, c, h, w)
    kw = {"name": "op", "geometry": ConvGeometry(strides, padding, dilations, layout), "act": act}
    if op == "conv2d":
        y = L.conv2d(b, x, filters[0], bias=bias, **kw)
    elif op == "depthwise_conv2d":
        y = L.depthwise_conv2d(b, x, filters[0], bias=bias, **kw)
    else:
        y = L.separable_conv2d(b, x, filters[0], filters[1], bias=bias, **kw)
    L.network_output(b, y, "output", layout)
    return b, b.to_model()


def run_single(op: str, x_nhwc: np.ndarray, layout: str, **kw) -> tuple[np.ndarray, GraphBuilder]:
    b, model = single_layer(op, x_nhwc.shape, layout, **kw)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = x_nhwc if layout == "NHWC" else x_nhwc.transpose(0, 3, 1, 2)
    y = sess.run(None, {"input": np.ascontiguousarray(feed, np.float32)})[0]
    return (y if layout == "NHWC" else y.transpose(0, 2, 3, 1)), b


# --------------------------------------------------------------------------------------------
# the seeds' figures
# --------------------------------------------------------------------------------------------
def test_keras_layer_param_counts_on_224x224x10():
    ref = _reference("mobilenet_reference.json")["keras_layer_param_counts"]
    rng = np.random.default_rng(0)
    b = GraphBuilder("seed003")
    x = L.network_input(b, "input", "NHWC", 10, 224, 224)
    # Keras defaults: use_bias=True for all three
    L.conv2d(b, x, rng.normal(size=(3, 3, 10, 32)), bias=np.zeros(32), name="conv2d")
    L.depthwise_conv2d(b, x, rng.normal(size=(3, 3, 10, 1)), bias=np.zeros(10), name="depthwise")
    L.separable_conv2d(b, x, rng.normal(size=(3, 3, 10, 1)), rng.normal(size=(1, 1, 10, 32)), bias=np.zeros(32),
                       name="separable")
    params = {la.name: la.params for la in b.layers}
    assert params["conv2d"] == ref["Conv2D(32)"] == 2912
    assert params["depthwise"] == ref["DepthwiseConv2D()"] == 100
    assert params["separable_depthwise"] + params["separable_pointwise"] == ref["SeparableConv2D(32)"] == 442


def test_seed_parameter_example_5x5x3_to_4():
    ref = _reference("mobilenet_reference.json")["seed_parameter_example"]
    b = GraphBuilder("seed001")
    x = L.network_input(b, "input", "NHWC", 3, 5, 5)
    L.conv2d(b, x, np.ones((3, 3, 3, 4)), name="standard")
    L.separable_conv2d(b, x, np.ones((3, 3, 3, 1)), np.ones((1, 1, 3, 4)), name="sep")
    p = {la.name: la.params for la in b.layers}
    assert p["standard"] == ref["standard"] == 108
    assert p["sep_depthwise"] == ref["depthwise"] == 27
    assert p["sep_pointwise"] == ref["pointwise"] == 12
    assert p["sep_depthwise"] + p["sep_pointwise"] == ref["separable"] == 39
    kinds = {la.name: la.kind for la in b.layers}
    assert kinds == {"standard": "standard", "sep_depthwise": "depthwise", "sep_pointwise": "pointwise"}


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_seed_conv_examples_in_onnxruntime(layout):
    ex = _reference("seed_conv_examples.json")
    x = np.array(ex["input_nhwc"], np.float32)
    f = np.array(ex["filter"], np.float32)
    y, b = run_single("conv2d", x, layout, filters=(f,), padding=ex["padding"], strides=ex["strides"])
    np.testing.assert_array_equal(y, np.array(ex["conv2d_expected"], np.float32))
    y, b = run_single("depthwise_conv2d", x, layout, filters=(f,), padding=ex["padding"], strides=ex["strides"])
    np.testing.assert_array_equal(y, np.array(ex["depthwise_conv2d_expected"], np.float32))
    assert b.layers[0].macs == 2 * 2 * 3 * 3 * 1 * 4  # H_out*W_out*kh*kw*(C_in/group)*C_out


def test_separable_cost_ratio_matches_1_over_n_plus_1_over_dk2():
    b = GraphBuilder("ratio")
    x = L.network_input(b, "input", "NHWC", 64, 28, 28)
    std = L.conv2d(b, x, np.zeros((3, 3, 64, 128), np.float32), name="std")
    del std
    L.separable_conv2d(b, x, np.zeros((3, 3, 64, 1), np.float32), np.zeros((1, 1, 64, 128), np.float32), name="sep")
    m = {la.name: la.macs for la in b.layers}
    ratio = (m["sep_depthwise"] + m["sep_pointwise"]) / m["std"]
    assert ratio == pytest.approx(1 / 128 + 1 / 9, rel=1e-12)


# --------------------------------------------------------------------------------------------
# random cases vs the numpy reference
# --------------------------------------------------------------------------------------------
def random_cases(n: int, seed: int, *, max_stride: int = 3, max_dilation: int = 3, allow_both: bool = True,
                 equal_strides: bool = False):
    """Random conv problems: odd/even sizes, strides 1-3, dilations 1-3, all paddings, multipliers 1-3."""
    rng = np.random.default_rng(seed)
    ops = ("conv2d", "depthwise_conv2d", "separable_conv2d")
    paddings = ("SAME", "VALID", "SYMMETRIC", "explicit")
    cases = []
    while len(cases) < n:
        op = ops[len(cases) % 3]
        pad = paddings[(len(cases) // 3) % 4]
        kh, kw = int(rng.integers(1, 6)), int(rng.integers(1, 6))
        sh, sw = int(rng.integers(1, max_stride + 1)), int(rng.integers(1, max_stride + 1))
        dh, dw = int(rng.integers(1, max_dilation + 1)), int(rng.integers(1, max_dilation + 1))
        if equal_strides:
            sw = sh
        if not allow_both and (max(sh, sw) > 1 and max(dh, dw) > 1):
            if rng.random() < 0.5:
                sh = sw = 1
            else:
                dh = dw = 1
        h, w = int(rng.integers(3, 14)), int(rng.integers(3, 14))
        c, m, o = int(rng.integers(1, 6)), int(rng.integers(1, 4)), int(rng.integers(1, 7))
        if pad == "explicit":
            padding = [[0, 0], [int(rng.integers(0, 3)), int(rng.integers(0, 3))],
                       [int(rng.integers(0, 3)), int(rng.integers(0, 3))], [0, 0]]
        else:
            padding = pad
        # skip problems whose (dilated) kernel does not fit the padded input
        eff_h, eff_w = (kh - 1) * dh + 1, (kw - 1) * dw + 1
        if pad == "VALID" and (eff_h > h or eff_w > w):
            continue
        if pad == "explicit" and (eff_h > h + sum(padding[1]) or eff_w > w + sum(padding[2])):
            continue
        if pad == "SYMMETRIC" and (eff_h > h + 2 * (eff_h // 2) or eff_w > w + 2 * (eff_w // 2)):
            continue
        cases.append(dict(op=op, padding=padding, k=(kh, kw), s=(sh, sw), d=(dh, dw), hw=(h, w), c=c, m=m, o=o,
                          n=int(rng.integers(1, 3)), seed=int(rng.integers(1 << 30))))
    return cases


def case_arrays(case):
    rng = np.random.default_rng(case["seed"])
    (h, w), c, m, o, (kh, kw) = case["hw"], case["c"], case["m"], case["o"], case["k"]
    x = rng.normal(size=(case["n"], h, w, c)).astype(np.float32)
    if case["op"] == "conv2d":
        filters = (rng.normal(size=(kh, kw, c, o)).astype(np.float32),)
    elif case["op"] == "depthwise_conv2d":
        filters = (rng.normal(size=(kh, kw, c, m)).astype(np.float32),)
    else:
        filters = (rng.normal(size=(kh, kw, c, m)).astype(np.float32),
                   rng.normal(size=(1, 1, c * m, o)).astype(np.float32))
    return x, filters


def numpy_expected(case, x, filters):
    kw = {"strides": case["s"], "padding": case["padding"], "dilations": case["d"]}
    if case["op"] == "conv2d":
        return conv2d_nhwc(x, filters[0], **kw)
    if case["op"] == "depthwise_conv2d":
        return depthwise_conv2d_nhwc(x, filters[0], **kw)
    return separable_conv2d_nhwc(x, filters[0], filters[1], **kw)


def _layout_padding(padding, layout):
    """The explicit 4-pair form is in the input's layout (NCHW puts the channel pair second)."""
    if isinstance(padding, list) and layout == "NCHW":
        return [padding[0], padding[3], padding[1], padding[2]]
    return padding


CASES = random_cases(72, seed=1234)


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_random_convs_match_numpy_reference(layout):
    failures = []
    for case in CASES:
        x, filters = case_arrays(case)
        y, b = run_single(case["op"], x, layout, filters=filters, padding=_layout_padding(case["padding"], layout),
                          strides=list(case["s"]), dilations=list(case["d"]))
        ref = numpy_expected(case, x, filters)
        if y.shape != ref.shape or max_rel_err(y, ref) > TOL:
            failures.append((case, y.shape, ref.shape, max_rel_err(y, ref) if y.shape == ref.shape else None))
        # accounting: multiply-adds as DESIGN.md defines them
        n, ho, wo, co = ref.shape
        macs = sum(la.macs for la in b.layers)
        kh, kw = case["k"]
        if case["op"] == "conv2d":
            assert macs == ho * wo * kh * kw * case["c"] * co
        elif case["op"] == "depthwise_conv2d":
            assert macs == ho * wo * kh * kw * co
        else:
            assert macs == ho * wo * kh * kw * case["c"] * case["m"] + ho * wo * case["c"] * case["m"] * co
    assert not failures, failures[:3]


def test_cases_cover_the_space():
    ops = {c["op"] for c in CASES}
    pads = {c["padding"] if isinstance(c["padding"], str) else "explicit" for c in CASES}
    assert ops == {"conv2d", "depthwise_conv2d", "separable_conv2d"}
    assert pads == {"SAME", "VALID", "SYMMETRIC", "explicit"}
    assert {s for c in CASES for s in c["s"]} == {1, 2, 3}
    assert {d for c in CASES for d in c["d"]} == {1, 2, 3}
    assert {c["m"] for c in CASES if c["op"] != "conv2d"} == {1, 2, 3}
    assert {c["hw"][0] % 2 for c in CASES} == {0, 1}


@pytest.mark.parametrize("opset", [13, 17])  # opset 13 has no HardSwish operator: spelt out
def test_bias_and_activations(opset):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(1, 7, 6, 3)).astype(np.float32) * 4
    f = rng.normal(size=(3, 3, 3, 4)).astype(np.float32)
    bias = rng.normal(size=(4,)).astype(np.float32)
    base = conv2d_nhwc(x, f, padding="SAME") + bias
    expect = {"relu": np.maximum(base, 0), "relu6": np.clip(base, 0, 6),
              "hard_sigmoid": np.clip(base / 6 + 0.5, 0, 1), "hard_swish": base * np.clip(base + 3, 0, 6) / 6}
    for act, ref in expect.items():
        y, _ = run_single("conv2d", x, "NHWC", filters=(f,), bias=bias, act=act, opset=opset)
        assert max_rel_err(y, ref) <= TOL, act


@pytest.mark.parametrize(("op", "filter_shape"), [("conv2d", (3, 3, 4, 6)), ("depthwise_conv2d", (3, 3, 4, 2))])
def test_folded_batch_norm_equals_the_kept_one(op, filter_shape):
    """BN folded into the kernel and bias gives what a separate BatchNormalization node gives."""
    rng = np.random.default_rng(11)
    x = rng.normal(size=(2, 9, 8, 4)).astype(np.float32)
    f = rng.normal(size=filter_shape).astype(np.float32)
    cout = filter_shape[3] * (filter_shape[2] if op == "depthwise_conv2d" else 1)
    bias = rng.normal(size=cout).astype(np.float32)
    bn = L.BatchNorm(gamma=rng.uniform(0.5, 1.5, cout), beta=rng.normal(0, 0.5, cout),
                     mean=rng.normal(0, 0.5, cout), var=rng.uniform(0.1, 2.0, cout), eps=1e-3)
    outputs = {}
    for fold in (True, False):
        b = GraphBuilder("bn")
        t = L.network_input(b, "input", "NHWC", 4, 9, 8)
        layer = getattr(L, op)
        t = layer(b, t, f, name="op", geometry=ConvGeometry(strides=2), bias=bias, bn=bn, fold_bn=fold, act="relu6")
        L.network_output(b, t, "output", "NHWC")
        ops = {n.op_type for n in b.nodes}
        assert ("BatchNormalization" in ops) is not fold
        assert b.layers[0].params == f.size + cout + 4 * cout  # Keras: kernel, bias, gamma, beta, mean, var
        sess = ort.InferenceSession(b.to_model().SerializeToString(), providers=["CPUExecutionProvider"])
        outputs[fold] = sess.run(None, {"input": x})[0]
    base = (conv2d_nhwc if op == "conv2d" else depthwise_conv2d_nhwc)(x, f, strides=(2, 2), padding="SAME") + bias
    expected = np.clip((base - bn.mean) / np.sqrt(bn.var + bn.eps) * bn.gamma + bn.beta, 0, 6)
    assert max_rel_err(outputs[False], expected) <= TOL
    assert max_rel_err(outputs[True], outputs[False]) <= TOL


# --------------------------------------------------------------------------------------------
# bad arguments
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("op", "filters", "kw", "message"),
    [
        ("conv2d", [(9, 9, 3, 4)], {"padding": "VALID"}, "larger than the padded input"),
        ("depthwise_conv2d", [(3, 3, 3, 0)], {}, "channel multiplier"),
        ("conv2d", [(3, 3, 5, 4)], {}, "input channels"),
        ("depthwise_conv2d", [(3, 3, 2, 1)], {}, "input channels"),
        ("separable_conv2d", [(3, 3, 3, 2), (1, 1, 3, 8)], {}, "depthwise stage outputs"),
        ("conv2d", [(3, 3, 3)], {}, "[kh, kw, in, out]"),
        ("conv2d", [(3, 3, 3, 4)], {"strides": 0}, "strides must be >= 1"),
        ("conv2d", [(3, 3, 3, 4)], {"padding": "FULL"}, "padding must be"),
    ],
)
def test_bad_layer_arguments_raise_export_error(op, filters, kw, message):
    arrays = tuple(np.zeros(s, np.float32) for s in filters)
    with pytest.raises(ExportError, match=None) as err:
        single_layer(op, (1, 5, 5, 3), "NHWC", filters=arrays, **kw)
    assert message in str(err.value)


# --------------------------------------------------------------------------------------------
# the same cases against TensorFlow and PyTorch (CI installs them; skipped when absent)
# --------------------------------------------------------------------------------------------
def _explicit_pads(case, x_shape):
    """The padding case as [[top, bottom], [left, right]]."""
    from sepconv.export.padding import ConvGeometry  # noqa: PLC0415 - only for translating into the frameworks

    pads = ConvGeometry(case["s"], case["padding"], case["d"]).pads(x_shape[1:3], case["k"])
    return [[pads.top, pads.bottom], [pads.left, pads.right]]


@pytest.mark.frameworks
def test_random_convs_match_tensorflow():
    tf = pytest.importorskip("tensorflow")
    # TF's CPU kernels refuse strides > 1 together with dilations > 1, and unequal depthwise strides
    cases = random_cases(48, seed=99, allow_both=False, equal_strides=True)
    failures = []
    for case in cases:
        x, filters = case_arrays(case)
        pad = case["padding"]
        if pad == "SYMMETRIC" or (case["op"] == "separable_conv2d" and isinstance(pad, list)):
            pad = [[0, 0], *_explicit_pads(case, x.shape), [0, 0]]
            if case["op"] == "separable_conv2d":  # tf.nn.separable_conv2d takes SAME/VALID only
                pairs = _explicit_pads(case, x.shape)
                x_tf = np.pad(x, [[0, 0], pairs[0], pairs[1], [0, 0]])
                pad = "VALID"
            else:
                x_tf = x
        else:
            x_tf = x
        s = [1, *case["s"], 1]
        if case["op"] == "conv2d":
            ref = tf.nn.conv2d(x_tf, filters[0], strides=s, padding=pad, dilations=list(case["d"])).numpy()
        elif case["op"] == "depthwise_conv2d":
            ref = tf.nn.depthwise_conv2d(x_tf, filters[0], strides=s, padding=pad, dilations=list(case["d"])).numpy()
        else:
            ref = tf.nn.separable_conv2d(x_tf, filters[0], filters[1], strides=s, padding=pad,
                                         dilations=list(case["d"])).numpy()
        for layout in ("NHWC", "NCHW"):
            y, _ = run_single(case["op"], x, layout, filters=filters,
                              padding=_layout_padding(case["padding"], layout),
                              strides=list(case["s"]), dilations=list(case["d"]))
            if y.shape != ref.shape or max_rel_err(y, ref) > TOL:
                failures.append((case, layout, y.shape, ref.shape))
    assert not failures, failures[:3]


@pytest.mark.frameworks
def test_random_convs_match_pytorch():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F  # noqa: N812, PLC0415

    failures = []
    for case in random_cases(48, seed=77):
        x, filters = case_arrays(case)
        (pt, pb), (pl, pr) = _explicit_pads(case, x.shape)
        xt = F.pad(torch.from_numpy(x).permute(0, 3, 1, 2), (pl, pr, pt, pb))
        c = case["c"]
        kw = {"stride": case["s"], "dilation": case["d"]}
        if case["op"] == "conv2d":
            ref = F.conv2d(xt, torch.from_numpy(filters[0]).permute(3, 2, 0, 1), **kw)
        else:
            kh, kwd, _, m = filters[0].shape
            dw = torch.from_numpy(filters[0].reshape(kh, kwd, c * m)).permute(2, 0, 1)[:, None]
            ref = F.conv2d(xt, dw, groups=c, **kw)
            if case["op"] == "separable_conv2d":
                ref = F.conv2d(ref, torch.from_numpy(filters[1]).permute(3, 2, 0, 1))
        ref = ref.permute(0, 2, 3, 1).numpy()
        y, _ = run_single(case["op"], x, "NCHW", filters=filters, padding=_layout_padding(case["padding"], "NCHW"),
                          strides=list(case["s"]), dilations=list(case["d"]))
        if y.shape != ref.shape or max_rel_err(y, ref) > TOL:
            failures.append((case, y.shape, ref.shape))
    assert not failures, failures[:3]


# --------------------------------------------------------------------------------------------
# ConvGeometry: TF's stride/padding/dilation arguments, read once
# --------------------------------------------------------------------------------------------
def test_conv_geometry_reads_every_tf_form_once():
    from sepconv.export.padding import ConvGeometry, Pads  # noqa: PLC0415

    g = ConvGeometry()
    assert (g.strides, g.padding, g.dilations, g.data_format) == ((1, 1), "SAME", (1, 1), "NHWC")
    assert ConvGeometry([1, 2, 3, 1], "same", [1, 1, 1, 1]) == ConvGeometry((2, 3), "SAME", 1)
    assert ConvGeometry([1, 1, 2, 3], "VALID", data_format="NCHW").strides == (2, 3)
    nhwc = ConvGeometry(padding=[[0, 0], [1, 2], [3, 4], [0, 0]])
    nchw = ConvGeometry(padding=[[0, 0], [0, 0], [1, 2], [3, 4]], data_format="NCHW")
    assert nhwc.padding == nchw.padding == Pads(1, 2, 3, 4)
    assert len({ConvGeometry(2), ConvGeometry([2, 2]), ConvGeometry([1, 2, 2, 1])}) == 1  # hashable, one form
    # TF SAME on 7x6 with a 3x3 kernel, strides 2: out 4x3, pads (1, 1) and (0, 1)
    pads, out = ConvGeometry(2).resolve((7, 6), (3, 3))
    assert (pads, out) == (Pads(1, 1, 0, 1), (4, 3))
    assert ConvGeometry(2).resolved((7, 6), (3, 3)) == ConvGeometry(2, Pads(1, 1, 0, 1))
    assert ConvGeometry(padding="SYMMETRIC", dilations=2).pads((5, 5), (3, 3)) == Pads(2, 2, 2, 2)
    for kwargs, message in (({"strides": 0}, "strides must be >= 1"), ({"dilations": [1, 2, 3]}, "1, 2 or 4"),
                            ({"padding": "FULL"}, "padding must be"), ({"data_format": "HWC"}, "NHWC or NCHW"),
                            ({"padding": [[0, 0], [-1, 0], [0, 0], [0, 0]]}, ">= 0")):
        with pytest.raises(ExportError, match=message):
            ConvGeometry(**kwargs)
    with pytest.raises(ExportError, match="larger than the padded input"):
        ConvGeometry(padding="VALID").resolve((2, 2), (3, 3))
