"""``make_variant``: the FP32 model an export built -> the model of the requested precision, its drift report and
the metadata that records both (``MetaKey.PRECISION``, ``MetaKey.CALIBRATION``, ``MetaKey.DRIFT``).

The calibration inputs (``--calibration``: a ``.npy`` or an image folder; without it synthetic pictures, with a
warning for INT8) calibrate INT8 and are the inputs the drift report is measured on. Held-out split: when an INT8
calibration set holds at least :data:`HOLDOUT_MIN` inputs, every :data:`HOLDOUT_EVERY`-th one (indices 3, 7, 11, ...:
deterministic, and spread over a file or folder ordered by class) is kept out of the calibration and the drift is
measured on those alone; the report's ``evaluated_on`` and the ``calibration`` metadata say so. Smaller sets
calibrate and are evaluated on all their inputs; FP16 (nothing calibrated) is evaluated on all of them.
Everything happens in memory: nothing is written to the repository until the caller writes the returned model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from sepconv.export.errors import ExportError
from sepconv.export.precision import check_method, check_precision
from sepconv.export.precision.calibration import InputSpec, load_calibration, synthetic_inputs
from sepconv.export.precision.convert import to_fp16, to_int8
from sepconv.export.precision.drift import drift_report
from sepconv.export.repository.layout import MetaKey

SYNTHETIC_WARNING = ("no --calibration given: INT8 ranges calibrated on synthetic pictures, which are not "
                     "representative of real inputs; pass a .npy of inputs or a folder of images for a model "
                     "you mean to deploy")
HOLDOUT_MIN = 64
HOLDOUT_EVERY = 4


@dataclass
class Variant:
    model: onnx.ModelProto
    metadata: dict[str, str]
    report: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)


def make_variant(model: onnx.ModelProto, precision: str, calibration: Path | None = None,
                 method: str = "minmax") -> Variant:
    """``model`` (the exporter's FP32 model) as ``precision``; see the module docstring."""
    check_precision(precision)
    check_method(method)
    if precision == "fp32":
        if calibration is not None:
            raise ExportError("--calibration applies to --precision int8 or fp16 (fp32 is the model as built)")
        return Variant(model, {MetaKey.PRECISION: "fp32"})
    meta = {p.key: p.value for p in model.metadata_props}
    spec = InputSpec.of(meta)
    warnings = []
    if calibration is not None:
        inputs, described = load_calibration(Path(calibration), spec)
    else:
        inputs = synthetic_inputs(spec)
        described = f"synthetic ({len(inputs)} smooth random pictures, {spec.style} preprocessing)"
        if precision == "int8":
            warnings.append(SYNTHETIC_WARNING)
    calibrate, evaluate, evaluated_on = inputs, inputs, described
    if precision == "int8" and len(inputs) >= HOLDOUT_MIN:
        held = np.arange(len(inputs)) % HOLDOUT_EVERY == HOLDOUT_EVERY - 1
        calibrate, evaluate = inputs[~held], inputs[held]
        evaluated_on = (f"{len(evaluate)} held-out inputs of {described} (every {HOLDOUT_EVERY}th, not used "
                        f"for calibration)")
    variant = to_int8(model, calibrate, method) if precision == "int8" else to_fp16(model)
    try:
        onnx.checker.check_model(variant, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"the {precision} model does not pass onnx.checker: {exc}") from None
    report = drift_report(model, variant, evaluate, precision=precision, evaluated_on=evaluated_on)
    if precision == "int8":
        calibration_text = f"{described}, {method}"
        if len(calibrate) < len(inputs):
            calibration_text += f"; {len(calibrate)} calibrated, {len(evaluate)} held out for the drift report"
    else:
        calibration_text = f"none (fp16); drift on {described}"
    extra = {MetaKey.PRECISION: precision, MetaKey.CALIBRATION: calibration_text,
             MetaKey.DRIFT: json.dumps(report, separators=(",", ":"))}
    return Variant(variant, extra, report, warnings)
