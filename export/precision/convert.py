"""FP32 model -> FP16 or INT8 model, inputs and outputs kept FP32, the exporter's metadata carried over.

* INT8: ONNX Runtime's static quantizer, QDQ format, per-channel INT8 weights (symmetric), UINT8 activations
  (asymmetric: ORT's recommended pair for x86 CPUs; with asymmetric activations the quantizer also folds
  ReLU/ReLU6 into the preceding conv's output range), calibrated by ``minmax`` / ``entropy`` / ``percentile``
  on the given inputs (``entropy`` with ORT's default 128 histogram bins, which quantize_static does not let a
  caller change, picks the full range, i.e. the same ranges as ``minmax``). ORT's CPU provider fuses
  DQ -> Conv -> Q into ``QLinearConv`` (VNNI on AVX-512 VNNI CPUs). The classifier (the last Gemm / MatMul / Conv
  of a model with a top: :func:`classifier_node`) stays FP32, fed by a DequantizeLinear: quantizing the pooled
  features and the logits costs about 1.5 dB of logits SNR on the trained fixtures for a layer of ~0.1-1 % of the
  MACs (a common recipe: first and last layers in higher precision; the first conv gains nothing measurable here).
* FP16: onnxconverter-common's ``convert_float_to_float16(keep_io_types=True)``: weights and activations FP16, a
  ``Cast`` at the input and at the output. ORT's CPU provider has FP16 kernels for only a few operators on x86;
  for the rest it inserts ``Cast`` nodes back to FP32 around them (see the README's measurements).

Errors are :class:`~sepconv.export.errors.ExportError`.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx

from sepconv.export.errors import ExportError
from sepconv.export.repository.layout import MetaKey

_ORT_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


def _metadata(src: onnx.ModelProto, dst: onnx.ModelProto) -> onnx.ModelProto:
    del dst.metadata_props[:]
    for prop in src.metadata_props:
        dst.metadata_props.add(key=prop.key, value=prop.value)
    dst.producer_name, dst.producer_version, dst.doc_string = src.producer_name, src.producer_version, src.doc_string
    return dst


def classifier_node(model: onnx.ModelProto) -> str | None:
    """The name of the classifier node (the last Gemm / MatMul / Conv in graph order) of a model with a top
    (``MetaKey.INCLUDE_TOP`` not ``"false"``), else ``None``."""
    meta = {p.key: p.value for p in model.metadata_props}
    if meta.get(MetaKey.INCLUDE_TOP, "true") == "false":
        return None
    last = [n.name for n in model.graph.node if n.op_type in ("Gemm", "MatMul", "Conv")]
    return last[-1] if last else None


def to_int8(model: onnx.ModelProto, inputs: np.ndarray, method: str = "minmax") -> onnx.ModelProto:
    """Static QDQ quantization calibrated on ``inputs`` (``[N, ...]`` float32, one input per calibration step); the
    classifier (:func:`classifier_node`) stays FP32."""
    try:
        from onnxruntime.quantization import (  # noqa: PLC0415
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
    except ImportError:
        raise ExportError("--precision int8 needs onnxruntime (pip install 'sepconv[quantize]')") from None

    input_name = model.graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(inputs[i:i + 1] for i in range(len(inputs)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self._it, None)
            return None if x is None else {input_name: x}

    extra = {"ActivationSymmetric": False, "WeightSymmetric": True}
    if method == "percentile":
        extra["CalibPercentile"] = 99.999
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs "consider pre-processing" through the root logger
    try:
        # the calibrators print progress on stdout, which carries the exported model's path
        with tempfile.TemporaryDirectory(prefix="sepconv-int8-") as tmp, contextlib.redirect_stdout(sys.stderr):
            src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
            onnx.save(model, str(src))
            quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=getattr(CalibrationMethod, _ORT_METHODS[method]),
                            calibration_providers=["CPUExecutionProvider"], extra_options=extra,
                            nodes_to_exclude=[n for n in [classifier_node(model)] if n])
            quantized = onnx.load(str(dst))
    except ExportError:
        raise
    except Exception as exc:  # noqa: BLE001 - the quantizer raises anything; report it as an export error
        raise ExportError(f"INT8 quantization failed: {type(exc).__name__}: {exc}") from None
    finally:
        root.setLevel(level)
    return _metadata(model, quantized)


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """FP16 weights and compute, FP32 inputs and outputs."""
    try:
        from onnxconverter_common import float16  # noqa: PLC0415
    except ImportError:
        raise ExportError("--precision fp16 needs onnxconverter-common (pip install 'sepconv[quantize]')") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the float32 number 1e-8 will be truncated to 1e-7": FP16's range
        half = float16.convert_float_to_float16(model, keep_io_types=True)
    return _metadata(model, half)
