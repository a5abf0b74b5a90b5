"""The runtime: ONNX Runtime sessions (:mod:`.sessions`; every session in the service — models, ``/v1/conv``
graphs, profiling runs — is made by its ``make_session``), the per-model dynamic-batch scheduler (:mod:`.scheduler`),
per-model statistics (:mod:`.stats`) and what serving a loaded model takes (:mod:`.serving`)."""
