"""Triton's ``inference`` gRPC API as protoc generates it — do not edit: ``scripts/gen-grpc`` writes these modules
from ``service/grpc/proto/`` (the source and commit of those files are in their header and in the script).

* :mod:`.grpc_service_pb2` — the messages (``ModelInferRequest``, ``ModelInferResponse``, ...);
* :mod:`.grpc_service_pb2_grpc` — ``GRPCInferenceServiceServicer``, ``add_GRPCInferenceServiceServicer_to_server``
  and the client stub;
* :mod:`.model_config_pb2` — ``ModelConfig`` (the answer of the ModelConfig RPC).
"""
