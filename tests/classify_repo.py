"""A model repository of real image classifiers for the classification tests, exported the way users export them:
the Keras (``.weights.h5``, NHWC) and torchvision (``.safetensors``, NCHW) weight fixtures with 10 classes — the Keras
one with a ``--labels`` file —, a seeded 1000-class MobileNet (ImageNet's labels), and one without its classifier."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from sepconv.export.repository.catalog import ExportRequest, export
from tests.fixtures.weights import decompress_all

KERAS_MODEL = "keras_v2"
TORCH_MODEL = "torch_v2"
IMAGENET_MODEL = "seeded_v1"
FEATURES_MODEL = "features_v1"
TEN_LABELS = [f"thing {i}" for i in range(10)]


def make_classify_repo(root: Path, weights: Path) -> Path:
    decompress_all(weights)
    labels = weights / "ten.txt"
    labels.write_text("\n".join(TEN_LABELS) + "\n")
    export(ExportRequest("mobilenet_v2", resolution=96, input_layout="NHWC", name=KERAS_MODEL, labels=labels,
                         weights=weights / "mobilenet_v2_0.35_96.weights.h5",
                         dynamic_batching={"max_queue_delay_microseconds": 100_000}), root)
    export(ExportRequest("mobilenet_v2", resolution=96, input_layout="NCHW", name=TORCH_MODEL,
                         weights=weights / "mobilenet_v2_0.35_96_torchvision.safetensors"), root)
    export(ExportRequest("mobilenet_v1", alpha=0.25, resolution=32, name=IMAGENET_MODEL, seed=3), root)
    export(ExportRequest("mobilenet_v1", alpha=0.25, resolution=32, include_top=False, name=FEATURES_MODEL), root)
    return root


def ort_logits(root: Path, name: str, x: np.ndarray) -> np.ndarray:
    """The model's logits from an in-process ONNX Runtime session (``x`` one preprocessed image, no batch axis)."""
    session = ort.InferenceSession(str(root / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x[None]})[0][0]


def softmax(z: np.ndarray) -> np.ndarray:
    z = np.exp(z.astype(np.float64) - z.max())
    return z / z.sum()
