"""Precision variants of an exported model: ``fp32`` (as built), ``fp16`` and ``int8``, with the drift they cost.

:func:`make_variant` ``(fp32 model, precision, inputs, method) -> (variant model, drift report)``; the variant keeps
the FP32 model's inputs, outputs and metadata (plus ``MetaKey.PRECISION``, ``MetaKey.CALIBRATION`` and
``MetaKey.DRIFT``). Modules: :mod:`.calibration` (the inputs: a ``.npy``, an image folder, or synthetic ones),
:mod:`.convert` (ONNX Runtime's static QDQ quantizer; onnxconverter-common's FP16 conversion), :mod:`.drift`
(per-layer and end-to-end comparison against FP32). ONNX Runtime and onnxconverter-common are imported lazily.
"""

from __future__ import annotations

PRECISIONS = ("fp32", "fp16", "int8")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


def check_precision(precision: object) -> str:
    from sepconv.export.errors import ExportError  # noqa: PLC0415

    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r}: one of {', '.join(PRECISIONS)}")
    return precision  # type: ignore[return-value]


def check_method(method: object) -> str:
    from sepconv.export.errors import ExportError  # noqa: PLC0415

    if method not in CALIBRATION_METHODS:
        raise ExportError(f"unknown calibration method {method!r}: one of {', '.join(CALIBRATION_METHODS)}")
    return method  # type: ignore[return-value]
