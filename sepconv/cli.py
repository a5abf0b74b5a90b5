"""The ``sepconv`` command: one Typer app; each sub-command lives in its own module."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="sepconv",
    help="Build MobileNet-style networks into ONNX, serve them, and profile them layer by layer.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    from sepconv import cmd_export, cmd_profile, cmd_serve  # noqa: PLC0415

    for module in (cmd_export, cmd_serve, cmd_profile):
        module.register(app)


def main() -> None:
    _register()
    app()
