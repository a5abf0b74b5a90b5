"""Triton's classification extension: an output requested with ``"parameters": {"classification": K}`` comes back
as a BYTES tensor of the K highest entries, formatted as Triton's server formats them (``src/classification.cc``
and the HTTP/gRPC response writers):

* each string is ``"{value}:{index}"``, plus ``":{label}"`` when the output has a non-empty label for that index
  (the ``label_filename`` file); ``value`` as C++'s ``std::to_string`` prints it (``%f`` for floats, ``%d`` for
  integers), highest first (equal values: lower index first);
* a batching model classifies each batch entry over the rest of its dimensions: shape ``[batch, min(K, n)]``;
  a model without batching classifies the whole tensor: shape ``[min(K, n)]``;
* FP16, BF16, BOOL and BYTES outputs are refused with Triton's message.

Transport-neutral: every transport fills ``RequestedOutput.classification`` and gets the strings back.
"""

from __future__ import annotations

import numpy as np

from sepconv.service.errors import InvalidInput

_NUMERIC = frozenset({"UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP32", "FP64"})


def _format(value: np.generic, is_float: bool) -> str:
    return f"{float(value):f}" if is_float else str(int(value))


def classify(array: np.ndarray, datatype: str, count: int, labels: list[str] | None, batched: bool) -> np.ndarray:
    """The top-``count`` strings of ``array`` (an object array of ``bytes``, see the module docstring)."""
    if datatype not in _NUMERIC:
        raise InvalidInput(f"class result not available for output due to unsupported type '{datatype}'")
    batch = int(array.shape[0]) if batched and array.ndim > 0 else None
    rows = array.reshape(batch, -1) if batch is not None else array.reshape(1, -1)
    n = rows.shape[1]
    k = min(count, n)
    is_float = array.dtype.kind == "f"
    labels = labels or []
    out = np.empty((rows.shape[0], k), dtype=object)
    for r, row in enumerate(rows):
        order = np.argsort(-row.astype(np.float64), kind="stable")[:k]
        for j, i in enumerate(order):
            text = f"{_format(row[i], is_float)}:{int(i)}"
            label = labels[i] if i < len(labels) else ""
            if label:
                text += f":{label}"
            out[r, j] = text.encode("utf-8")
    return out if batch is not None else out.reshape(k)
