"""What a reader hands over: tensors already keyed by Keras layer and weight name, in Keras layouts."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

KERAS = "keras"
TORCHVISION = "torchvision"

# The weight names networks ask for, and the other names files use for the same tensor.
ALIASES: dict[str, tuple[str, ...]] = {
    "depthwise_kernel": ("depthwise_kernel", "kernel"),  # Keras 3 names a DepthwiseConv2D's filter "kernel"
    "kernel": ("kernel",),
    "bias": ("bias",),
    "gamma": ("gamma",),
    "beta": ("beta",),
    "moving_mean": ("moving_mean",),
    "moving_variance": ("moving_variance",),
}
BN_WEIGHTS = ("gamma", "beta", "moving_mean", "moving_variance")


@dataclass
class FileTensor:
    source: str  # the tensor's name in the file (for the report)
    array: np.ndarray


@dataclass
class WeightFile:
    """Everything a file holds, mapped onto Keras names; ``unmapped`` lists what could not be."""

    format: str
    origin: str  # KERAS or TORCHVISION
    layers: dict[str, dict[str, FileTensor]] = field(default_factory=dict)
    unmapped: list[str] = field(default_factory=list)
    detail: str = ""  # e.g. "keras-applications HDF5 layout", "Keras 3 .weights.h5 layout"

    def add(self, layer: str, weight: str, source: str, array: np.ndarray) -> None:
        self.layers.setdefault(layer, {})[weight] = FileTensor(source, array)

    def tensor_count(self) -> int:
        return sum(len(w) for w in self.layers.values())

    def shape(self, layer: str, weight: str) -> tuple[int, ...] | None:
        t = self.find(layer, weight)
        return None if t is None else tuple(int(d) for d in t.array.shape)

    def find(self, layer: str, weight: str) -> FileTensor | None:
        held = self.layers.get(layer)
        if not held:
            return None
        for name in ALIASES.get(weight, (weight,)):
            if name in held:
                return held[name]
        return None
