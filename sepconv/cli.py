"""The ``sepconv`` command: one Typer app; each sub-command lives in its own module of :mod:`sepconv.commands`
and is registered from the list there."""

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
    """Add every command of :data:`sepconv.commands.COMMANDS` to :data:`app`."""
    from sepconv.commands import COMMANDS  # noqa: PLC0415

    for module in COMMANDS:
        module.register(app)


def main() -> None:
    _register()
    app()
