"""The options ``sepconv summary`` and ``sepconv export`` share (DESIGN.md's ARCH FLAGS) and their error exit."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

ArchArg = Annotated[str, typer.Argument(
    help="architecture, e.g. mobilenet_v2 (an unknown name is answered with the list of registered ones)")]
Alpha = Annotated[float, typer.Option("--alpha", help="width multiplier")]
Resolution = Annotated[int, typer.Option("--resolution", help="input height and width")]
Classes = Annotated[int, typer.Option("--classes", help="number of classes")]
NoTop = Annotated[bool, typer.Option("--no-top", help="leave out the classifier (output the feature map)")]
Padding = Annotated[str, typer.Option("--padding", help="same (TF/Keras exact) | symmetric (PyTorch style)")]
Layout = Annotated[str, typer.Option("--input-layout", help="NCHW | NHWC")]
Seed = Annotated[int, typer.Option("--seed", help="seed of the random (Keras-initialiser) weights")]
KeepBN = Annotated[bool, typer.Option("--keep-bn", help="keep BatchNormalization nodes instead of folding them")]
Precision = Annotated[str, typer.Option(
    "--precision", help="fp32 | fp16 (FP32 inputs/outputs kept) | int8 (static QDQ, per-channel weights)")]
Calibration = Annotated[Path | None, typer.Option(
    "--calibration", help="int8 calibration (and drift-report) inputs: a .npy [N, ...] in the model's input "
                          "layout, or a folder of images (preprocessed the model's way)")]
CalibrationMethod = Annotated[str, typer.Option(
    "--calibration-method", help="int8 ranges: minmax | entropy | percentile")]


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``error: message`` on stderr and return the exit to raise (no traceback)."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def arch_kwargs(alpha: float, resolution: int, classes: int, no_top: bool, padding: str, input_layout: str,
                seed: int, keep_bn: bool) -> dict[str, Any]:
    """The ARCH FLAGS as ``build_network`` / ``network_layers`` keywords."""
    return {"alpha": alpha, "resolution": resolution, "classes": classes, "include_top": not no_top,
            "padding": padding.lower(), "input_layout": input_layout.upper(), "seed": seed, "fold_bn": not keep_bn}
