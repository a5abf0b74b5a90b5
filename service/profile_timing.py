"""Timing a whole session run the same way on CPU and CUDA.

Inputs and outputs are bound once with I/O binding on the session's device, so a timed run is the
graph's execution only (no host<->device copies, no numpy conversion). On CUDA, ONNX Runtime
synchronises the device stream at the end of ``Run`` and we also synchronise the bound outputs, so the
wall time of one run covers the GPU work, not just the kernel launches.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

CUDA = "CUDAExecutionProvider"

_NP_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(bool)": np.bool_,
}


def device_of(session: ort.InferenceSession) -> tuple[str, int]:
    """Where the session's inputs and outputs live: ``("cuda", its device_id)`` or ``("cpu", 0)``."""
    if session.get_providers()[0] != CUDA:
        return "cpu", 0
    options = session.get_provider_options().get(CUDA, {})
    return "cuda", int(options.get("device_id") or 0)


def random_feeds(session: ort.InferenceSession, batch: int, seed: int = 0,
                 shapes: dict[str, list[int]] | None = None) -> dict[str, np.ndarray]:
    """Random inputs for every session input; symbolic dims (the batch) become ``batch``."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in session.get_inputs():
        shape = (shapes or {}).get(inp.name) or [d if isinstance(d, int) and d > 0 else batch for d in inp.shape]
        dtype = _NP_TYPES.get(inp.type, np.float32)
        if np.issubdtype(dtype, np.floating):
            feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[inp.name] = np.zeros(shape, dtype)
    return feeds


@dataclass
class BoundRun:
    """A session with its inputs and outputs bound on the session's device."""

    session: ort.InferenceSession
    binding: ort.IOBinding
    device: str
    device_id: int = 0

    @classmethod
    def create(cls, session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> BoundRun:
        device, device_id = device_of(session)  # the session's own GPU (SEPCONV_CUDA_DEVICE_ID), not always 0
        binding = session.io_binding()
        for name, value in feeds.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, device, device_id))
        for out in session.get_outputs():
            binding.bind_output(out.name, device, device_id)
        return cls(session, binding, device, device_id)

    def run_once(self) -> float:
        """One synchronised run; its wall time in microseconds."""
        t0 = time.perf_counter()
        self.session.run_with_iobinding(self.binding)
        if self.device != "cpu":
            self.binding.synchronize_outputs()
        return (time.perf_counter() - t0) * 1e6

    def time(self, runs: int, warmup: int) -> list[float]:
        """``runs`` timed runs after ``warmup`` untimed ones (at least one: a fresh session's first run
        allocates buffers and, on CUDA, searches conv algorithms)."""
        for _ in range(max(warmup, 1)):
            self.run_once()
        return [self.run_once() for _ in range(runs)]

