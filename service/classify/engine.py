"""``POST /v1/models/{m}/classify`` below HTTP: image bytes -> top-k classes.

:meth:`ClassifyEngine.classify`:

1. the model (``registry.get``) and what it takes (:func:`classifier_of`): one FP32 image input
   (``[N, 3, R, R]`` or ``[N, R, R, 3]``; the layout from the exporter's metadata, else from where the 3 is) and
   one ``[N, classes]`` output; anything else is not an image classifier (``InvalidInput``);
2. the preprocessing its weights need (:func:`sepconv.export.preprocessing.style_for`);
3. one inference through :meth:`DataPlane.infer <sepconv.service.dataplane.dataplane.DataPlane.infer>` with an
   :class:`ImageCall`: its ``decode`` decodes the image (:mod:`.decode`, limits before pixels) and preprocesses it
   in a worker thread, so the request is checked, batched by the model's scheduler with every other request, and
   counted in the model's statistics like any infer request;
4. softmax over the logits (float64), the ``top_k`` highest (equal scores: lower index first), labelled from the
   model's labels file (``""`` without one).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from sepconv.export.preprocessing import PreprocessError, describe, preprocess, style_for
from sepconv.export.repository.layout import MetaKey
from sepconv.service.classify.decode import DecodedImage, decode_image
from sepconv.service.dataplane.dataplane import DataPlane
from sepconv.service.dataplane.types import InferRequest, InferResponse, InputTensor, RequestedOutput
from sepconv.service.errors import InvalidInput
from sepconv.service.registry.model import LoadedModel
from sepconv.service.settings import Settings

DEFAULT_TOP_K = 5


@dataclass(frozen=True)
class Classifier:
    """What an image classifier takes and gives."""

    input: str
    layout: str  # NCHW | NHWC
    resolution: int
    output: str
    classes: int
    batched: bool


def classifier_of(model: LoadedModel) -> Classifier:
    """The model as an image classifier, or ``InvalidInput`` saying why it is not one."""
    what = f"model {model.name!r} is not an image classifier"
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise InvalidInput(f"{what}: it has {len(model.inputs)} inputs and {len(model.outputs)} outputs (one each "
                           "expected)")
    inp, out = model.inputs[0], model.outputs[0]
    if inp.datatype != "FP32" or len(inp.shape) != 4:
        raise InvalidInput(f"{what}: its input {inp.name!r} is {inp.datatype} {inp.shape}, not an FP32 image batch")
    if out.datatype not in ("FP32", "FP64", "FP16") or len(out.shape) != 2 or out.shape[1] < 1:
        raise InvalidInput(f"{what}: its output {out.name!r} is {out.datatype} {out.shape}, not [batch, classes] "
                           "(was it exported with --no-top?)")
    layout = model.metadata.get(MetaKey.INPUT_LAYOUT) or ("NCHW" if inp.shape[1] == 3 else "NHWC")
    if layout not in ("NCHW", "NHWC"):
        raise InvalidInput(f"{what}: unknown input layout {layout!r}")
    c, h, w = (inp.shape[1], inp.shape[2], inp.shape[3]) if layout == "NCHW" else (inp.shape[3], inp.shape[1],
                                                                                      inp.shape[2])
    if c != 3:
        raise InvalidInput(f"{what}: its input {inp.name!r} {inp.shape} does not take 3 colour channels ({layout})")
    if h == -1 or w == -1:
        meta = model.metadata.get(MetaKey.RESOLUTION, "")
        if not meta.isdigit():
            raise InvalidInput(f"{what}: its input size is dynamic and its metadata gives no resolution")
        h = w = int(meta)
    if h != w:
        raise InvalidInput(f"{what}: its input is {h} x {w}; only square inputs are preprocessed")
    return Classifier(inp.name, layout, h, out.name, out.shape[1], model.max_batch_size > 0)


class ImageCall:
    """One image as an infer request (an ``InferCall``): ``decode`` decodes and preprocesses it (in a thread),
    ``encode`` hands back the logits of that one image."""

    def __init__(self, data: bytes, classifier: Classifier, style: str, max_pixels: int) -> None:
        self.data = data
        self.classifier = classifier
        self.style = style
        self.max_pixels = max_pixels
        self.image: DecodedImage | None = None

    def _prepare(self) -> np.ndarray:
        self.image = decode_image(self.data, self.max_pixels)
        c = self.classifier
        return preprocess(self.image.image, c.resolution, self.style, c.layout)[None]

    async def decode(self) -> InferRequest:
        x = await asyncio.to_thread(self._prepare)
        c = self.classifier
        return InferRequest(id=None, inputs=[InputTensor(c.input, "FP32", list(x.shape), x)],
                            outputs=[RequestedOutput(c.output, binary=True)], binary_output=True)

    def encode(self, response: InferResponse) -> np.ndarray:
        return np.asarray(response.outputs[0].array).reshape(-1)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = np.exp(z - z.max())
    return z / z.sum()


def top_k(scores: np.ndarray, k: int, labels: list[str] | None) -> list[dict[str, Any]]:
    """The ``k`` highest scores, highest first (equal scores: lower index first)."""
    order = np.argsort(-scores, kind="stable")[:k]
    labels = labels or []
    return [{"index": int(i), "label": labels[i] if i < len(labels) else "", "score": float(scores[i])}
            for i in order]


class ClassifyEngine:
    def __init__(self, settings: Settings, dataplane: DataPlane) -> None:
        self.settings = settings
        self.dataplane = dataplane

    async def classify(self, name: str, data: bytes, k: int = DEFAULT_TOP_K, *, alone: bool = False
                       ) -> dict[str, Any]:
        """The classify route's object: ``{"model", "model_version", "top_k", "preprocessing", "elapsed_ms"}``."""
        start = time.perf_counter()
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InvalidInput(f"top_k must be a positive integer, got {k!r}")
        model = self.dataplane.registry.get(name)
        classifier = classifier_of(model)
        try:
            style = style_for(model.metadata)
        except PreprocessError as exc:
            raise InvalidInput(f"model {model.name!r}: {exc}") from None
        call = ImageCall(data, classifier, style, self.settings.classify_max_pixels)
        logits = await self.dataplane.infer(model.name, model.version, call, alone=alone)
        scores = softmax(logits)
        preprocessing = describe(classifier.resolution, style, classifier.layout)
        preprocessing["image"] = call.image.info() if call.image is not None else None
        return {
            "model": model.name,
            "model_version": model.version,
            "top_k": top_k(scores, min(k, scores.size), model.labels.get(classifier.output)),
            "preprocessing": preprocessing,
            "elapsed_ms": (time.perf_counter() - start) * 1000.0,
        }
