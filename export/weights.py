"""Where layer weights come from: seeded Keras-style initialisers, or an imported file.

Layers ask for each tensor by (Keras layer name, Keras weight name, Keras shape), e.g.
``("block_3_depthwise", "depthwise_kernel", (3, 3, 144, 1))``. A network therefore needs no
knowledge of where its weights come from, and an importer only has to answer the same questions.
"""

from __future__ import annotations

import zlib
from typing import Protocol

import numpy as np

# Keras' default initialiser for each weight name.
KERAS_INITIALIZERS = {
    "kernel": "glorot_uniform",
    "depthwise_kernel": "glorot_uniform",
    "pointwise_kernel": "glorot_uniform",
    "bias": "zeros",
    "gamma": "ones",
    "beta": "zeros",
    "moving_mean": "zeros",
    "moving_variance": "ones",
}


class WeightSource(Protocol):
    random: bool  # True for seeded initialisers (recorded in the model metadata)
    bn_epsilon: float | None  # the source framework's BN epsilon; None = the network's own (Keras 1e-3)

    def get(self, layer: str, weight: str, shape: tuple[int, ...]) -> np.ndarray:
        """Return a float32 array of exactly ``shape`` (Keras layout) for that layer's weight."""
        ...


def keras_fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """Keras ``compute_fans``: receptive field times the last two axes."""
    if len(shape) < 1:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = int(np.prod(shape[:-2]))
    return shape[-2] * receptive, shape[-1] * receptive


class RandomWeights:
    """Keras' initialisers, seeded: every layer's tensor depends only on (seed, layer, weight)."""

    random = True
    bn_epsilon = None

    def __init__(self, seed: int = 0, randomize_bn: bool = False) -> None:
        self.seed = seed
        self.randomize_bn = randomize_bn

    def _rng(self, layer: str, weight: str) -> np.random.Generator:
        return np.random.default_rng([self.seed, zlib.crc32(f"{layer}/{weight}".encode())])

    def get(self, layer: str, weight: str, shape: tuple[int, ...]) -> np.ndarray:
        init = KERAS_INITIALIZERS.get(weight, "glorot_uniform")
        rng = self._rng(layer, weight)
        if self.randomize_bn and weight in ("gamma", "beta", "moving_mean", "moving_variance", "bias"):
            if weight in ("gamma", "moving_variance"):
                return rng.uniform(0.5, 1.5, size=shape).astype(np.float32)
            return rng.normal(0.0, 0.1, size=shape).astype(np.float32)
        if init == "zeros":
            return np.zeros(shape, np.float32)
        if init == "ones":
            return np.ones(shape, np.float32)
        fan_in, fan_out = keras_fans(shape)
        limit = float(np.sqrt(6.0 / max(fan_in + fan_out, 1)))
        return rng.uniform(-limit, limit, size=shape).astype(np.float32)
