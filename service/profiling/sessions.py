"""The one place profiling sessions are made, and the inputs they are fed.

Every profile runs in ONNX Runtime sessions of its own (profiling is a per-session switch in ORT, so the
serving session is never traced and its requests never land in a profile). A :class:`SessionSpec` fixes what
all the sessions of one profile share — the settings with the profile's intra-op thread count, the provider
(``cpu`` / ``cuda``) and the graph optimisation level — and :meth:`SessionSpec.open` makes one, refusing (400)
a CUDA session that silently fell back to CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from sepconv.service.errors import InvalidInput
from sepconv.service.runtime.sessions import ProviderError, make_session
from sepconv.service.settings import Settings

CUDA = "CUDAExecutionProvider"
PROVIDERS: dict[str, tuple[str, ...]] = {"cpu": ("CPUExecutionProvider",), "cuda": (CUDA, "CPUExecutionProvider")}

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


def with_threads(settings: Settings, threads: int | None) -> Settings:
    """``settings`` with the profiling sessions' intra-op thread count (``None``: unchanged)."""
    return settings if threads is None else settings.model_copy(update={"intra_op_threads": int(threads)})


@dataclass(frozen=True)
class SessionSpec:
    """What every session of one profile shares."""

    settings: Settings  # already with the profile's thread count (:func:`with_threads`)
    provider: str  # "cpu" | "cuda" (a key of PROVIDERS, validated by the request)
    optimization: str  # "all" | "disable"

    @property
    def providers(self) -> list[str]:
        return list(PROVIDERS[self.provider])

    def open(self, model: str | bytes, **kwargs: Any) -> ort.InferenceSession:
        """A session for ``model`` (a path or serialized bytes); ``kwargs`` go to ``make_session``
        (``enable_profiling``, ``profile_prefix``)."""
        try:
            session = make_session(model, self.settings, providers=self.providers, optimization=self.optimization,
                                   **kwargs)
        except ProviderError as exc:
            raise InvalidInput(f"provider {self.provider!r} cannot be used: {exc.message}") from exc
        if self.provider == "cuda" and session.get_providers()[0] != CUDA:
            raise InvalidInput("provider 'cuda' requested but CUDA did not start on this server "
                               f"(the session runs on {', '.join(session.get_providers())}); use provider 'cpu'")
        return session


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
