"""Triton's classification extension on ``/v2/models/{m}/infer`` through the unmodified ``tritonclient.http``
(``class_count``): BYTES ``"value:index:label"`` strings, highest first, formatted as Triton's server formats them,
per batch entry; and the labels that feed it (ImageNet's for 1000 classes, a ``--labels`` file otherwise)."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient

from sepconv.export.labels import imagenet_labels
from tests.classify_repo import IMAGENET_MODEL, KERAS_MODEL, TEN_LABELS, TORCH_MODEL, make_classify_repo
from tests.serving import running_server

pytest.importorskip("h5py")
pytest.importorskip("safetensors")


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_classify_repo(tmp_path_factory.mktemp("ext_repo"), tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def url(repo: Path):
    from sepconv.service.app import create_app
    from sepconv.service.settings import Settings

    with running_server(create_app(Settings(repo=repo, providers="cpu", access_log=False))) as base:
        yield base


def triton_strings(logits: np.ndarray, k: int, labels: list[str] | None) -> list[bytes]:
    """What Triton's ``TopkClassifications`` writes for one batch entry: std::to_string(value) (``%f``), ':',
    the index, and ':label' when the index has a label."""
    order = sorted(range(logits.size), key=lambda i: (-float(logits[i]), i))[:k]
    out = []
    for i in order:
        text = "%f:%d" % (float(logits[i]), i)  # noqa: UP031 - C's printf, as std::to_string is specified
        if labels and labels[i]:
            text += ":" + labels[i]
        out.append(text.encode())
    return out


def infer(url: str, model: str, x: np.ndarray, *, class_count: int, binary: bool) -> tuple[np.ndarray, np.ndarray]:
    """(classification strings, plain logits) for ``x`` from the server, through tritonclient."""
    client = httpclient.InferenceServerClient(url.removeprefix("http://"))
    try:
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        out = httpclient.InferRequestedOutput("logits", binary_data=binary, class_count=class_count)
        classes = client.infer(model, [inp], outputs=[out]).as_numpy("logits")
        plain = client.infer(model, [inp], outputs=[httpclient.InferRequestedOutput("logits")]).as_numpy("logits")
    finally:
        client.close()
    return classes, plain


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize(("model", "shape", "labels"), [
    (IMAGENET_MODEL, (3, 3, 32, 32), list(imagenet_labels())),
    (KERAS_MODEL, (2, 96, 96, 3), TEN_LABELS),
    (TORCH_MODEL, (2, 3, 96, 96), None),
])
def test_class_count_as_triton_formats_it(url: str, model: str, shape: tuple[int, ...], labels: list[str] | None,
                                          binary: bool) -> None:
    x = np.random.default_rng(5).uniform(-1, 1, shape).astype(np.float32)
    classes, logits = infer(url, model, x, class_count=4, binary=binary)
    assert classes.shape == (shape[0], 4)
    for row, entry in zip(classes, logits, strict=True):
        got = [v if isinstance(v, bytes) else str(v).encode() for v in row]
        assert got == triton_strings(entry, 4, labels)
    if labels is None:
        assert all(str(v).count(":") == 1 for v in classes.reshape(-1))  # "value:index" only, as Triton without labels


def test_class_count_over_the_classes_is_clamped_and_zero_is_the_tensor(url: str) -> None:
    x = np.zeros((1, 96, 96, 3), np.float32)
    classes, logits = infer(url, KERAS_MODEL, x, class_count=25, binary=True)
    assert classes.shape == (1, 10)
    body = {"inputs": [{"name": "input", "shape": [1, 96, 96, 3], "datatype": "FP32", "data": x.reshape(-1).tolist()}],
            "outputs": [{"name": "logits", "parameters": {"classification": 0}}]}
    out = httpx.post(f"{url}/v2/models/{KERAS_MODEL}/infer", json=body, timeout=60).json()["outputs"][0]
    assert out["datatype"] == "FP32" and out["shape"] == [1, 10]
    body["outputs"][0]["parameters"]["classification"] = 2
    out = httpx.post(f"{url}/v2/models/{KERAS_MODEL}/infer", json=body, timeout=60).json()["outputs"][0]
    assert out["datatype"] == "BYTES" and out["shape"] == [1, 2]
    assert out["data"] == [s.decode() for s in triton_strings(logits[0], 2, TEN_LABELS)]


def test_bad_classification_parameters(url: str) -> None:
    x = [0.0] * (96 * 96 * 3)
    for value in (-1, "3", 2.5, True):
        body = {"inputs": [{"name": "input", "shape": [1, 96, 96, 3], "datatype": "FP32", "data": x}],
                "outputs": [{"name": "logits", "parameters": {"classification": value}}]}
        r = httpx.post(f"{url}/v2/models/{KERAS_MODEL}/infer", json=body, timeout=60)
        assert r.status_code == 400 and "classification" in r.json()["error"]
    assert httpx.get(f"{url}/v2/health/ready").status_code == 200


def test_extension_listed_and_labels_in_the_config(url: str) -> None:
    assert "classification" in httpx.get(f"{url}/v2").json()["extensions"]
    config = httpx.get(f"{url}/v2/models/{IMAGENET_MODEL}/config").json()
    assert config["output"][0]["label_filename"] == "labels.txt"
    config = httpx.get(f"{url}/v2/models/{TORCH_MODEL}/config").json()
    assert config["output"][0]["label_filename"] == ""
