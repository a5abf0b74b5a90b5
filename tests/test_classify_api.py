"""``POST /v1/models/{m}/classify`` end to end on a real server: imported Keras and torchvision weights give the same
top-5 as in-process ONNX Runtime on the same preprocessing, raw bodies and multipart forms, batching through the
model's scheduler, and every kind of bad image answered 4xx with a message while the server keeps serving."""

from __future__ import annotations

import concurrent.futures
import io
import socket
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from sepconv.export.preprocessing import KERAS, TORCHVISION, preprocess, to_rgb
from tests.classify_repo import (
    FEATURES_MODEL,
    IMAGENET_MODEL,
    KERAS_MODEL,
    TEN_LABELS,
    TORCH_MODEL,
    make_classify_repo,
    ort_logits,
    softmax,
)
from tests.images import encode, jpeg_bomb, picture, png_bomb, webp_bomb
from tests.serving import running_server

pytest.importorskip("h5py")
pytest.importorskip("safetensors")

MAX_BYTES = 512 * 1024
MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
STYLE = {KERAS_MODEL: (KERAS, "NHWC", 96), TORCH_MODEL: (TORCHVISION, "NCHW", 96),
         IMAGENET_MODEL: (KERAS, "NCHW", 32)}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_classify_repo(tmp_path_factory.mktemp("classify_repo"), tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def url(repo: Path):
    from sepconv.service.app import create_app
    from sepconv.service.settings import Settings

    app = create_app(Settings(repo=repo, providers="cpu", access_log=False, classify_max_bytes=MAX_BYTES,
                              classify_max_pixels=4_000_000, adaptive_batching=False, batch_workers=1))
    with running_server(app) as base:
        yield base


def post(url: str, model: str, data: bytes, content_type: str = "image/png", **params: object) -> httpx.Response:
    return httpx.post(f"{url}/v1/models/{model}/classify", content=data, params=params,
                      headers={"Content-Type": content_type}, timeout=60)


def expected_top(repo: Path, model: str, data: bytes, k: int = 5) -> tuple[list[int], np.ndarray]:
    """Top-k indices and all scores from in-process ORT on the image decoded and preprocessed in this process."""
    style, layout, r = STYLE[model]
    image, _ = to_rgb(Image.open(io.BytesIO(data)))
    scores = softmax(ort_logits(repo, model, preprocess(image, r, style, layout)))
    return [int(i) for i in np.argsort(-scores, kind="stable")[:k]], scores


@pytest.mark.parametrize("model", [KERAS_MODEL, TORCH_MODEL])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_top5_equals_in_process_ort(repo: Path, url: str, model: str, fmt: str) -> None:
    tops = set()
    for seed, size in enumerate([(123, 77), (64, 200), (96, 96), (400, 300)]):
        data = encode(picture(*size, seed=seed), fmt)
        r = post(url, model, data, MIME[fmt])
        assert r.status_code == 200, r.text
        body = r.json()
        want, scores = expected_top(repo, model, data)
        assert [c["index"] for c in body["top_k"]] == want
        np.testing.assert_allclose([c["score"] for c in body["top_k"]], scores[want], atol=1e-6)
        assert sum(c["score"] for c in body["top_k"]) <= 1.0 + 1e-9
        tops.add(tuple(want))
        assert body["model"] == model and body["elapsed_ms"] > 0
        p = body["preprocessing"]
        assert (p["style"], p["layout"], p["resolution"]) == STYLE[model]
        assert p["image"] == {"format": fmt, "width": size[0], "height": size[1], "mode": "RGB", "converted": None}
        if model == KERAS_MODEL:
            assert [c["label"] for c in body["top_k"]] == [TEN_LABELS[i] for i in want]
        else:
            assert all(c["label"] == "" for c in body["top_k"])  # no labels file for a 10-class torchvision model
    assert len(tops) > 1  # the images are told apart: a model ignoring its input would not pass this


def test_imagenet_labels_and_top_k(repo: Path, url: str) -> None:
    from sepconv.export.labels import imagenet_labels

    data = encode(picture(50, 60, seed=4), "PNG")
    body = post(url, IMAGENET_MODEL, data, top_k=10).json()
    want, _ = expected_top(repo, IMAGENET_MODEL, data, 10)
    assert [c["index"] for c in body["top_k"]] == want
    assert [c["label"] for c in body["top_k"]] == [imagenet_labels()[i] for i in want]
    assert len(post(url, KERAS_MODEL, data, top_k=50).json()["top_k"]) == 10  # clamped to the classes
    assert len(post(url, KERAS_MODEL, data).json()["top_k"]) == 5  # the default


def test_multipart_and_no_content_type_give_the_same_answer(url: str) -> None:
    data = encode(picture(100, 80, seed=9), "JPEG")
    raw = post(url, KERAS_MODEL, data, "image/jpeg").json()
    form = httpx.post(f"{url}/v1/models/{KERAS_MODEL}/classify", files={"image": ("cat.jpg", data, "image/jpeg")},
                      timeout=60).json()
    bare = httpx.post(f"{url}/v1/models/{KERAS_MODEL}/classify", content=data, timeout=60).json()
    assert raw["top_k"] == form["top_k"] == bare["top_k"]


def test_requests_go_through_the_scheduler_and_statistics(url: str) -> None:
    def stats() -> dict:
        return httpx.get(f"{url}/v2/models/{KERAS_MODEL}/stats").json()["model_stats"][0]

    before = stats()
    images = [encode(picture(90, 90, seed=s), "PNG") for s in range(8)]
    host, port = url.removeprefix("http://").split(":")
    # An upload that never completes keeps the server from ever handling a lone request: a lone one may run at
    # once on the event loop, skipping the batcher (see the scheduler), which would make batching here luck.
    with socket.create_connection((host, int(port))) as held:
        held.sendall(b"POST /v2/models/none/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda d: post(url, KERAS_MODEL, d), images))
    assert all(a.status_code == 200 for a in answers)
    after = stats()
    assert after["inference_count"] - before["inference_count"] == 8
    assert after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"] == 8
    # 8 concurrent requests, one model instance, batches up to 8 (not chosen adaptively) and a 100 ms queue delay:
    # they batch with each other, so fewer executions than images
    assert after["execution_count"] - before["execution_count"] < 8


def test_converted_modes_are_said_and_classified_as_converted(repo: Path, url: str) -> None:
    base = picture(120, 90, seed=5)
    sixteen = Image.fromarray(np.asarray(base.convert("L"), np.uint16) * 257)
    cases = {"L": encode(base.convert("L"), "PNG"), "P": encode(base.convert("P"), "PNG"),
             "RGBA": encode(base.convert("RGBA"), "PNG"), "CMYK": encode(base.convert("CMYK"), "JPEG"),
             "I;16": encode(sixteen, "PNG")}
    for mode, data in cases.items():
        r = post(url, KERAS_MODEL, data)
        assert r.status_code == 200, (mode, r.text)
        body = r.json()
        assert body["preprocessing"]["image"]["mode"] == mode
        assert mode in body["preprocessing"]["image"]["converted"]
        assert [c["index"] for c in body["top_k"]] == expected_top(repo, KERAS_MODEL, data)[0]


def _truncated(fmt: str) -> bytes:
    data = encode(picture(200, 150, seed=1), fmt)
    return data[: len(data) // 2]


BAD = [
    ("not an image", b"hello, this is text", "image/png", 400, "not an image"),
    ("empty body", b"", "image/png", 400, "empty"),
    ("truncated PNG", _truncated("PNG"), "image/png", 400, "truncated"),
    ("truncated JPEG", _truncated("JPEG"), "image/jpeg", 400, "truncated"),
    ("truncated WebP", _truncated("WEBP"), "image/webp", 400, "WEBP"),
    ("GIF", encode(picture(20, 20), "GIF"), "image/gif", 415, "not accepted"),
    ("GIF sent as PNG", encode(picture(20, 20), "GIF"), "image/png", 415, "GIF images are not supported"),
    ("BMP", encode(picture(20, 20), "BMP"), "application/octet-stream", 415, "BMP"),
    ("TIFF", encode(picture(20, 20), "TIFF"), "application/octet-stream", 415, "TIFF"),
    ("text content type", encode(picture(20, 20), "PNG"), "text/plain", 415, "Content-Type"),
    ("PNG bomb", png_bomb(), "image/png", 413, "100000 x 100000"),
    ("JPEG bomb", jpeg_bomb(), "image/jpeg", 413, "60000 x 60000"),
    ("WebP bomb", webp_bomb(), "image/webp", 413, "16384 x 16384"),
    ("animated PNG", encode(picture(40, 40), "PNG", save_all=True,
                            append_images=[picture(40, 40, 1), picture(40, 40, 2)]), "image/png", 400, "animated"),
    ("animated WebP", encode(picture(40, 40), "WEBP", save_all=True, append_images=[picture(40, 40, 1)]),
     "image/webp", 400, "animated"),
    ("float image", encode(Image.new("F", (8, 8)), "TIFF"), "image/png", 415, "TIFF"),
    ("over the size limit", b"\x89PNG\r\n\x1a\n" + b"\0" * MAX_BYTES, "image/png", 413, "bytes"),
]


@pytest.mark.parametrize(("case", "data", "content_type", "status", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_images_are_refused_and_the_server_keeps_serving(url: str, case: str, data: bytes, content_type: str,
                                                              status: int, message: str) -> None:
    r = post(url, KERAS_MODEL, data, content_type)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    assert post(url, KERAS_MODEL, encode(picture(30, 30), "PNG")).status_code == 200
    assert httpx.get(f"{url}/v2/health/ready").status_code == 200


def test_bad_requests(url: str) -> None:
    png = encode(picture(30, 30), "PNG")
    r = post(url, "no_such_model", png)
    assert r.status_code == 404 and "no_such_model" in r.json()["error"]
    r = post(url, FEATURES_MODEL, png)
    assert r.status_code == 400 and "not an image classifier" in r.json()["error"]
    r = post(url, KERAS_MODEL, png, top_k=0)
    assert r.status_code == 422 and "top_k" in r.json()["error"]
    r = httpx.post(f"{url}/v1/models/{KERAS_MODEL}/classify", files={"photo": ("a.png", png, "image/png")})
    assert r.status_code == 400 and "'image'" in r.json()["error"]
    r = httpx.post(f"{url}/v1/models/{KERAS_MODEL}/classify", data={"image": "not a file"},
                   files={"other": ("a.png", png, "image/png")})
    assert r.status_code == 400 and "must be a file" in r.json()["error"]
    big = b"\x89PNG\r\n\x1a\n" + b"\0" * (MAX_BYTES + 10)
    r = httpx.post(f"{url}/v1/models/{KERAS_MODEL}/classify", files={"image": ("a.png", big, "image/png")})
    assert r.status_code == 413


def test_model_page_has_the_drop_box(url: str) -> None:
    r = httpx.get(f"{url}/ui/models/{KERAS_MODEL}")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert 'id="classify-drop"' in r.text and "/classify?top_k=" in r.text
    assert "http://" not in r.text and "https://" not in r.text  # nothing from a CDN
    assert httpx.get(f"{url}/ui/models/no_such_model").status_code == 404
    assert "/ui/models/" in httpx.get(f"{url}/").text
