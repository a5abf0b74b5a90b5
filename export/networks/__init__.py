"""MobileNet V1/V2/V3 built straight into ONNX: ``build_network`` is the one entry point.

>>> net = build_network("mobilenet_v2", alpha=0.35, resolution=96)
>>> net.summary()["macs"], net.model.graph.input[0].name

The architectures are those registered in :mod:`.registry` (``list_models()``); each architecture module
registers itself when imported below. ``network_layers`` builds only the layers and their accounting.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import onnx

from sepconv.export import layers as L
from sepconv.export.errors import ExportError
from sepconv.export.graph import DEFAULT_OPSET, GraphBuilder, LayerInfo
from sepconv.export.networks import mobilenet_v1, mobilenet_v2, mobilenet_v3  # noqa: F401 - each registers itself
from sepconv.export.networks.common import PADDING_STYLES, NetContext, make_divisible
from sepconv.export.networks.registry import get_architecture, get_model_builder, list_models, register_model
from sepconv.export.padding import LAYOUTS
from sepconv.export.repository.layout import MetaKey
from sepconv.export.summary import summary_dict
from sepconv.export.weights import RandomWeights, WeightSource

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
FEATURES_NAME = "features"  # the output's name without the classifier (include_top=False)
MIN_RESOLUTION = 32  # what keras.applications accepts
MAX_RESOLUTION = 4096
MAX_ALPHA = 4.0
MAX_CLASSES = 1_000_000
KERAS_PREPROCESSING = "scale RGB pixels to [-1, 1]: x / 127.5 - 1 (Keras 'tf' mode)"

MIN_OPSET, MAX_OPSET = 13, 23

__all__ = ["BuiltNetwork", "NetworkConfig", "build_network", "format_alpha", "get_model_builder", "list_models",
           "make_divisible", "network_layers", "register_model"]


def format_alpha(alpha: float) -> str:
    """``1.0``, ``0.35``, ``0.75`` - the alpha as Keras/TF-slim file names write it."""
    return repr(float(alpha))


@dataclass(frozen=True)
class NetworkConfig:
    arch: str
    alpha: float = 1.0
    resolution: int = 224
    classes: int = 1000
    include_top: bool = True
    padding: str = "same"
    input_layout: str = "NCHW"
    seed: int = 0
    fold_bn: bool = True
    opset: int = DEFAULT_OPSET

    @property
    def default_name(self) -> str:
        return f"{self.arch}_{format_alpha(self.alpha)}_{self.resolution}"

    def validate(self) -> NetworkConfig:
        """Check every field, cheapest first; raises :class:`ExportError` naming the first bad one."""
        architecture = get_architecture(self.arch)
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not math.isfinite(self.alpha):
            raise ExportError(f"alpha must be a number, got {self.alpha!r}")
        if self.alpha <= 0:
            raise ExportError(f"alpha must be > 0, got {self.alpha}")
        if self.alpha > MAX_ALPHA:
            raise ExportError(f"alpha must be <= {MAX_ALPHA}, got {self.alpha}")
        if architecture.check_alpha is not None:
            architecture.check_alpha(self.alpha)
        for what, value in (("resolution", self.resolution), ("classes", self.classes), ("seed", self.seed),
                            ("opset", self.opset)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ExportError(f"{what} must be an integer, got {value!r}")
        if self.resolution < MIN_RESOLUTION:
            raise ExportError(f"resolution {self.resolution} is too small for {self.arch}: "
                              f"it needs at least {MIN_RESOLUTION}x{MIN_RESOLUTION} (as keras.applications)")
        if self.resolution > MAX_RESOLUTION:
            raise ExportError(f"resolution must be <= {MAX_RESOLUTION}, got {self.resolution}")
        if self.classes < 1:
            raise ExportError(f"classes must be >= 1, got {self.classes}")
        if self.classes > MAX_CLASSES:
            raise ExportError(f"classes must be <= {MAX_CLASSES}, got {self.classes}")
        if self.padding not in PADDING_STYLES:
            raise ExportError(f"padding must be one of {', '.join(PADDING_STYLES)}, got {self.padding!r}")
        if self.input_layout not in LAYOUTS:
            raise ExportError(f"input layout must be NCHW or NHWC, got {self.input_layout!r}")
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise ExportError(f"opset must be between {MIN_OPSET} and {MAX_OPSET}, got {self.opset}")
        return self


@dataclass
class BuiltNetwork:
    """A built network: the checked ONNX model, its layers with accounting, and its metadata."""

    config: NetworkConfig
    model: onnx.ModelProto
    layers: list[LayerInfo]
    metadata: dict[str, str] = field(default_factory=dict)

    def summary(self, with_nodes: bool = False) -> dict[str, Any]:
        """The object of ``sepconv summary --json`` (``with_nodes`` adds ``onnx_nodes``/``op_type``)."""
        c = self.config
        return summary_dict(c.arch, c.alpha, c.resolution, c.classes, self.layers, with_nodes=with_nodes)


def _build_graph(config: NetworkConfig, weights: WeightSource) -> GraphBuilder:
    b = GraphBuilder(config.default_name.replace(".", "_"), opset=config.opset)
    for public in (INPUT_NAME, OUTPUT_NAME, FEATURES_NAME):  # V3's "logits" layer must not take the output's name
        b.unique(public)
    ctx = NetContext(b, weights, padding=config.padding, fold_bn=config.fold_bn)
    x = L.network_input(b, INPUT_NAME, config.input_layout, 3, config.resolution, config.resolution)
    transpose = x.name if x.name != INPUT_NAME else None
    build = get_model_builder(config.arch)
    x = build(ctx, x, alpha=float(config.alpha), classes=config.classes, include_top=config.include_top)
    if transpose is not None:  # the NHWC->NCHW transpose belongs to the first layer (for the profiler)
        b.layers[0].onnx_nodes.insert(0, transpose)
    L.network_output(b, x, OUTPUT_NAME if config.include_top else FEATURES_NAME, config.input_layout)
    return b


def _metadata(config: NetworkConfig, weights: WeightSource, b: GraphBuilder, summary: dict[str, Any]) -> dict[str, str]:
    r = config.resolution
    shape = [3, r, r] if config.input_layout == "NCHW" else [r, r, 3]
    if getattr(weights, "random", False):
        label = f"random (seed {getattr(weights, 'seed', config.seed)}, Keras initialisers)"
    else:
        label = str(getattr(weights, "description", None) or getattr(weights, "path", None) or "imported")
        if not label.startswith("imported"):
            label = f"imported from {label}"
    totals = b.totals()
    return {
        MetaKey.ARCHITECTURE: config.arch,
        MetaKey.ALPHA: format_alpha(config.alpha),
        MetaKey.RESOLUTION: str(r),
        MetaKey.CLASSES: str(config.classes),
        MetaKey.INCLUDE_TOP: str(config.include_top).lower(),
        MetaKey.PADDING: config.padding,
        MetaKey.INPUT_NAME: INPUT_NAME,
        MetaKey.OUTPUT_NAME: OUTPUT_NAME if config.include_top else FEATURES_NAME,
        MetaKey.INPUT_LAYOUT: config.input_layout,
        MetaKey.INPUT_SHAPE: json.dumps(shape),
        MetaKey.PREPROCESSING: str(getattr(weights, "preprocessing", None) or KERAS_PREPROCESSING),
        MetaKey.OUTPUT: "logits (pre-softmax)" if config.include_top else "feature map (no classifier)",
        MetaKey.WEIGHTS: label,
        MetaKey.BN_FOLDED: str(config.fold_bn).lower(),
        MetaKey.PARAMS: str(totals["total_params"]),
        MetaKey.TRAINABLE_PARAMS: str(totals["trainable_params"]),
        MetaKey.WEIGHT_PARAMS: str(totals["weight_params"]),
        MetaKey.DEPLOYED_PARAMS: str(totals["deployed_params"]),
        MetaKey.MACS: str(totals["macs"]),
        MetaKey.SUMMARY: json.dumps(summary, separators=(",", ":")),
    }


def build_network(
    arch: str,
    *,
    alpha: float = 1.0,
    resolution: int = 224,
    classes: int = 1000,
    include_top: bool = True,
    padding: str = "same",
    input_layout: str = "NCHW",
    weights: WeightSource | None = None,
    seed: int = 0,
    fold_bn: bool = True,
    opset: int = DEFAULT_OPSET,
) -> BuiltNetwork:
    """Build ``arch`` as a checked ONNX model (input ``input``, output ``logits``, pre-softmax).

    Raises :class:`ExportError` for a bad argument or a weight that does not fit.
    """
    config = NetworkConfig(arch, alpha, resolution, classes, include_top, padding, input_layout, seed, fold_bn,
                           opset).validate()
    weights = weights if weights is not None else RandomWeights(seed)
    b = _build_graph(config, weights)
    summary = summary_dict(config.arch, config.alpha, config.resolution, config.classes, b.layers,
                           with_nodes=True)
    metadata = _metadata(config, weights, b, summary)
    model = b.to_model(metadata, check=True)
    return BuiltNetwork(config, model, b.layers, metadata)


def network_layers(arch: str, **kwargs: Any) -> tuple[NetworkConfig, list[LayerInfo]]:
    """Only the layers and their accounting (no ONNX model written or checked): fast, for summaries.

    Weights are zeros, since only shapes matter here.
    """
    weights = kwargs.pop("weights", None) or _ZeroWeights()
    config = NetworkConfig(arch, **kwargs).validate()
    return config, _build_graph(config, weights).layers


class _ZeroWeights:
    random = True
    bn_epsilon = None
    seed = 0

    def get(self, layer: str, weight: str, shape: tuple[int, ...]):  # noqa: ANN201 - WeightSource
        import numpy as np  # noqa: PLC0415

        if weight in ("gamma", "moving_variance"):
            return np.ones(shape, np.float32)
        return np.zeros(shape, np.float32)
