"""Many random ``/v1/conv`` cases per op against the independent numpy reference (and TensorFlow if installed).

Shapes, strides 1-3, dilations 1-3 (``dilations`` or its alias ``rate``), SAME / VALID / explicit padding,
channel multipliers 1-3, NHWC and NCHW, odd and even sizes, bias, activations, both tensor encodings.
Every case is a new graph signature, so each also exercises graph building and session creation.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pytest

from sepconv.service.app import create_app
from sepconv.service.settings import Settings
from tests.numpy_reference import conv2d_nhwc, depthwise_conv2d_nhwc, max_rel_err, separable_conv2d_nhwc
from tests.serving import running_server

OPS = ("conv2d", "depthwise_conv2d", "separable_conv2d")
CASES_PER_OP = 40


@dataclass
class Case:
    op: str
    x: np.ndarray  # NHWC
    filters: list[np.ndarray]
    strides: tuple[int, int]
    dilations: tuple[int, int]
    padding: Any  # "SAME" | "VALID" | [[0,0],[t,b],[l,r],[0,0]] (NHWC form)
    data_format: str
    bias: np.ndarray | None
    activation: str | None
    encoding: str
    use_rate: bool
    four_element_strides: bool
    body: dict = field(default_factory=dict)


def _fits(size: int, k: int, d: int, pads: tuple[int, int]) -> bool:
    return (k - 1) * d + 1 <= size + sum(pads)


def make_case(op: str, rng: np.random.Generator) -> Case:
    while True:
        n = int(rng.integers(1, 3))
        h, w = (int(v) for v in rng.integers(1, 11, size=2))
        c = int(rng.integers(1, 5))
        kh, kw = (int(v) for v in rng.integers(1, 5, size=2))
        strides = tuple(int(v) for v in rng.integers(1, 4, size=2))
        dilations = tuple(int(v) for v in rng.integers(1, 4, size=2))
        if op != "conv2d" and max(strides) > 1 and max(dilations) > 1:  # TF refuses that combination
            if rng.random() < 0.5:
                strides = (1, 1)
            else:
                dilations = (1, 1)
        kind = rng.choice(["SAME", "VALID", "explicit"])
        if kind == "explicit":
            t, b, left, r = (int(v) for v in rng.integers(0, 3, size=4))
            padding: Any = [[0, 0], [t, b], [left, r], [0, 0]]
            ph, pw = (t, b), (left, r)
        else:
            padding = str(kind)
            ph = pw = (0, 0)
        if padding != "SAME" and not (_fits(h, kh, dilations[0], ph) and _fits(w, kw, dilations[1], pw)):
            continue
        break
    mult = int(rng.integers(1, 4))
    cout = int(rng.integers(1, 6))
    if op == "conv2d":
        filters = [rng.standard_normal((kh, kw, c, cout))]
        out_c = cout
    elif op == "depthwise_conv2d":
        filters = [rng.standard_normal((kh, kw, c, mult))]
        out_c = c * mult
    else:
        filters = [rng.standard_normal((kh, kw, c, mult)), rng.standard_normal((1, 1, c * mult, cout))]
        out_c = cout
    bias = rng.standard_normal(out_c).astype(np.float32) if rng.random() < 0.5 else None
    return Case(
        op=op,
        x=rng.standard_normal((n, h, w, c)).astype(np.float32),
        filters=[f.astype(np.float32) for f in filters],
        strides=strides,  # type: ignore[arg-type]
        dilations=dilations,  # type: ignore[arg-type]
        padding=padding,
        data_format=str(rng.choice(["NHWC", "NCHW"])),
        bias=bias,
        activation=rng.choice([None, "relu", "relu6"]),
        encoding=str(rng.choice(["list", "b64"])),
        use_rate=bool(rng.random() < 0.3),
        four_element_strides=bool(rng.random() < 0.3),
    )


def _enc(a: np.ndarray, encoding: str) -> Any:
    if encoding == "list":
        return a.tolist()
    arr = np.ascontiguousarray(a, "<f4")
    return {"shape": list(arr.shape), "datatype": "FP32", "b64": base64.b64encode(arr.tobytes()).decode()}


def _dec(v: Any) -> np.ndarray:
    if isinstance(v, dict):
        return np.frombuffer(base64.b64decode(v["b64"]), "<f4").reshape(v["shape"])
    return np.array(v, np.float32)


def request_body(case: Case) -> dict:
    nchw = case.data_format == "NCHW"
    x = case.x.transpose(0, 3, 1, 2) if nchw else case.x
    body: dict[str, Any] = {"input": _enc(x, case.encoding), "data_format": case.data_format}
    names = ["depthwise_filter", "pointwise_filter"] if case.op == "separable_conv2d" else ["filter"]
    for name, f in zip(names, case.filters, strict=True):
        body[name] = _enc(f, case.encoding)
    sh, sw = case.strides
    if case.four_element_strides:
        body["strides"] = [1, 1, sh, sw] if nchw else [1, sh, sw, 1]
    else:
        body["strides"] = [sh, sw]
    body["rate" if case.use_rate else "dilations"] = list(case.dilations)
    if isinstance(case.padding, list) and nchw:
        body["padding"] = [[0, 0], [0, 0], case.padding[1], case.padding[2]]
    else:
        body["padding"] = case.padding
    if case.bias is not None:
        body["bias"] = _enc(case.bias, case.encoding)
    if case.activation is not None:
        body["activation"] = case.activation
    return body


def numpy_expected(case: Case) -> np.ndarray:
    args = (case.strides, case.padding, case.dilations)
    if case.op == "conv2d":
        y = conv2d_nhwc(case.x, case.filters[0], *args)
    elif case.op == "depthwise_conv2d":
        y = depthwise_conv2d_nhwc(case.x, case.filters[0], *args)
    else:
        y = separable_conv2d_nhwc(case.x, case.filters[0], case.filters[1], *args)
    return _post_ops(case, y)


def _post_ops(case: Case, y: np.ndarray) -> np.ndarray:
    if case.bias is not None:
        y = y + case.bias
    if case.activation == "relu":
        y = np.maximum(y, 0)
    elif case.activation == "relu6":
        y = np.clip(y, 0, 6)
    return y


def expected_accounting(case: Case, out_nhwc: tuple[int, ...]) -> tuple[int, int, int]:
    """(params, macs, standard_conv_macs) from first principles (Keras' counts, the papers' MACs)."""
    _, ho, wo, cout = out_nhwc
    kh, kw, c, last = case.filters[0].shape
    nb = 0 if case.bias is None else cout
    if case.op == "conv2d":
        return kh * kw * c * last + nb, ho * wo * kh * kw * c * cout, ho * wo * kh * kw * c * cout
    if case.op == "depthwise_conv2d":
        return kh * kw * c * last + nb, ho * wo * kh * kw * c * last, ho * wo * kh * kw * c * cout
    dw_out = c * last
    return (kh * kw * c * last + dw_out * cout + nb, ho * wo * kh * kw * dw_out + ho * wo * dw_out * cout,
            ho * wo * kh * kw * c * cout)


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory):
    settings = Settings(repo=tmp_path_factory.mktemp("empty_repo"), providers="cpu", load_at_startup=False,
                        conv_cache_size=16)
    with running_server(create_app(settings)) as url, httpx.Client(base_url=url, timeout=60) as c:
        yield c


def run_case(http: httpx.Client, case: Case) -> tuple[np.ndarray, dict]:
    r = http.post(f"/v1/conv/{case.op}", json=request_body(case))
    assert r.status_code == 200, (r.text, case)
    out = r.json()
    y = _dec(out["output"])
    assert isinstance(out["output"], dict) == (case.encoding == "b64")
    assert list(y.shape) == out["shape"]
    if case.data_format == "NCHW":
        y = y.transpose(0, 2, 3, 1)
    return y, out


@pytest.mark.parametrize("op", OPS)
def test_random_cases_match_numpy_reference(http: httpx.Client, op: str) -> None:
    rng = np.random.default_rng(sum(map(ord, op)))
    seen = {"SAME": 0, "VALID": 0, "explicit": 0, "NCHW": 0, "stride>1": 0, "dilation>1": 0, "mult>1": 0}
    for i in range(CASES_PER_OP):
        case = make_case(op, rng)
        y, out = run_case(http, case)
        ref = numpy_expected(case)
        assert y.shape == ref.shape, (i, case)
        err = max_rel_err(y, ref)
        assert err < 1e-5, (i, err, case)
        params, macs, std = expected_accounting(case, ref.shape)
        assert (out["params"], out["macs"], out["standard_conv_macs"]) == (params, macs, std), (i, case)
        assert out["cost_ratio"] == pytest.approx(macs / std, rel=1e-12)
        seen[case.padding if isinstance(case.padding, str) else "explicit"] += 1
        seen["NCHW"] += case.data_format == "NCHW"
        seen["stride>1"] += max(case.strides) > 1
        seen["dilation>1"] += max(case.dilations) > 1
        seen["mult>1"] += op != "conv2d" and case.filters[0].shape[3] > 1
    # the generator really covered the variety it claims
    assert all(v > 0 for k, v in seen.items() if not (op == "conv2d" and k == "mult>1")), seen


@pytest.mark.frameworks
@pytest.mark.parametrize("op", OPS)
def test_random_cases_match_tensorflow(http: httpx.Client, op: str) -> None:
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(1000 + sum(map(ord, op)))
    for i in range(CASES_PER_OP // 2):
        case = make_case(op, rng)
        if op != "conv2d":
            # TF's depthwise kernel only implements equal row/column strides (it documents so; TF 2.21's CPU
            # kernel returns uninitialised memory for unequal ones). The service computes them (the numpy
            # test covers that); compare with TF where TF is defined.
            case.strides = (case.strides[0], case.strides[0])
        y, _ = run_case(http, case)
        x = tf.constant(case.x)
        padding = case.padding
        if isinstance(padding, list):  # explicit pads = zero-pad, then VALID (TF's own definition)
            x = tf.pad(x, padding)
            padding = "VALID"
        strides = [1, *case.strides, 1]
        if op == "conv2d":
            ref = tf.nn.conv2d(x, case.filters[0], strides, padding, dilations=list(case.dilations))
        elif op == "depthwise_conv2d":
            ref = tf.nn.depthwise_conv2d(x, case.filters[0], strides, padding, dilations=list(case.dilations))
        else:
            ref = tf.nn.separable_conv2d(x, case.filters[0], case.filters[1], strides, padding,
                                         dilations=list(case.dilations))
        ref = _post_ops(case, np.asarray(ref, np.float64))
        assert y.shape == ref.shape, (i, case)
        assert max_rel_err(y, ref) < 1e-5, (i, case)
