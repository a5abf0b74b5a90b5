"""``sepconv summary ARCH [ARCH FLAGS] [--json]``: the Keras-like table of a network, or its JSON object."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from sepconv.commands.options import (
    Alpha,
    ArchArg,
    Classes,
    KeepBN,
    Layout,
    NoTop,
    Padding,
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
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as one JSON object")] = False,
) -> None:
    """Keras-like table of a network: layer, kind, output shape, params, multiply-adds."""
    from sepconv.export.networks import network_layers  # noqa: PLC0415
    from sepconv.export.summary import render_table, summary_dict  # noqa: PLC0415

    try:
        config, layers = network_layers(
            arch, **arch_kwargs(alpha, resolution, classes, no_top, padding, input_layout, seed, keep_bn))
    except ExportError as exc:
        raise fail(str(exc)) from None
    result = summary_dict(config.arch, config.alpha, config.resolution, config.classes, layers)
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        render_table(result)


def register(app: typer.Typer) -> None:
    app.command("summary")(summary)
