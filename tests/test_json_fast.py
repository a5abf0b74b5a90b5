"""The JSON fast path (simdjson into typed buffers, ``sepconv.service.rest.jsonfast``) against the reference
decoder (orjson + numpy, ``codec.parse_infer_request``) and a plain ``json`` + ``numpy`` ground truth, on thousands
of generated V2 bodies: every datatype, flat and nested data, well-formed and broken (null, booleans, strings,
floats in integer tensors, values out of range, ragged and irregular lists, lists where numbers should be, wrong
counts, malformed JSON text).

Properties: whenever the fast path returns a request, the reference returns the same one (same inputs, identical
arrays: dtype, shape and bytes) and, for well-formed bodies, so does the ground truth; the fast path never returns
a request for a body the reference rejects (those are answered by the reference, so the server's errors are the
reference's); well-formed numeric bodies do take the fast path (it is exercised, not skipped)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sepconv.service.errors import ServiceError
from sepconv.service.rest import jsonfast
from sepconv.service.rest.codec import parse_infer_request

pytestmark = pytest.mark.skipif(not jsonfast.available(), reason="pysimdjson is not installed")

BIG = 1 << 40
NUMERIC = ["FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"]
DATATYPES = [*NUMERIC, "BOOL", "BYTES"]
RANGES = {"INT8": (-2**7, 2**7 - 1), "INT16": (-2**15, 2**15 - 1), "INT32": (-2**31, 2**31 - 1),
          "INT64": (-2**63, 2**63 - 1), "UINT8": (0, 2**8 - 1), "UINT16": (0, 2**16 - 1), "UINT32": (0, 2**32 - 1),
          "UINT64": (0, 2**64 - 1)}
NP = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "INT8": np.int8, "INT16": np.int16,
      "INT32": np.int32, "INT64": np.int64, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
      "UINT64": np.uint64, "BOOL": np.bool_}


def element(datatype: str) -> st.SearchStrategy:
    if datatype == "BOOL":
        return st.booleans()
    if datatype == "BYTES":
        return st.text(max_size=6)
    if datatype.startswith("FP"):
        return st.floats(allow_nan=False, allow_infinity=False, width=64) | st.integers(-2**60, 2**60)
    lo, hi = RANGES[datatype]
    return st.integers(lo, hi)


def nest(flat: list, shape: list[int]) -> list:
    if len(shape) <= 1:
        return list(flat)
    step = math.prod(shape[1:])
    return [nest(flat[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])]


MUTATIONS = ["none", "null", "bool", "string", "float_in_int", "int_as_float", "out_of_range", "ragged", "list_leaf",
             "extra", "missing", "not_a_list", "text_truncated", "text_garbage", "nan_token", "huge_int", "big_float",
             "nested_in_flat", "dup_key", "object_leaf"]


@st.composite
def bodies(draw) -> tuple[bytes, str, bool]:
    """(body, mutation, well_formed_numeric)."""
    datatype = draw(st.sampled_from(DATATYPES))
    shape = draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))
    count = math.prod(shape)
    flat = draw(st.lists(element(datatype), min_size=count, max_size=count))
    nested = draw(st.booleans())
    mutation = draw(st.sampled_from(MUTATIONS)) if draw(st.integers(0, 3)) else "none"
    at = draw(st.integers(0, count - 1))
    data: object = list(flat)
    if mutation == "null":
        data[at] = None
    elif mutation == "bool":
        data[at] = True
    elif mutation == "string":
        data[at] = "1.5"
    elif mutation == "float_in_int":
        data[at] = 1.5
    elif mutation == "int_as_float":
        data[at] = float(int(data[at])) if isinstance(data[at], int | float) and abs(data[at]) < 1e15 else 2.0
    elif mutation == "out_of_range":
        data[at] = 2**64 - 1 if datatype != "UINT64" else -1
    elif mutation == "huge_int":
        data[at] = 2**70
    elif mutation == "big_float":
        data[at] = 1e300
    elif mutation == "list_leaf":
        data[at] = [data[at]]
    elif mutation == "object_leaf":
        data[at] = {"b64": "AA=="}
    elif mutation == "extra":
        data.append(data[0])
    elif mutation == "missing":
        data.pop()
    elif mutation == "not_a_list":
        data = data[0]
    if isinstance(data, list) and nested and mutation not in ("extra", "missing"):
        data = nest(data, shape)
    if mutation == "ragged" and len(shape) > 1:
        data = nest(list(flat), shape)
        data[-1] = data[-1][:-1] if isinstance(data[-1], list) and len(data[-1]) > 1 else data[-1]
        data.append(flat[:1])
    if mutation == "nested_in_flat" and isinstance(data, list) and len(data) > 1:
        data = [data[0], list(data[1:])]
    body_obj = {"id": "x", "inputs": [{"name": "input", "shape": shape, "datatype": datatype, "data": data}],
                "outputs": [{"name": "y", "parameters": {"binary_data": draw(st.booleans())}}]}
    if mutation == "dup_key":
        text = json.dumps(body_obj)
        text = text.replace('"datatype"', '"datatype": "FP32", "datatype"', 1)
    else:
        text = json.dumps(body_obj, allow_nan=True)
    if mutation == "nan_token":
        text = text.replace('"shape"', '"nan": NaN, "shape"', 1)
    body = text.encode()
    if mutation == "text_truncated":
        body = body[:draw(st.integers(0, len(body) - 1))]
    elif mutation == "text_garbage":
        pos = draw(st.integers(0, len(body)))
        body = body[:pos] + draw(st.sampled_from([b"\xff", b",", b"]", b"[", b"}", b"tru", b"\x00"])) + body[pos:]
    well_formed = mutation == "none" and datatype in NUMERIC
    return body, mutation, well_formed


def reference(body: bytes):
    try:
        return parse_infer_request(body, None), None
    except ServiceError as exc:
        return None, exc


def ground_truth(body: bytes) -> np.ndarray:
    obj = json.loads(body)
    inp = obj["inputs"][0]
    return np.array(inp["data"], dtype=NP[inp["datatype"]]).reshape(inp["shape"])


def same_request(a, b) -> None:
    assert (a.id, a.binary_output, a.parameters) == (b.id, b.binary_output, b.parameters)
    assert [(o.name, o.binary, o.classification) for o in a.outputs or []] == \
        [(o.name, o.binary, o.classification) for o in b.outputs or []]
    assert len(a.inputs) == len(b.inputs)
    for x, y in zip(a.inputs, b.inputs, strict=True):
        assert (x.name, x.datatype, x.shape) == (y.name, y.datatype, y.shape)
        assert x.array.dtype == y.array.dtype and x.array.shape == y.array.shape
        if x.array.dtype == object:
            assert x.array.tolist() == y.array.tolist()
        else:
            assert x.array.tobytes() == y.array.tobytes()


STATS = {"fast": 0, "well_formed": 0, "well_formed_fast": 0, "rejected": 0}


@settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))
@given(bodies())
def test_fast_path_equals_the_reference(case) -> None:
    body, mutation, well_formed = case
    fast = jsonfast.parse(body, None, None, BIG, BIG, min_body=0)
    ref, error = reference(body)
    if fast is None:
        if well_formed:
            STATS["well_formed"] += 1
        if error is not None:
            STATS["rejected"] += 1
        return
    STATS["fast"] += 1
    assert error is None, f"the fast path accepted a body the reference rejects ({mutation}): {error}"
    same_request(fast, ref)
    if well_formed:
        STATS["well_formed"] += 1
        STATS["well_formed_fast"] += 1
        truth = ground_truth(body)
        assert fast.inputs[0].array.tobytes() == truth.tobytes()


def test_the_fast_path_was_exercised() -> None:
    """Runs after the property test (file order): well-formed numeric bodies took the fast path (integers past 2**53
    in float tensors are the one well-formed case it leaves to the reference), malformed ones were rejected."""
    if not STATS["well_formed"]:
        pytest.skip("the property test did not run first")
    print(STATS)
    assert STATS["well_formed_fast"] >= 0.6 * STATS["well_formed"], STATS
    assert STATS["rejected"] > 100, STATS


@pytest.mark.parametrize("nested", [False, True])
def test_an_image_body_takes_the_fast_path(nested: bool) -> None:
    x = np.random.default_rng(0).standard_normal((1, 64, 64, 3)).astype(np.float32)
    data = x.tolist() if nested else x.reshape(-1).tolist()
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 64, 64, 3], "datatype": "FP32",
                                   "data": data}]}).encode()
    fast = jsonfast.parse(body, None, None, BIG, BIG)
    assert fast is not None
    same_request(fast, parse_infer_request(body, None))
    np.testing.assert_array_equal(fast.inputs[0].array, x)


def test_structure_limits_send_the_body_to_the_reference() -> None:
    body = json.dumps({"inputs": [{"name": "input", "shape": [4096], "datatype": "FP32",
                                   "data": [0.5] * 4096}]}).encode()
    assert jsonfast.parse(body, None, None, BIG, BIG) is not None
    assert jsonfast.parse(body, None, None, 4000, BIG) is None  # the reference's check_structure answers 413
    assert jsonfast.parse(body, None, None, BIG, 2) is None


def test_brackets_in_strings_or_lists_in_place_of_numbers_go_to_the_reference() -> None:
    data = [0.25] * 5000
    body = json.dumps({"id": "[", "inputs": [{"name": "input", "shape": [5000], "datatype": "FP32",
                                              "data": data}]}).encode()
    assert jsonfast.parse(body, None, None, BIG, BIG) is None
    hidden = json.dumps({"inputs": [{"name": "input", "shape": [5000], "datatype": "FP32",
                                     "data": [*data[:-1], [0.25]]}]}).encode()
    assert jsonfast.parse(hidden, None, None, BIG, BIG) is None
    assert reference(hidden)[1] is not None
