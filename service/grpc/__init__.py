"""The gRPC transport: Triton's ``inference.GRPCInferenceService`` over the same data plane as REST.

* :mod:`.generated` — protoc's modules for Triton's ``grpc_service.proto`` / ``model_config.proto`` (committed;
  ``scripts/gen-grpc`` regenerates them from ``proto/``, whose header pins their source and commit);
* :mod:`.codec` — ``ModelInferRequest`` / ``ModelInferResponse`` <-> the data plane's request and response;
* :mod:`.servicer` — the RPCs, each one data-plane call;
* :mod:`.errors` — typed errors -> gRPC status codes (one table, one decorator);
* :mod:`.server` — the ``grpc.aio`` server: message limits, grpc.health.v1, reflection, start and graceful stop.
"""
