"""The runtime: ONNX Runtime sessions (:mod:`.sessions`), the per-model dynamic-batch scheduler
(:mod:`.scheduler`), per-model statistics (:mod:`.stats`) and what serving a loaded model takes (:mod:`.serving`).

The session API is this package's public face (``from sepconv.service.runtime import make_session``): every
session in the service — models, ``/v1/conv`` graphs, profiling runs — is made by :func:`make_session`.
"""

from sepconv.service.runtime.sessions import (
    ProviderError,
    UnknownProvider,
    available_providers,
    cuda_provider_options,
    make_session,
    resolve_providers,
    session_options,
    wants_gpu,
)

__all__ = ["ProviderError", "UnknownProvider", "available_providers", "cuda_provider_options", "make_session",
           "resolve_providers", "session_options", "wants_gpu"]
