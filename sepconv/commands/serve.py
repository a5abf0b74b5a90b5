"""``sepconv serve``: the inference server (uvicorn with httptools + uvloop) over a model repository."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer


def _configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("sepconv")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    access = logging.getLogger("sepconv.access")  # one JSON object per line, nothing around it
    access_handler = logging.StreamHandler(sys.stdout)
    access_handler.setFormatter(logging.Formatter("%(message)s"))
    access.handlers[:] = [access_handler]
    access.propagate = False


def serve(
    repo: Annotated[Path | None, typer.Option("--repo", help="model repository [env SEPCONV_REPO]")] = None,
    host: Annotated[str | None, typer.Option("--host", help="bind address (127.0.0.1) [env SEPCONV_HOST]")] = None,
    port: Annotated[int | None, typer.Option("--port", help="port (default 8000) [env SEPCONV_PORT]")] = None,
    grpc_port: Annotated[int | None, typer.Option(
        "--grpc-port", help="gRPC port (default 8001; 0 = no gRPC) [env SEPCONV_GRPC_PORT]")] = None,
    providers: Annotated[str | None, typer.Option(
        "--providers", help="auto | cpu | cuda | comma-separated ORT providers [env SEPCONV_PROVIDERS]")] = None,
    model_control: Annotated[str | None, typer.Option(
        "--model-control", help="none (default: load/unload and log changes refused) | explicit (they need "
                                "SEPCONV_ADMIN_TOKEN unless on loopback) [env SEPCONV_MODEL_CONTROL]")] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="debug | info | warning | error")] = "info",
) -> None:
    """Serve the models of a repository over the KServe V2 protocol (and /v1 conv + profiling routes)."""
    import uvicorn  # noqa: PLC0415
    from pydantic import ValidationError  # noqa: PLC0415

    from sepconv.service.app import create_app  # noqa: PLC0415
    from sepconv.service.rest.transport import uvicorn_config  # noqa: PLC0415
    from sepconv.service.settings import Settings, admin_problem  # noqa: PLC0415

    overrides = {k: v for k, v in {"repo": repo, "host": host, "port": port, "grpc_port": grpc_port,
                                   "providers": providers, "model_control": model_control}.items() if v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:  # a flag or a SEPCONV_* variable out of its range: one line each, no traceback
        for err in exc.errors():
            field = ".".join(str(p) for p in err.get("loc", ())) or "settings"
            typer.echo(f"error: {field}: {err.get('msg', 'invalid value')} (got {err.get('input')!r})", err=True)
        raise typer.Exit(2) from None
    problem = admin_problem(settings)
    if problem:
        typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(2)
    _configure_logging(log_level)
    if not Path(settings.repo).is_dir():
        typer.echo(f"warning: model repository {settings.repo} does not exist (serving no models); "
                   "run `sepconv export --catalog` first", err=True)
    app = create_app(settings)
    uvicorn.Server(uvicorn_config(app, settings, log_level=log_level.lower())).run()


def register(app: typer.Typer) -> None:
    """Add this module's commands to the CLI."""
    app.command("serve")(serve)
