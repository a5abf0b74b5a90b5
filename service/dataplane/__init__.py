"""The data plane: what every transport (REST, gRPC) calls for inference, metadata, readiness, configuration,
statistics, repository operations and log settings (:class:`.dataplane.DataPlane`), on transport-neutral request
and response objects (:mod:`.types`), with the input checks against a model's specs (:mod:`.inputs`)."""
