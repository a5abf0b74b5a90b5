"""Timing a whole session run the same way on CPU and CUDA, and summarising the samples.

Inputs and outputs are bound once with I/O binding on the session's device, so a timed run is the
graph's execution only (no host<->device copies, no numpy conversion). On CUDA, ONNX Runtime
synchronises the device stream at the end of ``Run`` and we also synchronise the bound outputs, so the
wall time of one run covers the GPU work, not just the kernel launches.

Every time a profile reports is :func:`summarize`'d the same way: p50 (median) and p90 (linear-interpolated
percentile) in the samples' unit, rounded to 3 decimals.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from sepconv.service.profiling.sessions import device_of


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


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100); 0 for no values."""
    if not values:
        return 0.0
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(values: list[float]) -> dict[str, float]:
    return {"p50": round(statistics.median(values), 3) if values else 0.0, "p90": round(percentile(values, 90), 3)}
