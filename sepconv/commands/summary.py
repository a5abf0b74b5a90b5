"""``sepconv summary ARCH [ARCH FLAGS] [--json]``: the Keras-like table of a network, or its JSON object."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from sepconv.commands.options import (
    Alpha,
    ArchArg,
    Calibration,
    CalibrationMethod,
    Classes,
    KeepBN,
    Layout,
    NoTop,
    Padding,
    Precision,
    Resolution,
    Seed,
    arch_kwargs,
    fail,
)
from sepconv.export.errors import ExportError


def summary(
    arch: ArchArg,
    alpha: Alpha = 1.0,
    resolution: Resolution = 224,
    classes: Classes = 1000,
    no_top: NoTop = False,
    padding: Padding = "same",
    input_layout: Layout = "NCHW",
    seed: Seed = 0,
    keep_bn: KeepBN = False,
    precision: Precision = "fp32",
    calibration: Calibration = None,
    calibration_method: CalibrationMethod = "minmax",
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as one JSON object")] = False,
) -> None:
    """Keras-like table of a network: layer, kind, output shape, params, multiply-adds. With ``--precision fp16 |
    int8`` the network is also built and converted in memory, and the summary adds ``precision`` and the drift
    report against FP32 (per layer and end to end, on the calibration inputs or synthetic pictures)."""
    from sepconv.export.summary import render_table, summary_dict  # noqa: PLC0415

    kwargs = arch_kwargs(alpha, resolution, classes, no_top, padding, input_layout, seed, keep_bn)
    precision = precision.lower()
    try:
        if precision == "fp32" and calibration is None:
            from sepconv.export.networks import network_layers  # noqa: PLC0415

            config, layers = network_layers(arch, **kwargs)  # accounting only: no ONNX model needed
            variant = None
        else:
            from sepconv.export.networks import build_network  # noqa: PLC0415
            from sepconv.export.precision.variant import make_variant  # noqa: PLC0415

            net = build_network(arch, **kwargs)
            config, layers = net.config, net.layers
            variant = make_variant(net.model, precision, calibration, calibration_method.lower())
    except ExportError as exc:
        raise fail(str(exc)) from None
    result = summary_dict(config.arch, config.alpha, config.resolution, config.classes, layers)
    if variant is not None:
        result["precision"] = precision
        result["drift"] = variant.report
        for warning in variant.warnings:
            typer.echo(f"warning: {warning}", err=True)
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
        return
    render_table(result)
    if variant is not None and variant.report is not None:
        from sepconv.export.precision.drift import render  # noqa: PLC0415

        render(variant.report)


def register(app: typer.Typer) -> None:
    app.command("summary")(summary)
