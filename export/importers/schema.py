"""What each architecture asks of a weights file, learnt from the network builder itself.

The builders in :mod:`sepconv.export.networks` request weights by Keras layer name in Keras' layer order,
so one dry run (zeros, no ONNX checks) gives the layer names, their Keras classes and the order
Keras 3 uses to name its ``.weights.h5`` groups (``conv2d``, ``conv2d_1``, ...). Alpha and the
number of classes are then read back from a file's tensor shapes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from sepconv.export.importers.store import WeightFile

# Keras class (snake case, as Keras 3 names the groups) -> its variables in order.
KERAS_VARIABLES: dict[str, tuple[str, ...]] = {
    "conv2d": ("kernel", "bias"),
    "depthwise_conv2d": ("depthwise_kernel", "bias"),
    "batch_normalization": ("gamma", "beta", "moving_mean", "moving_variance"),
    "dense": ("kernel", "bias"),
}

# The layer whose output channels give alpha, the formula, and the Keras "top" layer that gives classes.
_WIDTH_LAYER = {
    "mobilenet_v1": ("conv_pw_13", 1024, "int"),
    "mobilenet_v2": ("block_16_project", 320, "divisible"),
    "mobilenet_v3_large": ("expanded_conv_14_project", 160, "divisible"),
    "mobilenet_v3_small": ("expanded_conv_10_project", 96, "divisible"),
}
TOP_LAYERS = {  # the classifier's weighted layers; the last one's bias gives the number of classes
    "mobilenet_v1": ("conv_preds",),
    "mobilenet_v2": ("predictions",),
    "mobilenet_v3_large": ("conv_2", "logits"),
    "mobilenet_v3_small": ("conv_2", "logits"),
}
COMMON_ALPHAS = (0.25, 0.35, 0.5, 0.75, 1.0, 1.3, 1.4)


@dataclass(frozen=True)
class KerasLayer:
    name: str
    keras_class: str  # conv2d | depthwise_conv2d | batch_normalization | dense
    weights: tuple[str, ...]  # what the network asks, in the order it asks


class _Recorder:
    random = True
    bn_epsilon = None
    seed = 0

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, tuple[int, ...]]] = []

    def get(self, layer: str, weight: str, shape: tuple[int, ...]) -> np.ndarray:
        self.calls.append((layer, weight, tuple(shape)))
        return np.ones(shape, np.float32)


@lru_cache(maxsize=8)
def keras_layers(arch: str, include_top: bool = True) -> tuple[KerasLayer, ...]:
    """The weighted Keras layers of ``arch``, in Keras' order (alpha does not change them)."""
    from sepconv.export.networks import network_layers  # noqa: PLC0415 - networks import onnx; keep this module light

    rec = _Recorder()
    network_layers(arch, alpha=1.0, resolution=32, classes=2, include_top=include_top, weights=rec)
    order: dict[str, list[tuple[str, tuple[int, ...]]]] = {}
    for layer, weight, shape in rec.calls:
        order.setdefault(layer, []).append((weight, shape))
    result = []
    for name, asked in order.items():
        names = tuple(w for w, _ in asked)
        if "gamma" in names:
            cls = "batch_normalization"
        elif "depthwise_kernel" in names:
            cls = "depthwise_conv2d"
        elif len(dict(asked)["kernel"]) == 2:
            cls = "dense"
        else:
            cls = "conv2d"
        result.append(KerasLayer(name, cls, names))
    return tuple(result)


def keras3_group_names(arch: str) -> dict[str, str]:
    """Keras 3 ``.weights.h5`` group (``conv2d_3``) -> Keras layer name, for files without name attributes.

    Keras 3 names each layer's group after its class, numbered in ``model.layers`` order."""
    counts: dict[str, int] = {}
    mapping = {}
    for layer in keras_layers(arch, True):
        n = counts.get(layer.keras_class, 0)
        counts[layer.keras_class] = n + 1
        mapping[layer.keras_class if n == 0 else f"{layer.keras_class}_{n}"] = layer.name
    return mapping


def guess_arch(layer_names: set[str]) -> tuple[str | None, float]:
    """The architecture whose Keras layer names best cover the file's, and that fraction."""
    from sepconv.export.networks import list_models  # noqa: PLC0415

    best, best_score = None, 0.0
    if not layer_names:
        return None, 0.0
    for arch in list_models():
        names = {la.name for la in keras_layers(arch, True)}
        score = len(layer_names & names) / len(layer_names)
        if score > best_score:
            best, best_score = arch, score
    return best, best_score


def _make_divisible(v: float, divisor: int = 8) -> int:
    from sepconv.export.networks.common import make_divisible  # noqa: PLC0415

    return make_divisible(v, divisor)


def infer_alpha(arch: str, wf: WeightFile) -> float | None:
    """The width multiplier a file was built with, from one layer's output channels (None if unknown)."""
    layer, base, rule = _WIDTH_LAYER[arch]
    shape = wf.shape(layer, "kernel")
    if shape is None or len(shape) != 4:
        return None
    channels = shape[-1]

    def width(alpha: float) -> int:
        return int(base * alpha) if rule == "int" else _make_divisible(int(base * alpha) if arch == "mobilenet_v2"
                                                                       else base * alpha)

    estimate = round(channels / base, 4)
    for alpha in (*COMMON_ALPHAS, estimate, round(channels / base, 2), round(channels / base, 3)):
        if alpha > 0 and width(alpha) == channels:
            return float(alpha)
    return None


def infer_classes(arch: str, wf: WeightFile) -> int | None:
    """Number of classes of the file's classifier (None when the file has no classifier)."""
    shape = wf.shape(TOP_LAYERS[arch][-1], "bias")
    return None if shape is None or len(shape) != 1 else int(shape[0])
