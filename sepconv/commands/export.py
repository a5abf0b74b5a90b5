"""``sepconv export``: one model (``ARCH [ARCH FLAGS] [--weights FILE] [--name NAME] ...``), or every model of a
catalog (``--catalog [FILE]``), written into a Triton-layout repository; prints each model's path."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sepconv.commands.options import (
    Calibration,
    CalibrationMethod,
    KeepBN,
    Layout,
    NoTop,
    Precision,
    Resolution,
    Seed,
    fail,
)
from sepconv.export.errors import ExportError
from sepconv.export.repository.layout import DEFAULT_MAX_BATCH, DEFAULT_REPO, DEFAULT_VERSION


def export(
    arch: Annotated[str | None, typer.Argument(
        help="architecture to export; with --catalog, the catalog file (default models/catalog.toml)")] = None,
    alpha: Annotated[float | None, typer.Option(
        "--alpha", help="width multiplier [default: 1.0, or the weights file's]")] = None,
    resolution: Resolution = 224,
    classes: Annotated[int | None, typer.Option(
        "--classes", help="number of classes [default: 1000, or the weights file's]")] = None,
    no_top: NoTop = False,
    padding: Annotated[str | None, typer.Option(
        "--padding", help="same (TF/Keras exact) | symmetric (PyTorch style) "
                          "[default: same, or symmetric for torchvision weights]")] = None,
    input_layout: Layout = "NCHW",
    seed: Seed = 0,
    keep_bn: KeepBN = False,
    weights: Annotated[Path | None, typer.Option(
        "--weights", help="Keras HDF5 / .weights.h5 or PyTorch state_dict to import")] = None,
    allow_unused: Annotated[bool, typer.Option(
        "--allow-unused", help="accept a weights file holding tensors the network does not use "
                               "(e.g. a classifier with --no-top)")] = False,
    labels: Annotated[Path | None, typer.Option(
        "--labels", help="class names, one a line, one line per class (written as labels.txt) "
                         "[default: ImageNet's for 1000 or 1001 classes]")] = None,
    name: Annotated[str | None, typer.Option("--name", help="model name (default ARCH_ALPHA_RESOLUTION)")] = None,
    version: Annotated[int, typer.Option("--version", help="model version folder")] = DEFAULT_VERSION,
    repo: Annotated[Path | None, typer.Option("--repo", help="model repository folder (default models)")] = None,
    max_batch: Annotated[int, typer.Option("--max-batch", help="max_batch_size in config.pbtxt")] = DEFAULT_MAX_BATCH,
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset")] = 17,  # graph.DEFAULT_OPSET (which imports onnx)
    precision: Precision = "fp32",
    calibration: Calibration = None,
    calibration_method: CalibrationMethod = "minmax",
    catalog: Annotated[bool, typer.Option(
        "--catalog", help="export every model a catalog lists (file: the positional argument)")] = False,
    force: Annotated[bool, typer.Option("--force", help="re-export even when the model is up to date")] = False,
) -> None:
    """Write REPO/NAME/VERSION/model.onnx and REPO/NAME/config.pbtxt; prints the model path."""
    from sepconv.export.repository.catalog import DEFAULT_CATALOG, ExportRequest  # noqa: PLC0415
    from sepconv.export.repository.catalog import export as export_one  # noqa: PLC0415

    if catalog:
        _export_catalog(Path(arch) if arch else DEFAULT_CATALOG, repo, force)
        return
    if not arch:
        raise fail("give an architecture (e.g. `sepconv export mobilenet_v2`) or --catalog [FILE]")
    try:
        request = ExportRequest(
            arch=arch, alpha=alpha, resolution=resolution, classes=classes, include_top=not no_top,
            padding=padding.lower() if padding else None, input_layout=input_layout.upper(), seed=seed,
            fold_bn=not keep_bn, weights=weights, allow_unused=allow_unused, labels=labels, name=name,
            version=version, max_batch_size=max_batch, opset=opset, precision=precision.lower(),
            calibration=calibration, calibration_method=calibration_method.lower())
        result = export_one(request, repo or DEFAULT_REPO, force=True)
    except ExportError as exc:
        raise fail(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - a bug, but still a message rather than a traceback
        raise fail(f"export failed unexpectedly: {type(exc).__name__}: {exc}", 1) from None
    if result.import_report:
        typer.echo(f"imported {result.import_report}", err=True)
    _report_precision(result)
    typer.echo(str(result.path))


def _report_precision(result) -> None:  # noqa: ANN001 - an ExportResult (imported lazily)
    """The warnings and the drift report of a fp16 / int8 export, on stderr."""
    for warning in result.warnings:
        typer.echo(f"warning: {warning}", err=True)
    if result.drift is not None:
        from sepconv.export.precision.drift import render  # noqa: PLC0415

        render(result.drift)


def _export_catalog(path: Path, repo: Path | None, force: bool) -> None:
    from rich.console import Console  # noqa: PLC0415
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: PLC0415

    from sepconv.export.repository.catalog import export as export_one  # noqa: PLC0415
    from sepconv.export.repository.catalog import load_catalog  # noqa: PLC0415

    try:
        catalog_repo, requests = load_catalog(path)
    except ExportError as exc:
        raise fail(str(exc)) from None
    repo = repo or catalog_repo
    console = Console(stderr=True)
    results = []
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console, transient=False) as progress:
        task = progress.add_task("exporting", total=len(requests))
        for request in requests:
            progress.update(task, description=f"exporting {request.model_name}")
            try:
                results.append(export_one(request, repo, force=force))
            except ExportError as exc:
                progress.stop()
                raise fail(f"{request.model_name}: {exc}") from None
            except Exception as exc:  # noqa: BLE001 - a bug, but still a message rather than a traceback
                progress.stop()
                raise fail(f"{request.model_name}: export failed unexpectedly: {type(exc).__name__}: {exc}", 1) \
                    from None
            progress.advance(task)
        progress.update(task, description="exported")
    for r in results:
        _report_precision(r)
        note = r.note or ("up to date" if r.skipped else f"{r.params:,} params, {r.macs / 1e6:,.1f} M MACs")
        console.print(f"{r.name}: {note}" + (f"; imported {r.import_report}" if r.import_report else ""))
        typer.echo(str(r.path))


def register(app: typer.Typer) -> None:
    app.command("export")(export)
