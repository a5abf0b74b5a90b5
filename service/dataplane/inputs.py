"""An infer request checked against the model it names, cheapest checks first.

:func:`feed_for` turns the request's inputs into ONNX Runtime's feed and the request's batch size;
:func:`wanted_outputs` says which outputs to compute and return. Every mismatch is ``InvalidInput`` with a
message naming the tensor and what the model expects.
"""

from __future__ import annotations

import math

import numpy as np

from sepconv.service.dataplane.types import InferRequest
from sepconv.service.errors import InvalidInput
from sepconv.service.registry.model import LoadedModel, TensorSpec


def feed_for(model: LoadedModel, req: InferRequest) -> tuple[dict[str, np.ndarray], int]:
    """(feed, batch): names, datatypes and shapes must match the model's inputs (-1 = any), tensors be
    non-empty, and a batching model's inputs agree on a batch size within its ``max_batch_size``."""
    specs = model.input_map
    given = {t.name for t in req.inputs}
    unknown = given - specs.keys()
    if unknown:
        raise InvalidInput(f"unknown input(s) {', '.join(sorted(unknown))} for model {model.name!r} "
                           f"(inputs: {', '.join(specs)})")
    missing = specs.keys() - given
    if missing:
        raise InvalidInput(f"missing input(s) {', '.join(sorted(missing))} for model {model.name!r}")
    batched = model.max_batch_size > 0
    batch = 1
    feed: dict[str, np.ndarray] = {}
    batches = set()
    for t in req.inputs:
        spec = specs[t.name]
        if t.datatype != spec.datatype:
            raise InvalidInput(f"input {t.name!r}: datatype {t.datatype}, the model expects {spec.datatype}")
        if len(t.shape) != len(spec.shape) or any(
                s != -1 and d != s for d, s in zip(t.shape, spec.shape, strict=True)):
            raise InvalidInput(f"input {t.name!r}: shape {t.shape} does not match the model's {spec.shape}")
        if math.prod(t.shape) == 0:
            raise InvalidInput(f"input {t.name!r}: shape {t.shape} is empty")
        if batched:
            batches.add(t.shape[0])
        arr = t.array
        if t.datatype == "BYTES":  # ONNX strings are UTF-8 text
            try:
                arr = np.array([x.decode("utf-8") for x in arr.reshape(-1)], dtype=object).reshape(t.shape)
            except UnicodeDecodeError as exc:
                raise InvalidInput(f"input {t.name!r}: BYTES elements must be UTF-8 text ({exc})") from exc
        feed[t.name] = arr
    if batched:
        if len(batches) != 1:
            raise InvalidInput(f"inputs disagree on the batch size: {sorted(batches)}")
        batch = batches.pop()
        if batch > model.max_batch_size:
            raise InvalidInput(f"batch size {batch} is over the model's max_batch_size {model.max_batch_size}")
    return feed, batch


def wanted_outputs(model: LoadedModel, req: InferRequest) -> list[tuple[TensorSpec, bool]]:
    """(output spec, binary) in the order to return them: all of the model's outputs unless the request
    names some (each must exist)."""
    if req.outputs is None:
        return [(o, req.binary_output) for o in model.outputs]
    outputs_map = model.output_map
    wanted = []
    for o in req.outputs:
        spec = outputs_map.get(o.name)
        if spec is None:
            raise InvalidInput(f"unknown output {o.name!r} for model {model.name!r} "
                               f"(outputs: {', '.join(outputs_map)})")
        wanted.append((spec, o.binary))
    return wanted
